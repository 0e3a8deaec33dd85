"""From a report to the next model: its architecture (at the same or another size), initialised with s0^2 = V(W).

`from_report` builds the model a report was measured on (`report_config`, optionally at another depth or width)
under the optimal rule; `spec_recipe_note` says when the run to initialise trains with another optimizer or lr than
the report was measured under (V(W) under AdamW and under SGD are different objects).
"""

from __future__ import annotations

import os
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from hf_varinit.arch.builder import config_from_dict, default_mlp_width
from hf_varinit.arch.config import hidden_size, num_heads, num_layers
from hf_varinit.arch.table import get_architecture
from hf_varinit.errors import ConfigError, HFVarInitError, ReportError
from hf_varinit.init.optimal import OptimalRule
from hf_varinit.init.patch import from_config
from hf_varinit.init.rules import get_rule
from hf_varinit.init.transfer import WIDTH_TRANSFERS
from hf_varinit.report.reader import load_report
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.transfer import recipe_note

# The library's size names (as `hf-varinit plan` and `build_config` take them) -> the architecture table's field.
_SIZE_NAMES = {"n_layer": "layers", "n_embd": "width", "n_head": "heads", "n_kv_heads": "kv_heads",
               "n_positions": "positions", "intermediate_size": "mlp_width"}


