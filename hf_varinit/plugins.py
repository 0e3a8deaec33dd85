"""The public hooks through which another distribution plugs into the library: entry-point groups, read lazily.

An entry is ``name = "module:attribute"`` (or just ``"module"``) in a group below, declared in the plugging
distribution's ``pyproject.toml``. Like transformers' lazy auto mappings, a name resolves on lookup: listing the
names reads only the installed metadata, and the entry's module is imported when its entry is used. Nothing
registers by being imported, and the library never imports a plugin itself.

Groups (the seed papers' MLP reproductions, the ``hf-varinit-experiments`` lab in ``experiments/``, use all four):

* ``hf_varinit.commands``: a subcommand of ``hf-varinit`` the library does not have (``sweep``); the entry is a
  module with ``add_arguments(parser)`` and ``run(args) -> int | None``, like `hf_varinit.cli`'s own commands.
* ``hf_varinit.studies``: a study of ``hf-varinit compare --study NAME`` (``init``, ``optimal``); see
  `hf_varinit.cli.compare`.
* ``hf_varinit.pilots``: a calibration pilot factory of ``hf-varinit calibrate --model NAME`` (``mlp``); see
  `hf_varinit.calibrate.register_pilot_factory`.
* ``hf_varinit.architectures``: ``model_type`` -> its `hf_varinit.arch` table entry (``varinit_mlp``).

Example:
    >>> entry_names(STUDIES)  # doctest: +SKIP
    ['init', 'optimal']
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from hf_varinit.errors import ConfigError

__all__ = ["ARCHITECTURES", "COMMANDS", "LAB", "PILOTS", "STUDIES", "entry_names", "lab_missing", "load_entry"]

COMMANDS = "hf_varinit.commands"
STUDIES = "hf_varinit.studies"
PILOTS = "hf_varinit.pilots"
ARCHITECTURES = "hf_varinit.architectures"

# What the lab provides, so that a checkout without it gets a message that says where these live (nothing else).
LAB = {COMMANDS: ("sweep",), STUDIES: ("init", "optimal"), PILOTS: ("mlp",), ARCHITECTURES: ("varinit_mlp",)}
LAB_INSTALL = "pip install -e experiments/"


def _entries(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def entry_names(group: str) -> list[str]:
    """The names installed in ``group``, sorted (reads metadata only: no plugin module is imported)."""
    return sorted(_entries(group))


def load_entry(group: str, name: str) -> Any | None:
    """The object of the entry ``name`` in ``group`` (its module imported now), or None when none is installed.

    Raises:
        ConfigError: the entry is installed but its module cannot be imported (a broken or stale install).
    """
    entry = _entries(group).get(name)
    if entry is None:
        return None
    try:
        return entry.load()
    except (ImportError, AttributeError) as exc:
        where = getattr(entry.dist, "name", None) or "its distribution"
        raise ConfigError(f"{group} entry {name!r} = {entry.value!r} (from {where}) cannot be loaded: {exc}; "
                          f"reinstall it (from a checkout: {LAB_INSTALL})") from exc


def lab_missing(group: str, name: str, what: str) -> str | None:
    """The one-line message for ``name`` of ``group`` when the lab provides it and is not installed, else None.

    Args:
        what (`str`): how the user asked for it, e.g. ``"hf-varinit sweep"`` or ``"--study init"``.
    """
    if name not in LAB.get(group, ()) or name in _entries(group):
        return None
    return (f"{what} is one of the MLP reproductions of the seed papers, which live in the lab "
            f"(the hf-varinit-experiments distribution in experiments/), not in the library; install it from a "
            f"checkout with `{LAB_INSTALL}` (`make install` does)")
