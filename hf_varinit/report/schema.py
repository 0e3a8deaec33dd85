"""The schema of ``steady_state.json``: every field a report reads, checked before anything uses it.

`validate_steady_state` walks a parsed document and raises a `ReportError` naming the first offending field by
its path and saying what it should be, e.g.
``steady_state.json: tensors['layers.0.q'].v_w is 'abc'; expected a number``. Fields it does not know are allowed
(a newer writer may add some). It checks types and ranges only; the meaning (a V(W) > 0, the analysis options'
ranges) is checked where it is used. `parse_steady_state` turns a checked document into `VarianceReport`'s fields.

Document (``format = "hf_varinit.steady_state"``, ``format_version = 1``)::

    model_type: str | null        n_layer: int >= 1 | null        rule, title, license, base_model, source,
    config: {entry: value} | null (sizes such as n_embd: int >= 1)   dataset_description, checkpoint: str | null
    options: {name: value} | null datasets: [str] | null           recipe, transfer: {...} | null
    tensors: {key: {role: str|null, layer: int >= 0|null, stationary: bool|null, v_w: number|null,
                    window: [int, int]|null, spread, drift, band, init_var, ratio, window_lr_share,
                    window_lr_fraction: number|null, equilibration_step: int|null, reason: str|null}}  (non-empty)
    layers: {"<int>": {equilibration_step: int|null}} | null
    recipe: {optimizer, lr_schedule: str|null, lr, weight_decay, momentum: number|null,
             warmup_steps, max_steps, batch_size: int >= 0|null} | null   (`RunRecipe.to_dict`; a file written
             before it has optimizer, lr, lr_schedule and warmup_steps, and the others are unknown)
"""

from __future__ import annotations

from typing import Any

from hf_varinit.arch.config import check_config_sizes, num_layers
from hf_varinit.arch.keys import parse_layer_key
from hf_varinit.errors import ConfigError, ReportError, shown
from hf_varinit.init.transfer import TransferFit
from hf_varinit.io_utils import JsonChecker
from hf_varinit.record.recipe import RunRecipe
from hf_varinit.report.options import AnalysisOptions
from hf_varinit.report.publish import is_repo_id
from hf_varinit.report.steady_state import KeyAnalysis

__all__ = ["STEADY_FILENAME", "STEADY_FORMAT", "STEADY_VERSION", "parse_steady_state", "validate_steady_state"]

STEADY_FORMAT = "hf_varinit.steady_state"  # a file-format id, not a module path: never renamed
STEADY_VERSION = 1
STEADY_FILENAME = "steady_state.json"

# field -> kind of `JsonChecker.KINDS` (each may also be null)
TOP_LEVEL = {"model_type": "str", "n_layer": "count", "config": "object", "rule": "str", "options": "object",
             "source": "str", "datasets": "strings", "title": "str", "license": "str", "base_model": "str",
             "dataset_description": "str", "checkpoint": "str", "recipe": "object", "transfer": "object",
             "layers": "object"}
TENSOR = {"role": "str", "layer": "index", "stationary": "bool", "v_w": "number", "window": "window",
          "spread": "number", "drift": "number", "equilibration_step": "int", "band": "number", "init_var": "number",
          "ratio": "number", "reason": "str", "window_lr_share": "number", "window_lr_fraction": "number"}
RECIPE = {"optimizer": "str", "lr": "number", "lr_schedule": "str", "warmup_steps": "index", "max_steps": "index",
          "weight_decay": "number", "momentum": "number", "batch_size": "index"}
TRANSFER = {"widths": "count", "depths": "count", "sources": "str"}  # lists of these


