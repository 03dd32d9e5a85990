"""Reading configs: YAML files, dotted --set overrides, and values coerced to the annotated
types at any depth."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from jaxtl.errors import ConfigError
from jaxtl.config.checks import _at_least, _positive, _within, validate
from jaxtl.config.messages import _one_line, _WrongType, _join, _kind, _show, _unknown
from jaxtl.config.schema import CHOICES, Config, DATA_CLASSES, MeshConfig, ModelConfig, OptimConfig, SECTIONS, TASKS, TrainConfig, _architecture_types


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
