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

import numpy as np

from jaxtl import steps
from jaxtl.errors import ConfigError


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


def _classification_metrics(config, labels, outputs) -> dict[str, float]:
    from jaxtl import metrics

    logits = outputs["logits"]
    if _is_regression(config):
        return metrics.regression_metrics(labels, logits[:, 0])
    return metrics.classification_metrics(labels, logits.argmax(-1))


def _classification_prediction(config, outputs) -> dict[str, Any]:
    logits = np.asarray(outputs["logits"], np.float64)
    if _is_regression(config):
        return {"prediction": float(logits[0])}
    z = logits - logits.max()
    probs = np.exp(z) / np.exp(z).sum()
    row = {"predicted_label": config.labels[int(probs.argmax())]}
    row.update({f"prob_{name}": float(p) for name, p in zip(config.labels, probs)})
    return row


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
        "sequence classification (one label: regression), HF *ForSequenceClassification",
        task=lambda config: steps.CLASSIFICATION,
        metrics=_classification_metrics,
        format_prediction=_classification_prediction,
        best_metric=lambda config: "pearson" if _is_regression(config) else "accuracy",
        recipe="jaxtl.tasks.classification",
    ),
}


def get(name: str | None) -> HeadSpec:
    if name not in HEADS:
        raise ConfigError(f"head {name!r} is unknown; use one of {', '.join(str(h) for h in HEADS)}")
    return HEADS[name]


def generic_weight_prefixes() -> tuple[str, ...]:
    """HF weight-name prefixes of the heads every family shares (head weights, not trunk)."""
    return tuple(p for spec in HEADS.values() if spec.module is not None for p in spec.weight_prefixes)


def names() -> tuple[str | None, ...]:
    return tuple(HEADS)