def validate_steady_state(doc: Any, where: str = STEADY_FILENAME) -> None:
    """Check a parsed ``steady_state.json`` document against the schema above.

    Args:
        doc (`Any`): the result of ``json.loads``.
        where (`str`): what the messages name as the document (its path).

    Raises:
        ReportError: the first field of the wrong type or range, named by its path (``config.n_embd``,
            ``tensors['layers.0.q'].window``, ``layers['x']``), with the value and what it should be.
    """
    check = JsonChecker(where, ReportError)
    if not isinstance(doc, dict):
        check.fail("the document", doc, f"a JSON object (a {STEADY_FILENAME} written by hf_varinit)")
    if doc.get("format") != STEADY_FORMAT:
        check.fail("format", doc.get("format"), f"{STEADY_FORMAT!r}: is this a {STEADY_FILENAME} of hf_varinit?")
    if doc.get("format_version") not in (STEADY_VERSION, str(STEADY_VERSION)):
        check.fail("format_version", doc.get("format_version"),
                   f"{STEADY_VERSION} (this hf_varinit reads version {STEADY_VERSION}; upgrade it for newer files)")
    check.fields(doc, TOP_LEVEL)
    try:
        check_config_sizes(doc.get("config") or {})
    except ConfigError as exc:  # names the field (config field n_embd='abc' ...)
        raise ReportError(f"{where}: {exc}") from None
    _check_tensors(check, doc.get("tensors"))
    _check_config_depth(check, doc)
    if doc.get("recipe") is not None:
        check.fields(doc["recipe"], RECIPE, prefix="recipe.")
    for layer, entry in (doc.get("layers") or {}).items():
        if not layer.isdigit() or not layer.isascii():
            check.fail(f"layers[{shown(layer)}]", layer, "a layer index (a string of digits such as '0')")
        if not isinstance(entry, dict):
            check.fail(f"layers[{layer!r}]", entry, "a JSON object")
        check.field(entry, "equilibration_step", "int", f"layers[{layer!r}].equilibration_step")
    _check_transfer(check, doc.get("transfer"))


def _check_config_depth(check: JsonChecker, doc: dict) -> None:
    """The stored config's layer count must be the report's own (``n_layer``, else the layers its tensors cover):
    its model is rebuilt, layer by layer, to check shapes, so an untrusted ``n_layer: 561290`` is refused here
    rather than building half a million blocks."""
    stored = num_layers(doc.get("config") or {})
    if stored is None:
        return
    covered = [layer for layer in (parse_layer_key(k)[0] for k in doc["tensors"]) if layer is not None]
    expected = doc.get("n_layer") if doc.get("n_layer") is not None else (max(covered) + 1 if covered else None)
    if expected is not None and stored != expected:
        source = "the report's n_layer" if doc.get("n_layer") is not None else "the layers its tensors cover"
        check.fail("config (its layer count)", stored, f"{expected}, {source}; the stored config is not this report's")


def _check_tensors(check: JsonChecker, tensors: Any) -> None:
    if not isinstance(tensors, dict) or not tensors:
        check.fail("tensors", tensors, "a non-empty JSON object of tracked key -> analysis")
    for key, entry in tensors.items():
        path = f"tensors[{shown(key)}]"
        if not isinstance(entry, dict):
            check.fail(path, entry, "a JSON object (the analysis of one tensor)")
        check.fields(entry, TENSOR, prefix=path + ".")
        key_layer = parse_layer_key(key)[0]
        if key.startswith("layers.") and key_layer is None:
            check.fail(f"the key {path}", key, "'layers.<index>.<role>' with an integer index, e.g. 'layers.0.q'")
        if key_layer is not None and entry.get("layer") is not None and entry["layer"] != key_layer:
            check.fail(f"{path}.layer", entry["layer"], f"{key_layer}, the layer its key names")


def _check_transfer(check: JsonChecker, transfer: dict | None) -> None:
    if transfer is None:
        return
    for name, kind in TRANSFER.items():
        items = transfer.get(name)
        test, expected = JsonChecker.KINDS[kind]
        if items is not None and not (isinstance(items, list) and all(test(x) for x in items)):
            check.fail(f"transfer.{name}", items, f"a list, each {expected}")
    fits = transfer.get("fits")
    if fits is not None and not (isinstance(fits, dict) and all(isinstance(f, dict) for f in fits.values())):
        check.fail("transfer.fits", fits, "a JSON object of key -> fit (an object)")
    for key, fit in (fits or {}).items():
        check.fields(fit, {"c": "number", "alpha": "number"}, prefix=f"transfer.fits[{shown(key)}].")
    costs = transfer.get("source_costs")
    if costs is not None and not (isinstance(costs, list) and all(isinstance(c, dict) for c in costs)):
        check.fail("transfer.source_costs", costs, "a list of {tokens, flops} objects, one per source run")
    for i, cost in enumerate(costs or []):
        check.fields(cost, {"tokens": "index", "flops": "index"}, prefix=f"transfer.source_costs[{i}].")


