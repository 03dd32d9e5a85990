"""The task heads every family offers, in one registry: what a head outputs, its loss
(:class:`jaxtl.steps.Task`), how its evaluation outputs become metrics, and how a prediction is
written. The linen module of a head is the family's (``spec.models[head]``, see
:mod:`jaxtl.families`), since each family names its head weights its own way.

    spec = heads.get("classification")
    task = spec.task(config)                       # loss for the train/eval steps
    metrics = spec.metrics(config, labels, logits)  # accuracy, macro F1, MCC / Pearson, ...

Adding a head is one entry here plus its modules in the families, its loss in
:mod:`jaxtl.steps`, its data and its tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import numpy as np

from jaxtl import steps
from jaxtl.errors import ConfigError
from jaxtl.families.layers import Dropout, dense


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    name: str | None  # None: the bare trunk
    output_keys: tuple[str, ...]  # what model.apply returns
    description: str
    # config -> the Task whose loss the train/eval steps use (None: not trainable on its own).
    task: Callable[[Any], steps.Task] | None = None
    # (config, labels, outputs) -> metrics over a whole evaluation set (host arrays).
    metrics: Callable[[Any, np.ndarray, dict[str, np.ndarray]], dict[str, float]] | None = None
    # (config, outputs of one example) -> the columns `jaxtl predict` writes for it.
    format_prediction: Callable[[Any, dict[str, np.ndarray]], dict[str, Any]] | None = None
    # The eval metric that picks the best model by default.
    best_metric: Callable[[Any], str] | None = None
    # HF class-name suffix of a head every family shares ("ForTokenClassification"), and its
    # generic linen module: module(config, trunk=spec.trunk_module, trunk_name=spec.trunk).
    # None: each family defines the head itself (FamilySpec.models).
    hf_suffix: str = ""
    module: type | None = None
    weight_prefixes: tuple[str, ...] = ()  # HF names of the generic head's weights ("qa_outputs.")
    # The module (under jaxtl.tasks) whose predict_file / evaluate_file serve `jaxtl predict` and
    # `jaxtl evaluate` for this head.
    recipe: str | None = None


def _is_regression(config) -> bool:
    return config.num_labels == 1


MULTI_LABEL = "multi_label_classification"  # HF's problem_type: one sigmoid per label


def is_multi_label(config) -> bool:
    """A classification head trained on label sets (HF ``problem_type``, saved in config.json)."""
    return getattr(config, "problem_type", None) == MULTI_LABEL


def label_probabilities(config, logits) -> np.ndarray:
    """Per-label sigmoid (multi-label) or softmax over the last axis of ``logits``, in float64."""
    logits = np.asarray(logits, np.float64)
    if is_multi_label(config):
        return 1.0 / (1.0 + np.exp(-logits))
    z = logits - logits.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _classification_task(config) -> steps.Task:
    return steps.MULTI_LABEL_CLASSIFICATION if is_multi_label(config) else steps.CLASSIFICATION


def _classification_best_metric(config) -> str:
    if is_multi_label(config):
        return "micro_f1"
    return "pearson" if _is_regression(config) else "accuracy"


def _classification_metrics(config, labels, outputs, *, threshold: float = 0.5) -> dict[str, float]:
    """``labels``: ids [N], targets [N] (regression) or multi-hot [N, C] (multi-label, where a
    label is predicted when its probability is above ``threshold``)."""
    from jaxtl import metrics

    logits = outputs["logits"]
    if is_multi_label(config):
        return metrics.multi_label_metrics(labels, label_probabilities(config, logits) > threshold)
    if _is_regression(config):
        return metrics.regression_metrics(labels, logits[:, 0])
    return metrics.classification_metrics(labels, logits.argmax(-1))


def _classification_prediction(config, outputs, *, threshold: float = 0.5,
                               separator: str = ",") -> dict[str, Any]:
    logits = np.asarray(outputs["logits"], np.float64)
    if _is_regression(config):
        return {"prediction": float(logits[0])}
    if is_multi_label(config):  # the set above the threshold, joined as the training data was
        probs = label_probabilities(config, logits)
        chosen = [name for name, p in zip(config.labels, probs) if p > threshold]
        row = {"predicted_labels": separator.join(chosen)}
        row.update({f"prob_{name}": float(p) for name, p in zip(config.labels, probs)})
        return row
    z = logits - logits.max()
    probs = np.exp(z) / np.exp(z).sum()
    row = {"predicted_label": config.labels[int(probs.argmax())]}
    row.update({f"prob_{name}": float(p) for name, p in zip(config.labels, probs)})
    return row


# ---------------------------------------------------------------------------- question answering


class QuestionAnsweringHead(nn.Module):
    """Extractive QA on any family's trunk: one linear ``qa_outputs`` (hidden -> 2) per token,
    as HF ``*ForQuestionAnswering``; returns ``start_logits [B, L]`` and ``end_logits [B, L]``.

    Dropout before ``qa_outputs`` only where HF has it: DistilBERT's ``qa_dropout``. HF's BERT,
    RoBERTa, ALBERT and ELECTRA QA heads apply none (their trunks' hidden dropout only), so a
    config without ``qa_dropout`` gets none — not ``classifier_dropout``, which they ignore.
    """

    config: Any
    trunk: Callable[..., Any]  # (config, name) -> the family's trunk module
    trunk_name: str

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        from jaxtl.families.layers import dense

        c = self.config
        hidden_BxLxD = self.trunk(c, self.trunk_name)(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        if isinstance(hidden_BxLxD, tuple):  # (hidden, pooled) trunks
            hidden_BxLxD = hidden_BxLxD[0]
        rate = getattr(c, "qa_dropout", 0.0) or 0.0
        hidden_BxLxD = Dropout(rate)(hidden_BxLxD, deterministic=deterministic)
        logits_BxLx2 = dense(c, 2, ("embed", None), "qa_outputs")(hidden_BxLxD)
        return {"start_logits": logits_BxLx2[..., 0], "end_logits": logits_BxLx2[..., 1]}


_QUESTION_ANSWERING = HeadSpec(
    "question_answering", ("start_logits", "end_logits"),
    "extractive question answering (answer span start/end per token), HF *ForQuestionAnswering",
    task=lambda config: steps.QUESTION_ANSWERING,
    best_metric=lambda config: "f1",
    hf_suffix="ForQuestionAnswering",
    module=QuestionAnsweringHead,
    weight_prefixes=("qa_outputs.",),
    recipe="jaxtl.tasks.question_answering",
)


HEADS: dict[str | None, HeadSpec] = {
    None: HeadSpec(
        None, ("last_hidden_state", "pooler_output"), "the bare encoder (HF *Model)",
    ),
    "pretraining": HeadSpec(
        "pretraining", ("mlm_logits", "nsp_logits"),
        "the family's pretraining heads (BERT: masked LM + next-sentence prediction)",
        task=lambda config: steps.PRETRAINING,
        best_metric=lambda config: "mlm_accuracy",
    ),
    "classification": HeadSpec(
        "classification", ("logits",),
        "sequence classification (one label: regression; problem_type multi_label_classification: "
        "a set of labels per text), HF *ForSequenceClassification",
        task=_classification_task,
        metrics=_classification_metrics,
        format_prediction=_classification_prediction,
        best_metric=_classification_best_metric,
        recipe="jaxtl.tasks.classification",
    ),
    "question_answering": _QUESTION_ANSWERING,
}


# ---------------------------------------------------------------------------- token classification


def per_token_dropout(c) -> float:
    """HF's dropout before a per-token head: ``classifier_dropout`` if set, else
    ``hidden_dropout_prob`` (BertForTokenClassification), unless the family's config says
    otherwise with a ``token_dropout`` property (DistilBERT's class reads ``dropout``)."""
    rate = getattr(c, "token_dropout", None)
    if rate is not None:
        return rate
    return c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout


class TokenClassificationModel(nn.Module):
    """trunk -> dropout -> ``classifier`` dense on every position: ``logits [B, L, num_labels]``
    (HF's ``*ForTokenClassification``), for any family with a ``trunk_module``."""

    config: Any
    trunk: Callable[..., Any]
    trunk_name: str

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        c = self.config
        hidden = self.trunk(c, self.trunk_name)(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        hidden_BxLxD = hidden[0] if isinstance(hidden, tuple) else hidden
        hidden_BxLxD = Dropout(per_token_dropout(c))(hidden_BxLxD, deterministic=deterministic)
        logits_BxLxN = dense(c, c.num_labels, ("embed", None), "classifier")(hidden_BxLxD)
        return {"logits": logits_BxLxN}


def _token_metrics(config, labels, outputs) -> dict[str, float]:
    """``labels``: per example a [L] array of tag ids (-100 unlabelled); ``outputs["logits"]``
    [N, L, num_labels]. Entity P/R/F1 over the labelled positions (seqeval) + token accuracy."""
    from jaxtl import metrics

    predicted = outputs["logits"].argmax(-1)
    gold_tags, predicted_tags = [], []
    for gold_L, pred_L in zip(labels, predicted):
        keep = gold_L != -100
        gold_tags.append([config.labels[i] for i in gold_L[keep]])
        predicted_tags.append([config.labels[i] for i in pred_L[: len(gold_L)][keep]])
    return metrics.token_classification_metrics(gold_tags, predicted_tags)


def _token_best_metric(config) -> str:
    from jaxtl import metrics

    return "entity_f1" if metrics.has_entity_tags(config.labels) else "token_accuracy"


HEADS["token_classification"] = HeadSpec(
    "token_classification", ("logits",),
    "token classification (NER, POS tagging), HF *ForTokenClassification",
    task=lambda config: steps.token_classification_task(config.max_position_embeddings),
    metrics=_token_metrics,
    best_metric=_token_best_metric,
    hf_suffix="ForTokenClassification",
    module=TokenClassificationModel,
    weight_prefixes=("classifier.",),
    recipe="jaxtl.tasks.token_classification",
)


# ---------------------------------------------------------------------------- multiple choice


def _multiple_choice_metrics(config, labels, outputs) -> dict[str, float]:
    """``labels [N]``: the right choice of each example; ``outputs["logits"] [N, C]``."""
    predicted = np.asarray(outputs["logits"]).argmax(-1)
    return {"accuracy": float((predicted == np.asarray(labels)).mean()) if len(labels) else 0.0}


def _multiple_choice_prediction(config, outputs) -> dict[str, Any]:
    """``predicted_choice`` (0-based) and ``prob_<i>`` (softmax over the choices) per choice."""
    scores = np.asarray(outputs["logits"], np.float64)
    z = np.exp(scores - scores.max())
    probs = z / z.sum()
    row = {"predicted_choice": int(probs.argmax())}
    row.update({f"prob_{i}": float(p) for i, p in enumerate(probs)})
    return row


# The modules are each family's own (FamilySpec.models["multiple_choice"]): HF scores a choice
# with the pooler (BERT, ALBERT, RoBERTa), pre_classifier (DistilBERT) or sequence_summary
# (ELECTRA), then a `classifier` linear (hidden -> 1).
HEADS["multiple_choice"] = HeadSpec(
    "multiple_choice", ("logits",),
    "multiple choice (SWAG-style: one score per choice, softmax over them), HF *ForMultipleChoice",
    task=lambda config: steps.MULTIPLE_CHOICE,
    metrics=_multiple_choice_metrics,
    format_prediction=_multiple_choice_prediction,
    best_metric=lambda config: "accuracy",
    recipe="jaxtl.tasks.multiple_choice",
)


def get(name: str | None) -> HeadSpec:
    if name not in HEADS:
        raise ConfigError(f"head {name!r} is unknown; use one of {', '.join(str(h) for h in HEADS)}")
    return HEADS[name]


def generic_weight_prefixes() -> tuple[str, ...]:
    """HF weight-name prefixes of the heads every family shares (head weights, not trunk)."""
    return tuple(p for spec in HEADS.values() if spec.module is not None for p in spec.weight_prefixes)


def names() -> tuple[str | None, ...]:
    return tuple(HEADS)
