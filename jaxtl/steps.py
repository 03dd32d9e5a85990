"""Pure losses, train steps and eval steps — importable for research code.

    from jaxtl.steps import classification_train_step
    state, metrics = jax.jit(classification_train_step, donate_argnums=0)(state, batch, rng)

``state`` is a :class:`flax.training.train_state.TrainState` whose ``apply_fn`` is a jaxtl model's
``apply``; ``batch`` is a dict of arrays (see the loss docstrings for keys and shapes); ``rng`` is
a key from which dropout is derived as ``fold_in(rng, state.step)``, so a step's randomness depends
only on (seed, step). Metrics are **sums plus denominators** (``loss_sum`` / ``count``, ...), so they
add up exactly across steps, devices, hosts and padded batches; :func:`summarize` turns them into
means.

The same step functions run under ``jax.jit`` with shardings (see :func:`jaxtl.sharding.compile_step`)
and under ``jax.pmap``: build them with ``make_train_step(task, axis_name="batch")`` and gradients
are ``pmean``-ed and metric sums ``psum``-ed over that axis.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from jaxtl.errors import ConfigError

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def classification_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    """Cross-entropy over ``logits [B, C]``, or MSE when ``C == 1`` (regression), as HF computes.

    ``batch["labels"]``: ``[B]`` int label ids (float targets for regression);
    ``batch["example_weight"]``: ``[B]`` 1 for real rows, 0 for padding rows. Returns the mean loss
    over real rows and the metric sums. Packed batches have ``logits [R, P, C]`` and labels and
    weights ``[R, P]`` (one per slot; 0 weight for an empty slot): the same sums and mean.
    """
    weight_B = batch["example_weight"].astype(jnp.float32).reshape(-1)
    count = weight_B.sum()
    logits = logits.astype(jnp.float32).reshape(-1, logits.shape[-1])
    if logits.shape[-1] == 1:
        error_B = logits[:, 0] - batch["labels"].astype(jnp.float32).reshape(-1)
        loss_sum = (jnp.square(error_B) * weight_B).sum()
        metrics = {"loss_sum": loss_sum, "count": count}
    else:
        labels_B = batch["labels"].astype(jnp.int32).reshape(-1)
        loss_sum = (optax.softmax_cross_entropy_with_integer_labels(logits, labels_B) * weight_B).sum()
        correct = ((logits.argmax(-1) == labels_B) * weight_B).sum()
        metrics = {"loss_sum": loss_sum, "count": count, "correct": correct}
    return loss_sum / jnp.maximum(count, 1.0), metrics


def multi_label_classification_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    """Binary cross-entropy of ``logits [B, C]`` (one sigmoid per label) against multi-hot
    ``batch["labels"] [B, C]`` (float 0/1), averaged over labels and real rows: HF's
    ``BCEWithLogitsLoss`` for ``problem_type="multi_label_classification"``.

    ``batch["example_weight"]``: ``[B]`` 1 for real rows, 0 for padding rows. Metric sums:
    ``loss_sum`` (each row's mean over its C labels) over ``count`` rows.
    """
    weight_B = batch["example_weight"].astype(jnp.float32)
    logits_BxC = logits.astype(jnp.float32)
    bce_BxC = optax.sigmoid_binary_cross_entropy(logits_BxC, batch["labels"].astype(jnp.float32))
    metrics = {"loss_sum": (bce_BxC.mean(-1) * weight_B).sum(), "count": weight_B.sum()}
    return metrics["loss_sum"] / jnp.maximum(metrics["count"], 1.0), metrics


def replaced_token_detection_loss(logits_BxL: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    """ELECTRA's discriminator loss: sigmoid cross-entropy of ``logits [B, L]`` against
    ``batch["replaced_labels"] [B, L]`` (1 where the generator replaced the token, 0 where it
    is the original), averaged over real tokens, as HF's ``ElectraForPreTraining`` computes with
    ``labels``.

    Real tokens: ``batch["attention_mask"]`` ``[B, L]`` is 1 (or, for packed rows ``[B, L, L]``,
    its diagonal), in rows whose ``batch["example_weight"] [B]`` is 1. Returns the mean loss and
    the metric sums (``rtd_count``: real tokens; ``count``: examples).
    """
    mask = batch["attention_mask"]
    real_BxL = jnp.diagonal(mask, axis1=1, axis2=2) if mask.ndim == 3 else mask
    weight_B = batch["example_weight"].astype(jnp.float32)
    weight_BxL = real_BxL.astype(jnp.float32) * weight_B[:, None]
    logits_BxL = logits_BxL.astype(jnp.float32)
    labels_BxL = batch["replaced_labels"].astype(jnp.float32)
    bce_BxL = optax.sigmoid_binary_cross_entropy(logits_BxL, labels_BxL)
    metrics = {
        "rtd_loss_sum": (bce_BxL * weight_BxL).sum(),
        "rtd_count": weight_BxL.sum(),
        "rtd_correct": (((logits_BxL > 0) == (labels_BxL > 0.5)) * weight_BxL).sum(),
        "count": weight_B.sum(),
    }
    return metrics["rtd_loss_sum"] / jnp.maximum(metrics["rtd_count"], 1.0), metrics


def pretraining_loss(outputs: dict, batch: Batch, *, nsp: bool = True) -> tuple[jax.Array, Metrics]:
    """Masked-LM cross-entropy averaged over masked tokens, plus NSP cross-entropy (HF's sum).

    ``outputs["mlm_logits"]``: ``[B, P, V]`` at ``batch["masked_positions"] [B, P]``;
    ``batch["masked_labels"] [B, P]`` the original token ids, ``batch["masked_weights"] [B, P]``
    1 for real predictions; ``outputs["nsp_logits"] [B, 2]`` against ``batch["nsp_labels"] [B]``
    (0 = segment B follows A); ``batch["example_weight"] [B]``.
    """
    weight_B = batch["example_weight"].astype(jnp.float32)
    mlm_weight_BxP = batch["masked_weights"].astype(jnp.float32) * weight_B[:, None]
    mlm_logits = outputs["mlm_logits"].astype(jnp.float32)
    labels_BxP = batch["masked_labels"].astype(jnp.int32)
    mlm_ce_BxP = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, labels_BxP)
    metrics = {
        "mlm_loss_sum": (mlm_ce_BxP * mlm_weight_BxP).sum(),
        "mlm_count": mlm_weight_BxP.sum(),
        "mlm_correct": ((mlm_logits.argmax(-1) == labels_BxP) * mlm_weight_BxP).sum(),
        "count": weight_B.sum(),
    }
    loss = metrics["mlm_loss_sum"] / jnp.maximum(metrics["mlm_count"], 1.0)
    if nsp:
        if "nsp_logits" not in outputs:  # e.g. ALBERT, whose second head predicts sentence order
            raise ConfigError(
                "this model's pretraining head has no next-sentence output (it gives "
                f"{', '.join(sorted(outputs))}); set data.nsp: false to pretrain with masked LM only"
            )
        nsp_logits = outputs["nsp_logits"].astype(jnp.float32)
        nsp_labels_B = batch["nsp_labels"].astype(jnp.int32)
        nsp_ce_B = optax.softmax_cross_entropy_with_integer_labels(nsp_logits, nsp_labels_B)
        metrics["nsp_loss_sum"] = (nsp_ce_B * weight_B).sum()
        metrics["nsp_correct"] = ((nsp_logits.argmax(-1) == nsp_labels_B) * weight_B).sum()
        loss = loss + metrics["nsp_loss_sum"] / jnp.maximum(metrics["count"], 1.0)
    return loss, metrics


def sop_pretraining_loss(outputs: dict, batch: Batch) -> tuple[jax.Array, Metrics]:
    """Masked-LM cross-entropy (as :func:`pretraining_loss`) plus ALBERT's sentence-order
    prediction cross-entropy: HF ``AlbertForPreTraining``'s sum of the two means.

    ``outputs["sop_logits"] [B, 2]`` against ``batch["sop_labels"] [B]`` (0 = the two segments
    in their original order, 1 = swapped), weighted by ``batch["example_weight"] [B]``; the
    masked-LM keys as in :func:`pretraining_loss`.
    """
    loss, metrics = pretraining_loss(outputs, batch, nsp=False)
    weight_B = batch["example_weight"].astype(jnp.float32)
    sop_logits = outputs["sop_logits"].astype(jnp.float32)
    sop_labels_B = batch["sop_labels"].astype(jnp.int32)
    sop_ce_B = optax.softmax_cross_entropy_with_integer_labels(sop_logits, sop_labels_B)
    metrics["sop_loss_sum"] = (sop_ce_B * weight_B).sum()
    metrics["sop_correct"] = ((sop_logits.argmax(-1) == sop_labels_B) * weight_B).sum()
    return loss + metrics["sop_loss_sum"] / jnp.maximum(metrics["count"], 1.0), metrics


def question_answering_loss(outputs: dict, batch: Batch) -> tuple[jax.Array, Metrics]:
    """HF's QA loss: the mean of the start and the end cross-entropy over the positions.

    ``outputs["start_logits"]``, ``outputs["end_logits"]``: ``[B, L]``; ``batch["start_positions"]``,
    ``batch["end_positions"]``: ``[B]`` token indices (0 = [CLS], "no answer here");
    ``batch["example_weight"]`` ``[B]``. As HF, positions are clamped to ``[0, L]`` and ``L`` (a
    position past the input) is ignored, each of start and end averaged over its own kept rows.
    Metric sums: ``start_loss_sum``/``start_count``, ``end_loss_sum``/``end_count``, and
    ``loss_sum`` = half the sum of both over ``count`` rows (HF's loss when no row is ignored,
    always so for jaxtl's own features); ``span_correct`` counts rows with both ends right.
    """
    weight_B = batch["example_weight"].astype(jnp.float32)
    metrics = {"count": weight_B.sum()}
    loss = 0.0
    right_B = weight_B
    for end in ("start", "end"):
        logits_BxL = outputs[f"{end}_logits"].astype(jnp.float32)
        length = logits_BxL.shape[-1]
        positions_B = jnp.clip(batch[f"{end}_positions"].astype(jnp.int32), 0, length)
        kept_B = weight_B * (positions_B < length)
        ce_B = optax.softmax_cross_entropy_with_integer_labels(
            logits_BxL, jnp.minimum(positions_B, length - 1)
        )
        metrics[f"{end}_loss_sum"] = (ce_B * kept_B).sum()
        metrics[f"{end}_count"] = kept_B.sum()
        loss = loss + metrics[f"{end}_loss_sum"] / jnp.maximum(metrics[f"{end}_count"], 1.0) / 2
        right_B = right_B * (logits_BxL.argmax(-1) == positions_B)
    metrics["loss_sum"] = (metrics["start_loss_sum"] + metrics["end_loss_sum"]) / 2
    metrics["span_correct"] = right_B.sum()
    return loss, metrics


@dataclasses.dataclass(frozen=True)
class Task:
    """What differs between fine-tuning and pretraining: model inputs and the loss."""

    name: str
    loss: Callable[[dict, Batch], tuple[jax.Array, Metrics]]
    extra_inputs: tuple[str, ...] = ()  # batch keys passed to the model besides the usual three

    def forward(self, apply_fn, params, batch: Batch, *, deterministic: bool, rngs=None) -> dict:
        extra = {key: batch[key] for key in self.extra_inputs}
        return apply_fn(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=deterministic,
            rngs=rngs,
            **extra,
        )


def packed_attention_mask(segment_ids_BxL: jax.Array) -> jax.Array:
    """The block-diagonal ``[B, L, L]`` mask of packed rows: a token attends to the tokens of its
    own example (same segment id). Padding (segment 0) attends to padding, so no query row is
    all-masked (NaN in some attention kernels); no real token sees it."""
    return segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]


@dataclasses.dataclass(frozen=True)
class ClassificationTask(Task):
    """Sequence classification on plain batches, or on packed ones (several examples per row,
    ``ClassificationBatcher(packing=True)``): their ``segment_ids [R, L]`` become a
    block-diagonal mask, ``position_ids [R, L]`` restart per example, and the head reads every
    example's first token at ``cls_positions [R, P]`` -> ``logits [R, P, C]``."""

    def forward(self, apply_fn, params, batch: Batch, *, deterministic: bool, rngs=None) -> dict:
        if "segment_ids" not in batch:
            return super().forward(apply_fn, params, batch, deterministic=deterministic, rngs=rngs)
        return apply_fn(
            {"params": params},
            batch["input_ids"],
            packed_attention_mask(batch["segment_ids"]),
            batch["token_type_ids"],
            deterministic=deterministic,
            rngs=rngs,
            position_ids=batch["position_ids"],
            cls_positions=batch["cls_positions"],
        )


CLASSIFICATION = ClassificationTask(
    "classification", lambda outputs, batch: classification_loss(outputs["logits"], batch)
)
MULTI_LABEL_CLASSIFICATION = Task(
    "multi_label_classification",
    lambda outputs, batch: multi_label_classification_loss(outputs["logits"], batch),
)
REPLACED_TOKEN_DETECTION = Task(
    "replaced_token_detection", lambda outputs, batch: replaced_token_detection_loss(outputs["logits"], batch)
)
PRETRAINING = Task("pretraining", pretraining_loss, extra_inputs=("masked_positions",))
QUESTION_ANSWERING = Task("question_answering", question_answering_loss)
PRETRAINING_MLM_ONLY = Task(
    "pretraining_mlm", functools.partial(pretraining_loss, nsp=False), extra_inputs=("masked_positions",)
)
# ALBERT's pretraining: masked LM + sentence-order prediction (batches need "sop_labels").
PRETRAINING_SOP = Task("pretraining_sop", sop_pretraining_loss, extra_inputs=("masked_positions",))


# ---------------------------------------------------------------------------- token classification

IGNORE_LABEL = -100  # a position without a label (special tokens, later word pieces), as HF


def token_classification_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    """Cross-entropy over the labelled positions of ``logits [B, L, N]`` (HF's token loss: the
    mean over every label that is not -100 in the batch).

    ``batch["labels"]``: ``[B, L]`` int tag ids, -100 where unlabelled; ``batch["example_weight"]``
    ``[B]``. Metric sums: ``loss_sum`` and ``token_correct`` over ``token_count`` labelled
    positions, ``count`` examples.
    """
    weight_B = batch["example_weight"].astype(jnp.float32)
    labels_BxL = batch["labels"].astype(jnp.int32)
    labelled_BxL = (labels_BxL != IGNORE_LABEL).astype(jnp.float32) * weight_B[:, None]
    logits = logits.astype(jnp.float32)
    safe_labels_BxL = jnp.where(labels_BxL == IGNORE_LABEL, 0, labels_BxL)
    ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels_BxL)
    metrics = {
        "loss_sum": (ce_BxL * labelled_BxL).sum(),
        "token_count": labelled_BxL.sum(),
        "token_correct": ((logits.argmax(-1) == labels_BxL) * labelled_BxL).sum(),
        "count": weight_B.sum(),
    }
    return metrics["loss_sum"] / jnp.maximum(metrics["token_count"], 1.0), metrics


@dataclasses.dataclass(frozen=True)
class TokenClassificationTask(Task):
    """Also returns ``predicted_ids [B, length]`` (argmax tag ids, -1 beyond the batch's
    length): evaluation batches have several bucket lengths, and one width lets the loop
    concatenate them."""

    length: int = 512

    def forward(self, apply_fn, params, batch: Batch, *, deterministic: bool, rngs=None) -> dict:
        outputs = dict(super().forward(apply_fn, params, batch, deterministic=deterministic, rngs=rngs))
        predicted_BxL = outputs["logits"].argmax(-1).astype(jnp.int32)
        pad = self.length - predicted_BxL.shape[1]
        outputs["predicted_ids"] = jnp.pad(predicted_BxL, ((0, 0), (0, pad)), constant_values=-1)
        return outputs


def token_classification_task(length: int) -> TokenClassificationTask:
    """The token classification Task for inputs of at most ``length`` positions."""
    return TokenClassificationTask(
        "token_classification",
        lambda outputs, batch: token_classification_loss(outputs["logits"], batch),
        length=length,
    )


# ---------------------------------------------------------------------------- multiple choice


def multiple_choice_loss(logits_BxC: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    """HF's ``*ForMultipleChoice`` loss: cross-entropy of the right choice over ``logits [B, C]``
    (one score per choice), whatever C is (one choice is no regression here).

    ``batch["labels"]``: ``[B]`` int index of the right choice; ``batch["example_weight"]``:
    ``[B]``. Metric sums as classification's: ``loss_sum``, ``correct`` over ``count`` rows.
    """
    weight_B = batch["example_weight"].astype(jnp.float32)
    logits_BxC = logits_BxC.astype(jnp.float32)
    labels_B = batch["labels"].astype(jnp.int32)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
    metrics = {
        "loss_sum": (ce_B * weight_B).sum(),
        "count": weight_B.sum(),
        "correct": ((logits_BxC.argmax(-1) == labels_B) * weight_B).sum(),
    }
    return metrics["loss_sum"] / jnp.maximum(metrics["count"], 1.0), metrics


MULTIPLE_CHOICE = Task(
    "multiple_choice", lambda outputs, batch: multiple_choice_loss(outputs["logits"], batch)
)


def make_train_step(task: Task, *, axis_name: str | None = None, skip_nonfinite: bool = False):
    """``train_step(state, batch, rng) -> (state, metrics)`` for ``task``.

    Every step checks on device that the loss and the gradient norm are finite and reports
    ``metrics["nonfinite"]`` (1.0 for a bad step), so the loop can refuse to evaluate, save or
    export a state that saw one without a host sync per step. With ``skip_nonfinite`` a bad step
    changes nothing but the step counter (as ``optax.apply_if_finite``) and its metric sums are
    zeroed, so only ``nonfinite`` counts it.

    With ``axis_name`` (inside ``jax.pmap(..., axis_name=axis_name)``), gradients are averaged
    and metric sums added over the devices; each device gets its own dropout stream. The average
    of per-device mean gradients is the global mean only when every device holds as many
    examples (and masked tokens). Under ``jax.shard_map`` pass ``check_vma=False``: with it on,
    JAX already sums the gradient of replicated parameters over the axis, and the ``pmean`` here
    would leave it ``n`` times the mean.
    """

    def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
        dropout_rng = jax.random.fold_in(rng, state.step)
        if axis_name is not None:
            dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))

        def loss_fn(params):
            outputs = task.forward(
                state.apply_fn, params, batch, deterministic=False, rngs={"dropout": dropout_rng}
            )
            return task.loss(outputs, batch)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.psum(metrics, axis_name)
            loss = jax.lax.pmean(loss, axis_name)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        metrics["grad_norm"] = grad_norm
        metrics["steps"] = jnp.ones((), jnp.float32)
        new_state = state.apply_gradients(grads=grads)
        if skip_nonfinite:
            keep_new = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_state = jax.tree.map(keep_new, new_state, state).replace(step=new_state.step)
            metrics = jax.tree.map(lambda m: jnp.where(finite, m, jnp.zeros_like(m)), metrics)
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics

    return train_step


def make_eval_step(task: Task, *, axis_name: str | None = None):
    """``eval_step(state, batch) -> (metrics, outputs)`` without dropout."""

    def eval_step(state: TrainState, batch: Batch) -> tuple[Metrics, dict]:
        outputs = task.forward(state.apply_fn, state.params, batch, deterministic=True)
        _, metrics = task.loss(outputs, batch)
        if axis_name is not None:
            metrics = jax.lax.psum(metrics, axis_name)
        return metrics, outputs

    return eval_step


classification_train_step = make_train_step(CLASSIFICATION)
classification_eval_step = make_eval_step(CLASSIFICATION)
pretraining_train_step = make_train_step(PRETRAINING)
pretraining_eval_step = make_eval_step(PRETRAINING)


def summarize(sums: dict[str, Any]) -> dict[str, float]:
    """Metric sums -> means: loss, accuracy, mlm_loss, mlm_accuracy, perplexity, nsp_accuracy,
    sop_accuracy, rtd_loss, rtd_accuracy."""
    import math

    s = {k: float(v) for k, v in sums.items()}
    out = {}
    count = max(s.get("count", 0.0), 1.0)
    if "loss_sum" in s:
        out["loss"] = s["loss_sum"] / count
    if "correct" in s:
        out["accuracy"] = s["correct"] / count
    if "mlm_loss_sum" in s:
        mlm_count = max(s["mlm_count"], 1.0)
        out["mlm_loss"] = s["mlm_loss_sum"] / mlm_count
        out["mlm_accuracy"] = s["mlm_correct"] / mlm_count
        out["perplexity"] = math.exp(min(out["mlm_loss"], 50.0))
        out["loss"] = out["mlm_loss"]
        if "nsp_loss_sum" in s:
            out["nsp_loss"] = s["nsp_loss_sum"] / count
            out["nsp_accuracy"] = s["nsp_correct"] / count
            out["loss"] += out["nsp_loss"]
        if "sop_loss_sum" in s:
            out["sop_loss"] = s["sop_loss_sum"] / count
            out["sop_accuracy"] = s["sop_correct"] / count
            out["loss"] += out["sop_loss"]
    if "token_count" in s:  # token classification: means over labelled tokens
        token_count = max(s["token_count"], 1.0)
        out["loss"] = s["loss_sum"] / token_count
        out["token_accuracy"] = s["token_correct"] / token_count
    if "span_correct" in s:  # question answering: both ends of the span right
        out["span_accuracy"] = s["span_correct"] / count
    if "rtd_loss_sum" in s:  # replaced-token detection: means over real tokens
        rtd_count = max(s["rtd_count"], 1.0)
        out["rtd_loss"] = s["rtd_loss_sum"] / rtd_count
        out["rtd_accuracy"] = s["rtd_correct"] / rtd_count
        out["loss"] = out["rtd_loss"]
    if "grad_norm" in s and "steps" in s:
        out["grad_norm"] = s["grad_norm"] / max(s["steps"], 1.0)
    if s.get("nonfinite"):
        out["nonfinite_steps"] = s["nonfinite"]
    return out
