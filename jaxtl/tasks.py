"""Recipes: for a config, build the model, its pretrained weights, the data, the loss and the
evaluation sets, and hand them to the loop (:func:`jaxtl.train.train_loop`).

    results = jaxtl.tasks.run(jaxtl.config.load("configs/demo_finetune.yaml"), "runs/demo")

A recipe also records with every checkpoint what export needs to rebuild the model without the
training data (family, head, model config, labels, tokenizer folder): see :func:`model_from_meta`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtl import families, heads, hf, steps, train
from jaxtl.config import Config
from jaxtl.errors import CheckpointError, ConfigError, DataError
from jaxtl.train import EvalSet, Setup

log = logging.getLogger("jaxtl")


def _model_config(cfg: Config, base, **extra):
    """The checkpoint's (or preset's) architecture with the run's compute and dropout choices."""
    m = cfg.model
    changes = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, **extra)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        if getattr(m, name) is not None:
            changes[name] = getattr(m, name)
    return dataclasses.replace(base, **changes)


def _check_vocab(tokenizer, config, source: str) -> None:
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"the tokenizer from {source} has {len(tokenizer)} tokens but the model's vocab_size "
            f"is {config.vocab_size}; use the tokenizer the model was trained with"
        )


def _generic(labels) -> bool:
    """``LABEL_0 ... LABEL_N``: the names HF (and ``jaxtl convert --num-labels``) give unnamed labels."""
    return all(label == f"LABEL_{i}" for i, label in enumerate(labels))


def head_labels(folder: Path, base, head_trained: bool, regression: bool):
    """The label names a trained head fixes (None: the data's labels decide).

    A head trained on named labels keeps its ids: the data is mapped to them by name (never by
    position), and a data label the head does not know is an error naming both. Generic names
    (``LABEL_0`` ...) count as unnamed.
    """
    if not head_trained or _generic(base.labels):
        return None
    if regression != (len(base.labels) == 1):
        raise ConfigError(
            f"{folder} holds a {'regression' if len(base.labels) == 1 else 'classification'} head "
            f"but data.regression is {str(regression).lower()}"
        )
    return tuple(base.labels)


def _meta(family, head: str | None, config, tokenizer_folder: Path, **extra) -> dict:
    return {
        "family": family.name, "head": head,
        "model_config": {k: list(v) if isinstance(v, tuple) else v
                         for k, v in dataclasses.asdict(config).items()},
        "tokenizer": str(tokenizer_folder), **extra,
    }


def model_from_meta(meta: dict):
    """``(model, tokenizer)`` rebuilt from what a recipe saved with a checkpoint."""
    if "model_config" not in meta:
        raise CheckpointError("this checkpoint predates saved model metadata; export it with the "
                              "jaxtl version that wrote it")
    spec = families.get(meta["family"])
    fields = dict(meta["model_config"])
    fields["labels"] = tuple(fields["labels"])
    config = spec.config_cls(**fields)
    return spec.build(config, meta["head"]), hf.tokenizer(meta["tokenizer"])


def _exporter(model, tokenizer):
    return lambda params, out: hf.save(model, params, out, tokenizer=tokenizer)