def _own_names(model_type: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with the library's size names (``n_layer``, ``n_embd``...) under the config's own names."""
    names = getattr(get_architecture(model_type), "config", None)
    out = {}
    for key, value in overrides.items():
        field = _SIZE_NAMES.get(key)
        own = getattr(names, field, None) if names is not None and field else None
        out[own or key] = value
    return out


def _follow_width(report: VarianceReport, own: dict[str, Any]) -> dict[str, Any]:
    """``own`` (overrides under the config's names) plus the sizes that follow a new width unless given: the heads
    (the report's head dimension kept; or, with the heads given, a stored ``head_dim`` set to width / heads) and the
    MLP width of a family whose MLP follows the hidden size (`default_mlp_width`)."""
    names = getattr(get_architecture(report.model_type), "config", None)
    stored, new = report.config, own.get(getattr(names, "width", None))
    width, heads = hidden_size(stored), num_heads(stored)
    if names is None or not isinstance(new, int) or isinstance(new, bool) or not width or new == width:
        return own
    out = dict(own)
    head_dim = stored.get("head_dim") or (width // heads if heads and width % heads == 0 else None)
    if names.heads not in own:
        if isinstance(head_dim, int) and head_dim > 0 and new % head_dim == 0:
            out[names.heads] = new // head_dim
    elif stored.get("head_dim") and "head_dim" not in own and isinstance(own[names.heads], int) \
            and own[names.heads] > 0 and new % own[names.heads] == 0:
        out["head_dim"] = new // own[names.heads]
    if names.mlp_width not in own and (mlp_width := default_mlp_width(report.model_type, new)):
        out[names.mlp_width] = mlp_width
    return out


def report_config(report: VarianceReport | str | os.PathLike[str], **overrides: Any) -> PretrainedConfig:
    """The config of the model a report was measured on (its stored config), ``overrides`` applied.

    A new width keeps the report's head dimension unless the heads are given, and a family whose MLP width follows
    the hidden size (Llama: 8/3) gets the MLP width of the new size unless it is given.

    Args:
        report: a `VarianceReport`, a report folder or file, a bundled report's name, or a hub id.
        overrides: config entries to change, under the config's own names or the library's size names
            (``n_layer``, ``n_embd``, ``n_head``, ``n_kv_heads``, ``n_positions``, ``intermediate_size``).

    Raises:
        ReportError: the report cannot be loaded or keeps no model config. ConfigError: an unknown override.
    """
    loaded = load_report(report)
    if "model_type" in overrides:
        raise ConfigError(f"model_type cannot be overridden (the report was measured on {loaded.model_type!r}); "
                          "override config entries such as the depth, or build another model with hv.from_config")
    if not loaded.config or loaded.model_type == "unknown":
        raise ReportError(f"{loaded.source_description} keeps no model config, so its architecture is unknown; "
                          "build the model yourself and use hv.from_config(config, rule='optimal:report=...')")
    own = _follow_width(loaded, _own_names(loaded.model_type, overrides))
    return config_from_dict(loaded.model_type, loaded.config, **own)


def from_report(
    report: VarianceReport | str | os.PathLike[str], seed: int | None = None, *, width_transfer: str | None = None,
    **config_overrides: Any,
) -> PreTrainedModel:
    """A model with the report's architecture (its stored config), initialised from it with s0^2 = V(W).

    Args:
        report (`VarianceReport`, `str` or `os.PathLike`): a report, or a report folder, a ``steady_state.json`` /
            ``variance.safetensors`` file, the name of a report bundled with the package, or a hub id.
        seed (`int`, *optional*): makes the weights deterministic.
        width_transfer (`str`, *optional*): ``"fan-in"``, ``"copy"``, or ``"fit"`` / ``"fit-pooled"`` (a
            multi-width report): needed when the overrides change the width; V(W) is then moved to the new fans
            (`hf_varinit.init.transfer`). A new width keeps the report's head dimension (`report_config`).
        config_overrides: config entries to change, under the config's own names or the library's size names
            (``n_layer=24``, ``n_embd=256``, ``n_head=8``...). A changed depth maps V(W) by relative depth (asking
            for another depth is the request); a changed width needs ``width_transfer``; another tensor shape (the
            vocabulary, the positions) is refused.

    Raises:
        ReportError: the report cannot be loaded, keeps no model config, or does not fit the overridden config.
        ConfigError: an override the config does not have.

    Example:
        >>> model = hv.from_report("gpt2-12l-tiny-qkv-dynamics", seed=0, n_layer=24)  # doctest: +SKIP
        >>> wider = hv.from_report("gpt2-12l-tiny-qkv-dynamics", n_embd=256, width_transfer="fan-in")  # doctest: +SKIP
    """
    loaded = load_report(report)
    config = report_config(loaded, **config_overrides)
    depth = num_layers(config)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ConfigError(f"from_report: a depth of {depth!r} layers is invalid; give a positive number of layers")
    if width_transfer is not None and width_transfer not in WIDTH_TRANSFERS:
        raise ConfigError(f"from_report: width_transfer={width_transfer!r} is invalid; valid choices: "
                          f"{', '.join(WIDTH_TRANSFERS)} (or None for the report's own width)")
    measured, width = hidden_size(loaded.config), hidden_size(config)
    if width_transfer is None and measured and width and measured != width:
        raise ReportError(f"from_report: the report was measured at width {measured}, the model asked for has "
                          f"{width}; pass width_transfer='fan-in' (or 'fit' with a multi-width report) to move V(W) "
                          "to the new width, or keep the report's width")
    source = {"loaded": report} if isinstance(report, VarianceReport) else {"report": os.fspath(report)}
    depth_changed = loaded.n_layer is not None and depth != loaded.n_layer
    rule = OptimalRule(**source, allow_depth_interpolation=depth_changed, width_transfer=width_transfer)
    try:
        return from_config(config, rule, seed=seed)
    except ValueError as exc:  # the model refuses the overridden config (e.g. a width its heads do not divide)
        if isinstance(exc, HFVarInitError) or not config_overrides:
            raise
        raise ConfigError(f"from_report: the report's model with {config_overrides} cannot be built: {exc}") from None


def recipe_mismatch(report: VarianceReport, optimizer: str | None = None, lr: float | None = None) -> str | None:
    """A note when the run to initialise uses another optimizer (or lr) than the one ``report`` was measured under;
    None when they agree or the report does not say."""
    return recipe_note(report.recipe, optimizer, lr)


def spec_recipe_note(rule: Any, optimizer: str | None = None, lr: float | None = None) -> str | None:
    """`recipe_mismatch` for a rule spec: the note when ``rule`` reads a report measured under another optimizer or
    lr, else None (also for rules that read no report)."""
    rule = get_rule(rule)
    if not isinstance(rule, OptimalRule) or rule.variances is not None:
        return None
    table = rule.table()
    return recipe_note(table.recipe, optimizer, lr)


__all__ = ["from_report", "recipe_mismatch", "report_config", "spec_recipe_note"]
