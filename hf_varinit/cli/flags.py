"""Dataclass fields -> command-line flags -> typed values: the one path every command's options take.

A dataclass field is one ``--kebab-case`` flag (``--snake_case`` works too, as with `transformers.HfArgumentParser`).
Its help is ``metadata["help"]`` followed by ``(default: ...)``
(``metadata["shown"]`` overrides how the default is written); ``metadata["choices"]`` and ``metadata["metavar"]``
pass through to argparse. The type comes from the annotation:

- ``int``, ``float``, ``str``: one value of that type;
- ``X | None``: also ``none`` / ``null`` (any case), or an empty word, for None;
- ``list[X]``: one or more values (``nargs="+"``);
- ``bool``: ``--flag`` (on), ``--flag true|false`` (``yes``/``no``/``1``/``0`` too) and ``--no-flag`` (off).

Every flag's namespace value is None until it is typed, and `flag_values` returns only the flags typed on the
command line (a typed ``none`` included), so they override a config file and the dataclass fills in the rest.

Example:
    >>> parser = FlagParser(prog="demo")
    >>> add_dataclass_flags(parser, TrainingOptions, group="training options")  # doctest: +SKIP
    >>> flag_values(parser.parse_args(["--lr", "3e-4", "--no-compile"]), TrainingOptions)  # doctest: +SKIP
    {'lr': 0.0003, 'compile': False}
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Sequence
from typing import Any

from hf_varinit.errors import ConfigError

__all__ = ["FlagParser", "add_dataclass_flags", "flag_name", "flag_values", "parse_bool", "shown_default"]

NONE_WORDS = ("none", "null", "")  # what an optional flag reads as None
TRUE_WORDS = ("true", "yes", "y", "t", "1", "on")
FALSE_WORDS = ("false", "no", "n", "f", "0", "off")
TYPED = "_typed_flags"  # the namespace attribute that lists the dests of the flags typed on the command line


class FlagParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose errors raise `ConfigError` (for parsing inside a program) instead of
    printing the usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


def flag_name(name: str) -> str:
    """The flag of a field: ``max_steps`` -> ``--max-steps``."""
    return "--" + name.replace("_", "-")


def _spellings(name: str) -> list[str]:
    """``--max-steps`` and its alias ``--max_steps`` (one flag for a name without underscores)."""
    return list(dict.fromkeys([flag_name(name), f"--{name}"]))


def parse_bool(text: str) -> bool:
    """``true``/``yes``/``1``/``on`` -> True, ``false``/``no``/``0``/``off`` -> False (any case).

    Raises:
        ValueError: another word (argparse reports it as an invalid value of the flag).
    """
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{text!r} is not true or false")


parse_bool.__name__ = "bool"  # argparse names the type in its error messages


def _none_or(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """``kind`` that also reads the `NONE_WORDS` as None (the ``X | None`` fields)."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() in NONE_WORDS else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def shown_default(f: dataclasses.Field) -> str:
    """A field's default as its help writes it: ``metadata["shown"]``, else none, on/off, a list space-separated,
    a float in ``%g``."""
    if "shown" in f.metadata:
        return f.metadata["shown"]
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        value = f.default
    else:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


class _FieldAction(argparse.Action):
    """Stores a flag's value and records its dest in ``namespace._typed_flags``: typed, as opposed to defaulted."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if self.nargs == 0:  # --no-flag
            values = self.const
        setattr(namespace, self.dest, values)
        typed = set(getattr(namespace, TYPED, ()))
        typed.add(self.dest)
        setattr(namespace, TYPED, typed)


def add_dataclass_flags(parser: argparse.ArgumentParser | Any, cls: type, *, skip: Sequence[str] = (),
                        group: str | None = None) -> Any:
    """Add one ``--kebab-case`` flag per field of the dataclass ``cls`` (bool fields also get ``--no-kebab-case``).

    Args:
        parser (`argparse.ArgumentParser` or an argument group): where the flags go.
        cls (`type`): a dataclass whose fields carry ``metadata={"help": ...}``.
        skip (`Sequence[str]`): fields left without a flag.
        group (`str`, *optional*): the ``--help`` section title of a new argument group holding the flags.

    Returns:
        The parser or group the flags were added to.
    """
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        kind, optional = hints[f.name], False
        args = typing.get_args(kind)
        if type(None) in args:  # X | None
            optional = True
            kind = next(a for a in args if a is not type(None))
        help_text = f"{f.metadata.get('help', '')} (default: {shown_default(f)})".lstrip()
        options: dict[str, Any] = {"dest": f.name, "default": None, "action": _FieldAction, "help": help_text}
        if "metavar" in f.metadata:
            options["metavar"] = f.metadata["metavar"]
        if kind is bool:
            target.add_argument(*_spellings(f.name), nargs="?", const=True, type=parse_bool,
                                **{"metavar": "BOOL", **options})
            target.add_argument(*_spellings(f"no_{f.name}"), nargs=0, const=False, dest=f.name, default=None,
                                action=_FieldAction, help=f"turn {flag_name(f.name)} off (default: {shown_default(f)})")
            continue
        if typing.get_origin(kind) is list:
            kind = typing.get_args(kind)[0]
            options["nargs"] = "+"
        options["type"] = _none_or(kind) if optional and "nargs" not in options else kind
        if "choices" in f.metadata:
            options["choices"] = f.metadata["choices"]
        target.add_argument(*_spellings(f.name), **options)
    return target


def flag_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` whose flags were typed in ``args`` (a typed ``none`` is a None value), by field name."""
    typed = getattr(args, TYPED, set())
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name in typed}
