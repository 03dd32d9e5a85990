"""What every recipe shares: the run's model config, vocabulary check, checkpoint metadata and
the HF exporter."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxtl import families, hf
from jaxtl.config import Config
from jaxtl.errors import CheckpointError, ConfigError


def model_config(cfg: Config, base, **extra):
    """The checkpoint's (or preset's) architecture with the run's compute and dropout choices."""
    m = cfg.model
    changes = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, **extra)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        if getattr(m, name) is not None:
            changes[name] = getattr(m, name)
    return dataclasses.replace(base, **changes)


def check_vocab(tokenizer, config, source: str) -> None:
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"the tokenizer from {source} has {len(tokenizer)} tokens but the model's vocab_size "
            f"is {config.vocab_size}; use the tokenizer the model was trained with"
        )


def checkpoint_start(cfg: Config):
    """What every fine-tuning recipe starts from: ``(folder, tokenizer_folder, tokenizer,
    family, base_config)`` of ``model.pretrained`` (and ``model.tokenizer`` when set), with the
    tokenizer checked against the model's vocabulary."""
    folder = hf.resolve(cfg.model.pretrained)
    tokenizer_folder = hf.resolve(cfg.model.tokenizer) if cfg.model.tokenizer else folder
    tokenizer = hf.tokenizer(tokenizer_folder)
    family = hf.family_of(folder)
    base = hf.load_config(folder)
    check_vocab(tokenizer, base, str(tokenizer_folder))
    return folder, tokenizer_folder, tokenizer, family, base


def generic_labels(labels) -> bool:
    """``LABEL_0 ... LABEL_N``: the names HF (and ``jaxtl convert --num-labels``) give unnamed labels."""
    return all(label == f"LABEL_{i}" for i, label in enumerate(labels))


def meta(family, head: str | None, config, tokenizer_folder: Path, **extra) -> dict:
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


def exporter(model, tokenizer):
    return lambda params, out: hf.save(model, params, out, tokenizer=tokenizer)


def flops_counter(config, head: str | None):
    """This process's rows -> the model FLOPs of the global batch's train step (for ``mfu``)."""
    import jax

    from jaxtl import flops

    def count(local: dict) -> int:
        rows, length = local["input_ids"].shape
        masked = local["masked_positions"].shape[1] if "masked_positions" in local else None
        head_for_flops = head if head in (None, "classification", "pretraining") else None
        return flops.train_step_flops(config, rows * jax.process_count(), length, head_for_flops,
                                      masked_positions=masked)

    return count
