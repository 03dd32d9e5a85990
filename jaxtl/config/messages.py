"""One-line messages that name the dotted config key."""

from __future__ import annotations

import difflib
import reprlib
import types
import typing
from typing import Any


from jaxtl.errors import ConfigError


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

def _one_line(text: Any) -> str:
    return " ".join(str(text).split())
