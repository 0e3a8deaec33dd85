"""Rule specs as data: splitting ``name:key=value,...`` strings, and checking each value against its rule's field.

A spec value is a string (from the ``name:key=value`` form, converted to the field's type) or any value a dict
spec holds (from Python, YAML or JSON), checked against the field's annotation: a list where a number belongs, a
bool for a number or None for a string is a `RuleError`, never a TypeError later.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from hf_varinit.errors import RuleError, shown


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=value,flag"`` into the name and its parameters (bare flags become True)."""
    if not isinstance(spec, str) or not spec.strip():
        raise RuleError(f"rule spec {shown(spec)} is empty; give a rule name such as kaiming or 'normal:std=0.02'")
    name, _, rest = spec.strip().partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not key:
            raise RuleError(f"rule spec {shown(spec)}: empty key in {shown(item)}; write key=value pairs separated "
                            "by ','")
        if key in params:
            raise RuleError(f"rule spec {shown(spec)}: key {shown(key)} given twice; give each key once")
        params[key] = value.strip() if eq else True
    return name.strip(), params


def coerce(rule_name: str, f: dataclasses.Field, value: Any) -> Any:
    """Convert a spec string to the field's type (float, int, bool, str)."""
    if not isinstance(value, str):
        return value
    kind = str(f.type)
    try:
        if "bool" in kind:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if "float" in kind:
            return float(value)
        if "int" in kind:
            return int(value)
    except ValueError:
        raise RuleError(f"rule {rule_name!r}: {f.name}={shown(value)} is not a valid {kind}") from None
    return value


# The annotation words a spec value is checked against (others, e.g. a custom class, are left to the rule).
_VALUE_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,),
                                             "None": (type(None),), "dict": (Mapping,)}


def _annotation_words(annotation: Any) -> list[str]:
    """``float | None`` -> ``["float", "None"]``, for string annotations and for real types or unions alike."""
    if isinstance(annotation, str):
        return [w.strip() for w in annotation.split("|")]
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    return [("None" if a is type(None) else getattr(a, "__name__", repr(a))) for a in (args or (annotation,))]


def check_type(rule_name: str, f: dataclasses.Field, value: Any) -> Any:
    """Refuse a value of the wrong type (a list where a number belongs, a bool for a number, None for a string).

    An int for a float field becomes a float. Returns the value to use.
    """
    words = _annotation_words(f.type)
    if not all(w in _VALUE_TYPES for w in words):
        return value  # an annotation this check does not know: the rule validates it itself
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = any(
        isinstance(value, _VALUE_TYPES[w]) and (w in ("bool", "None", "str", "dict") or number) for w in words
    )
    if not ok:
        raise RuleError(
            f"rule {rule_name!r}: {f.name}={shown(value)} is invalid: {f.name} must be {' or '.join(words)}, not "
            f"{type(value).__name__}; e.g. {{'name': {rule_name!r}, {f.name!r}: <{words[0]}>}}"
        )
    if number and "float" in words and isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise RuleError(f"rule {rule_name!r}: {f.name}={shown(value)} is too large for a float") from None
    return value


__all__ = ["check_type", "coerce", "parse_spec"]