def _opt(d: dict, name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    """``d[name]`` if of one of ``kinds`` (bools are not numbers), or None/default when absent."""
    value = d.get(name, default)
    if value is None or (isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)):
        return value
    raise ReportError(f"field {name!r} = {value!r} should be {' or '.join(k.__name__ for k in kinds)}")


def parse_steady_state(doc: Any) -> dict[str, Any]:
    """Validate a steady_state.json document; returns VarianceReport constructor arguments."""
    if not isinstance(doc, dict):
        raise ReportError(f"{STEADY_FILENAME} must hold a JSON object, got {type(doc).__name__}")
    if doc.get("format") != STEADY_FORMAT:
        raise ReportError(f"wrong format {doc.get('format')!r}; expected {STEADY_FORMAT!r}")
    if doc.get("format_version") not in (STEADY_VERSION, str(STEADY_VERSION)):
        raise ReportError(f"unsupported format_version {doc.get('format_version')!r}; "
                          f"expected {STEADY_VERSION}")
    raw = doc.get("tensors")
    if not isinstance(raw, dict) or not raw:
        raise ReportError("'tensors' must be a non-empty object of key -> analysis")
    num = (int, float)
    tensors = {}
    for key, t in raw.items():
        if not isinstance(t, dict):
            raise ReportError(f"tensor {key!r}: expected an object, got {type(t).__name__}")
        window = t.get("window")
        if window is not None and not (isinstance(window, list) and len(window) == 2
                                       and all(type(w) is int for w in window)):
            raise ReportError(f"tensor {key!r}: window {window!r} should be [start_step, end_step]")
        v_w = _opt(t, "v_w", num)
        tensors[key] = KeyAnalysis(
            key=key, role=_opt(t, "role", (str,)), layer=_opt(t, "layer", (int,)),
            stationary=_opt(t, "stationary", (bool,), False), v_w=None if v_w is None else float(v_w),
            window=tuple(window) if window else None, spread=_opt(t, "spread", num),
            drift=_opt(t, "drift", num), equilibration_step=_opt(t, "equilibration_step", (int,)),
            band=_opt(t, "band", num, 0.10), init_var=_opt(t, "init_var", num),
            ratio=_opt(t, "ratio", num), reason=_opt(t, "reason", (str,)),
            window_lr_share=_opt(t, "window_lr_share", num), window_lr_fraction=_opt(t, "window_lr_fraction", num),
        )
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ReportError(f"'config' should be an object, got {type(config).__name__}")
    datasets = doc.get("datasets")
    metadata = {name: doc[field] for name, field in (("source", "source"), ("dataset", "dataset_description"),
                                                   ("checkpoint", "checkpoint"), ("hub_id", "base_model"))
                if isinstance(doc.get(field), str) and doc[field]}
    stored = doc.get("recipe") if isinstance(doc.get("recipe"), dict) else {}  # the fields as written, none inferred
    metadata.update({k: v for k, v in (RunRecipe.from_dict(stored).to_dict() or {}).items() if k in stored})
    return dict(
        tensors=tensors, options=AnalysisOptions.from_dict(doc.get("options") or {}),
        model_type=_opt(doc, "model_type", (str,)), n_layer=_opt(doc, "n_layer", (int,)), config=config,
        rule=_opt(doc, "rule", (str,)), metadata=metadata, title=_opt(doc, "title", (str,)),
        datasets=[d for d in datasets if is_repo_id(d)] if isinstance(datasets, list) else None,
        license=_opt(doc, "license", (str,)), transfer=TransferFit.from_dict(doc.get("transfer")),
    )