def finetune_setup(cfg: Config) -> Setup:
    from jaxtl.data import classification as cls_data
    from jaxtl.data.batching import ClassificationBatcher

    d, t = cfg.data, cfg.train
    folder = hf.resolve(cfg.model.pretrained)
    tokenizer_folder = hf.resolve(cfg.model.tokenizer) if cfg.model.tokenizer else folder
    tokenizer = hf.tokenizer(tokenizer_folder)
    family = hf.family_of(folder)
    base = hf.load_config(folder)
    _check_vocab(tokenizer, base, str(tokenizer_folder))
    head = "classification"
    head_spec = heads.get(head)
    try:
        head_trained = hf.head_of_folder(folder) == head
    except CheckpointError:
        head_trained = False
    data = cls_data.load_classification_data(
        d, tokenizer, max_positions=base.max_position_embeddings,
        labels=head_labels(folder, base, head_trained, d.regression),
    )
    if data.train is None or len(data.train) == 0:
        raise DataError("no training examples")
    config = _model_config(
        cfg, base, labels=tuple(data.labels),
        problem_type="regression" if data.regression else "single_label_classification",
    )
    model = family.build(config, head)
    pretrained = hf.pretrained_weights(folder, model)
    accum = cfg.optim.grad_accum_steps
    micro = t.batch_size // accum
    eval_batch = t.eval_batch_size or 2 * t.batch_size
    common = dict(bucket_sizes=d.bucket_sizes, seed=t.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
    train_batches = ClassificationBatcher(data.train, batch_size=micro, **common)

    def make_eval(split) -> EvalSet:
        def finish(outputs, index):
            keep = index >= 0
            return head_spec.metrics(config, split.labels[index[keep]],
                                     {k: v[keep] for k, v in outputs.items()})

        batches = ClassificationBatcher(split, batch_size=eval_batch, **common)
        return EvalSet(
            name=split.name,
            batches=batches.eval_batches,
            num_batches=batches.num_eval_batches,
            finish=finish, output_keys=head_spec.output_keys,
        )

    eval_sets = [make_eval(s) for s in (data.validation, data.test) if s is not None and len(s)]
    return Setup(
        model=model, task=head_spec.task(config), export=_exporter(model, tokenizer),
        pretrained=pretrained,
        train_batch=train_batches.train_batch,
        steps_per_epoch=train_batches.steps_per_epoch,
        tokens_per_batch=lambda b: int(b["attention_mask"].sum()),
        eval_sets=eval_sets,
        best_metric=head_spec.best_metric(config),
        meta=_meta(family, head, config, tokenizer_folder,
                   labels=list(config.labels), regression=data.regression),
    )


def pretrain_setup(cfg: Config) -> Setup:
    from jaxtl.data import pretraining as pt_data
    from jaxtl.data.batching import PretrainingBatcher

    d, t, m = cfg.data, cfg.train, cfg.model
    tokenizer_folder = hf.resolve(m.tokenizer or m.pretrained)
    tokenizer = hf.tokenizer(tokenizer_folder)
    if m.pretrained:
        folder = hf.resolve(m.pretrained)
        family = hf.family_of(folder)
        base = hf.load_config(folder, **dict(m.overrides))
    else:
        folder = None
        family = families.get(m.family)
        base = family.preset(m.size, **{"vocab_size": len(tokenizer), **dict(m.overrides)})
    if "mlm_logits" not in family.pretraining_outputs:
        raise ConfigError(
            f"`jaxtl pretrain` trains masked-LM heads; the {family.name} pretraining head "
            f"({family.architecture('pretraining')}) returns "
            f"{', '.join(family.pretraining_outputs)}, whose training data jaxtl does not build; "
            "fine-tune this checkpoint instead"
        )
    _check_vocab(tokenizer, base, str(tokenizer_folder))
    if d.nsp and "nsp_logits" not in family.pretraining_outputs:
        raise ConfigError(
            f"data.nsp is true but {family.name}'s pretraining head has no next-sentence "
            "prediction (it predicts masked tokens only); set data.nsp: false"
        )
    if d.max_seq_length > base.max_position_embeddings:
        raise ConfigError(
            f"data.max_seq_length={d.max_seq_length} exceeds the model's "
            f"max_position_embeddings={base.max_position_embeddings}"
        )
    config = _model_config(cfg, base)
    head = "pretraining"
    model = family.build(config, head)
    pretrained = hf.pretrained_weights(folder, model) if folder is not None else None
    train_data, validation = pt_data.load_pretraining_data(d, tokenizer, model_vocab_size=config.vocab_size)
    accum = cfg.optim.grad_accum_steps
    micro = t.batch_size // accum
    eval_batch = t.eval_batch_size or 2 * t.batch_size
    procs = dict(seed=t.seed, process_index=jax.process_index(), process_count=jax.process_count())
    train_batches = PretrainingBatcher(train_data, batch_size=micro, **procs)
    eval_sets = []
    if validation is not None:
        # Floors to read the scores against, recorded with every validation result: always the
        # most frequent training token at exactly the masked positions, and the NSP majority label.
        # The unigram floor counts every process's masks: a one-process batcher sees them all.
        every_row = PretrainingBatcher(validation, batch_size=eval_batch, seed=t.seed)
        baselines = {"unigram_baseline": pt_data.unigram_baseline_accuracy(
            train_data, every_row.eval_batches())}
        if d.nsp:
            baselines["nsp_baseline"] = pt_data.nsp_baseline_accuracy(validation)
        log.info("validation baselines: %s", ", ".join(f"{k}={v:.4f}" for k, v in baselines.items()))
        eval_batches = PretrainingBatcher(validation, batch_size=eval_batch, **procs)
        eval_sets.append(EvalSet(
            name="validation",
            batches=eval_batches.eval_batches,
            num_batches=eval_batches.num_eval_batches,
            finish=lambda outputs, index: dict(baselines),
        ))
    return Setup(
        model=model, task=steps.PRETRAINING if d.nsp else steps.PRETRAINING_MLM_ONLY,
        export=_exporter(model, tokenizer),
        pretrained=pretrained,
        train_batch=train_batches.train_batch,
        steps_per_epoch=train_batches.steps_per_epoch,
        tokens_per_batch=lambda b: int(b["attention_mask"].sum()),
        eval_sets=eval_sets,
        best_metric=heads.get(head).best_metric(config),
        meta=_meta(family, head, config, tokenizer_folder),
    )


RECIPES = {"finetune": finetune_setup, "pretrain": pretrain_setup}


def setup_for(cfg: Config) -> Setup:
    return RECIPES[cfg.task](cfg)


def run(cfg: Config, workdir: str | Path, *, overwrite: bool = False) -> dict:
    """Fine-tune or pretrain per ``cfg.task`` in ``workdir`` (resuming if it has a checkpoint of
    the same run; ``overwrite`` starts afresh where it holds another)."""
    train.setup_logging()
    train.enable_compilation_cache()
    return train.train_loop(cfg, Path(workdir), setup_for(cfg), overwrite=overwrite)
