"""Sequence classification (single- or multi-label) and regression: the fine-tuning recipe, and
the file-level predict and evaluate behind ``jaxtl predict`` / ``jaxtl evaluate``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from jaxtl import heads, hf
from jaxtl.config import Config
from jaxtl.errors import CheckpointError, ConfigError, DataError
from jaxtl.tasks import common
from jaxtl.train import EvalSet, Setup


def head_labels(folder: Path, base, head_trained: bool, regression: bool, multi_label: bool = False):
    """The label names a trained head fixes (None: the data's labels decide).

    A head trained on named labels keeps its ids: the data is mapped to them by name (never by
    position), and a data label the head does not know is an error naming both. Generic names
    (``LABEL_0`` ...) count as unnamed.
    """
    if not head_trained or common.generic_labels(base.labels):
        return None
    if regression != (len(base.labels) == 1):
        raise ConfigError(
            f"{folder} holds a {'regression' if len(base.labels) == 1 else 'classification'} head "
            f"but data.regression is {str(regression).lower()}"
        )
    if multi_label != heads.is_multi_label(base):
        raise ConfigError(
            f"{folder} holds a {'multi-label' if heads.is_multi_label(base) else 'single-label'} "
            f"classification head but data.multi_label is {str(multi_label).lower()}"
        )
    return tuple(base.labels)


def batch_shards(cfg: Config) -> int:
    """The data x fsdp shards a global batch is split over (packed row counts are multiples)."""
    from jaxtl import sharding

    try:
        data, fsdp, _ = sharding.mesh_shape(cfg.mesh, jax.device_count())
    except ConfigError:  # a mesh over a subset of the devices (benchmarks): the loop checks it
        return 1
    return data * fsdp


def real_tokens(batch: dict[str, np.ndarray]) -> int:
    """Non-padding tokens of a batch, packed (``segment_ids``) or not."""
    if "segment_ids" in batch:
        return int((batch["segment_ids"] > 0).sum())
    return int(batch["attention_mask"].sum())


def setup(cfg: Config) -> Setup:
    from jaxtl.data import classification as cls_data
    from jaxtl.data.batching import ClassificationBatcher

    d, t = cfg.data, cfg.train
    folder, tokenizer_folder, tokenizer, family, base = common.checkpoint_start(cfg)
    head = "classification"
    head_spec = heads.get(head)
    try:
        head_trained = hf.head_of_folder(folder) == head
    except CheckpointError:
        head_trained = False
    data = cls_data.load_classification_data(
        d, tokenizer, max_positions=base.max_position_embeddings,
        labels=head_labels(folder, base, head_trained, d.regression, d.multi_label),
    )
    if data.train is None or len(data.train) == 0:
        raise DataError("no training examples")
    problem_type = "regression" if data.regression else "single_label_classification"
    if data.multi_label:
        problem_type = heads.MULTI_LABEL
    config = common.model_config(cfg, base, labels=tuple(data.labels), problem_type=problem_type)
    model = family.build(config, head)
    pretrained = hf.pretrained_weights(folder, model)
    accum = cfg.optim.grad_accum_steps
    micro = t.batch_size // accum
    eval_batch = t.eval_batch_size or 2 * t.batch_size
    batching = dict(bucket_sizes=d.bucket_sizes, seed=t.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
    train_batches = ClassificationBatcher(
        data.train, batch_size=micro, packing=d.packing, row_multiple=batch_shards(cfg),
        first_position=family.first_position(config), **batching,
    )

    def make_eval(split) -> EvalSet:
        def finish(outputs, index):
            keep = index >= 0
            return head_spec.metrics(config, split.labels[index[keep]],
                                     {k: v[keep] for k, v in outputs.items()},
                                     threshold=d.threshold)

        batches = ClassificationBatcher(split, batch_size=eval_batch, **batching)
        return EvalSet(
            name=split.name,
            batches=batches.eval_batches,
            num_batches=batches.num_eval_batches,
            finish=finish, output_keys=head_spec.output_keys,
        )

    eval_sets = [make_eval(s) for s in (data.validation, data.test) if s is not None and len(s)]
    return Setup(
        model=model, task=head_spec.task(config), export=common.exporter(model, tokenizer),
        pretrained=pretrained,
        train_batch=train_batches.train_batch,
        steps_per_epoch=train_batches.steps_per_epoch,
        tokens_per_batch=real_tokens,
        eval_sets=eval_sets,
        best_metric=head_spec.best_metric(config),
        flops_per_batch=common.flops_counter(config, head),
        meta=common.meta(family, head, config, tokenizer_folder,
                   labels=list(config.labels), regression=data.regression,
                   multi_label=data.multi_label),
    )


# ---------------------------------------------------------------------------- inference on a file


def inference_data_defaults(hf_config: dict) -> dict:
    """``data`` keys a model folder's config.json implies when ``jaxtl predict`` / ``evaluate``
    run without --config (so ``--set data.threshold=...`` is accepted for a multi-label model)."""
    return {"multi_label": True} if hf_config.get("problem_type") == heads.MULTI_LABEL else {}


def inference_data(data, model_config):
    """The ``data`` section to read a file for ``model_config``'s head with: whether rows hold
    label sets comes from the model (config.json's ``problem_type``), never from defaults."""
    if heads.is_multi_label(model_config):
        return dataclasses.replace(data, multi_label=True)
    if data.multi_label:
        raise ConfigError(
            "data.multi_label is true but the model is a "
            f"{'regression' if model_config.num_labels == 1 else 'single-label classification'} "
            f"model (its config.json has problem_type={model_config.problem_type!r})"
        )
    return data


def _logits(cfg, model, params, tokenizer, path, batch_size: int, require_labels: bool):
    """``(split, logits [N, num_labels])`` for every row of the file ``path``."""
    from jaxtl.data import classification as cls_data
    from jaxtl.data.batching import ClassificationBatcher

    labels = model.config.labels
    split = cls_data.load_prediction_split(
        path, inference_data(cfg.data, model.config), tokenizer,
        max_positions=model.config.max_position_embeddings,
        labels=None if model.config.num_labels == 1 else labels,
    )
    if require_labels and split.labels is None:
        raise DataError(f"{path} has no label column {cfg.data.label_column!r} to evaluate against")

    @jax.jit
    def forward(batch):
        return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                           batch["token_type_ids"])["logits"]

    logits = np.zeros((len(split), model.config.num_labels), np.float32)
    batches = ClassificationBatcher(split, batch_size=batch_size, bucket_sizes=cfg.data.bucket_sizes)
    for batch in batches.eval_batches():
        index = batch.pop("index")
        out = np.asarray(forward({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}))
        keep = index >= 0
        logits[index[keep]] = out[keep]
    return split, logits


def evaluate_file(cfg, model, params, tokenizer, path, batch_size: int) -> dict:
    """The head's metrics on a labelled file (``jaxtl evaluate``)."""
    split, logits = _logits(cfg, model, params, tokenizer, path, batch_size, require_labels=True)
    result = heads.get("classification").metrics(model.config, split.labels, {"logits": logits},
                                                  threshold=cfg.data.threshold)
    result["examples"] = len(split)
    return result


def predict_file(cfg, model, params, tokenizer, path, batch_size: int) -> list[dict]:
    """One output row per input row (``jaxtl predict``): every input column kept as it is (ids to
    join on), then ``predicted_label`` and ``prob_<label>`` (regression: ``prediction``;
    multi-label: ``predicted_labels``, the labels above ``data.threshold`` joined by
    ``data.label_separator``, and ``prob_<label>``, each label's sigmoid)."""
    from jaxtl.data.tables import read_table

    split, logits = _logits(cfg, model, params, tokenizer, path, batch_size, require_labels=False)
    table = read_table(path)
    format_prediction = heads.get("classification").format_prediction
    rows = []
    for i in range(len(split)):
        row = {name: values[i] for name, values in table.columns.items()}
        row.update(format_prediction(model.config, {"logits": logits[i]},
                                     threshold=cfg.data.threshold,
                                     separator=cfg.data.label_separator))
        rows.append(row)
    return rows
