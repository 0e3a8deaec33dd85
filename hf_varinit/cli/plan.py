"""`hf-varinit plan`: print what std every tensor (or Q/K/V slice) of a model would get under a rule.

    hf-varinit plan --model gpt2 --n-layer 12 --n-embd 256 --rule kaiming
    hf-varinit plan --report model_cards/gpt2-12l-tiny-kaiming      # the report's model under optimal:report=...
    hf-varinit plan --model gpt2 --n-embd 256 --rule 'optimal:report=runs/gpt2-transfer,width-transfer=fit'
    hf-varinit plan --report model_cards/gpt2-12l-tiny-kaiming --optimizer sgd   # notes a recipe mismatch

With a report, a header names the recipe it was measured under; the ``note`` column says per tensor where its
V(W) comes from (source layers, source widths and the width exponent under ``width-transfer``).

torch, transformers and the library load inside `run`, so ``hf-varinit plan --help`` answers at once.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hf_varinit.errors import ConfigError, HFVarInitError
from hf_varinit.init.transfer import WIDTH_TRANSFERS

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from hf_varinit.init.patch import PlanRow

# --model name -> model_type (the names are the CLI's; the table behind them is `hf_varinit.arch`)
MLP_TYPE = "varinit_mlp"
MODELS = {"gpt2": "gpt2", "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "bert": "bert",
          "gpt_neox": "gpt_neox", "mlp": MLP_TYPE}
# the size flags of `plan`, and the `build_config` option each one sets
_SIZE_FLAGS = {"n_layer": "n_layer", "n_embd": "n_embd", "n_head": "n_head", "n_kv_heads": "n_kv_heads",
               "n_positions": "n_positions",
               "vocab_size": "vocab_size", "input_size": "input_size", "n_labels": "num_labels"}


def _flags(names) -> str:
    return ", ".join("--" + k.replace("_", "-") for k in names)


def plan_config(model: str, **options):
    """A config for ``model`` (a name of `MODELS` or a local / hub config path) with the given sizes.

    Args:
        model (`str`): ``gpt2``, ``llama``, ``mistral``, ``qwen2``, ``bert``, ``gpt_neox``, ``mlp``, or a config
            folder / hub id (then the sizes are not used).
        options: the size flags (``n_layer``, ``n_embd``, ``n_head``, ``n_kv_heads``, ``vocab_size``, ``input_size``,
            ``n_labels``); None means the default. Without ``n_head``, heads of dimension 64.
    """
    from transformers import AutoConfig

    from hf_varinit.arch.builder import build_config, config_options, default_mlp_width
    from hf_varinit.arch.config import check_config_sizes

    options = {k: v for k, v in options.items() if v is not None}
    if model not in MODELS:
        from huggingface_hub.errors import StrictDataclassError

        try:
            config = AutoConfig.from_pretrained(model)
        except (OSError, ValueError, TypeError, StrictDataclassError) as exc:  # the last: a field of the wrong type
            raise ConfigError(
                f"--model {model!r} is neither a known model ({', '.join(MODELS)}) nor a loadable config "
                f"folder or hub id: {' '.join(str(exc).split())}"  # transformers' message spans lines
            ) from None
        check_config_sizes(config)  # a width or head count of 0 would fail deep inside the model
        return config
    model_type = MODELS[model]
    applies = config_options(model_type)
    valid = sorted(flag for flag, option in _SIZE_FLAGS.items() if option in applies)
    ignored = sorted(set(options) - set(valid))
    if ignored:
        raise ConfigError(f"{_flags(ignored)} do(es) not apply to --model {model}; its options: {_flags(valid)}")
    kwargs = {_SIZE_FLAGS[k]: v for k, v in options.items()}
    if "n_embd" in kwargs and "n_head" in applies:
        kwargs.setdefault("n_head", max(1, kwargs["n_embd"] // 64))  # head dim 64
        kwargs["intermediate_size"] = default_mlp_width(model_type, kwargs["n_embd"])
    try:
        return build_config(model_type, **kwargs)
    except HFVarInitError:
        raise
    except ValueError as exc:
        raise ConfigError(f"--model {model} with {options}: {exc}") from None


def format_table(rows: Sequence[PlanRow]) -> str:
    """A fixed-width table of plan rows (name, role, layer, slice, fan_in, fan_out, distribution, std)."""
    header = ("name", "role", "layer", "slice", "fan_in", "fan_out", "distribution", "std", "note")
    cells = [header] + [
        (r.name, r.role, "" if r.layer is None else str(r.layer), r.slice or "", str(r.fan_in), str(r.fan_out),
         r.distribution, "" if r.std is None else f"{r.std:.6g}", r.note)
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(header))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help=f"one of {', '.join(MODELS)}, or a config folder / hub id (default: gpt2; with --report, "
                             "the report's model)")
    parser.add_argument("--report", default=None, metavar="DIR",
                        help="a variance report (folder, file or hub id): plan the model it was measured on, under "
                             "optimal:report=DIR unless --rule is given (default: none)")
    parser.add_argument("--rule", default=None,
                        help="init rule spec, e.g. kaiming, 'normal:std=0.02' (default: hf; with --report, "
                             "optimal:report=DIR)")
    parser.add_argument("--n-layer", type=int, help="number of blocks (MLP: hidden layers) (default: the model's)")
    parser.add_argument("--n-embd", type=int, help="hidden size (MLP: width) (default: the model's)")
    parser.add_argument("--n-head", type=int, help="attention heads (default: head dimension 64)")
    parser.add_argument("--n-kv-heads", type=int, help="key/value heads, Llama family (default: --n-head)")
    parser.add_argument("--n-positions", type=int, help="maximum positions (default: the model's)")
    parser.add_argument("--vocab-size", type=int, help="vocabulary size (default: the model's)")
    parser.add_argument("--input-size", type=int, help="MLP input features (default: the MLP's)")
    parser.add_argument("--n-labels", type=int, help="MLP classes (default: the MLP's)")
    parser.add_argument("--allow-depth-interpolation", action="store_true",
                        help="with --report at another --n-layer: map V(W) by relative depth (the rule option "
                             "allow-depth-interpolation)")
    parser.add_argument("--width-transfer", choices=WIDTH_TRANSFERS, default=None,
                        help="with --report at another --n-embd: move V(W) to the new fans (fan-in), by the width law "
                             "of a multi-width report (fit: per tensor; fit-pooled: one shrunk exponent per role), or "
                             "unchanged (copy); also maps depth (default: none)")
    parser.add_argument("--head", choices=("lm", "base", "seq-cls", "token-cls"), default="lm",
                        help="which model class: LM head, base model, or a classification head (default: %(default)s)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="output format (default: %(default)s)")
    parser.add_argument("--optimizer", default=None,
                        help="the optimizer of the run to initialise: noted when the report's differs (default: none)")
    parser.add_argument("--lr", type=float, default=None,
                        help="the learning rate of the run to initialise: noted when the report's differs")


_HEADS = {"lm": None, "base": "AutoModel", "seq-cls": "AutoModelForSequenceClassification",
          "token-cls": "AutoModelForTokenClassification"}


# the size flags `plan --report` takes: the report's own architecture at another size
_REPORT_SIZE_FLAGS = ("n_layer", "n_embd", "n_head", "n_kv_heads", "n_positions", "vocab_size")


def _report_config(args: argparse.Namespace) -> PretrainedConfig:
    """The config of the model ``--report`` was measured on, at the sizes the size flags give (`report_config`: a
    new width keeps the report's head dimension unless ``--n-head`` is given, and a Llama-family MLP follows it)."""
    from hf_varinit.report.next_model import report_config

    if args.model is not None:
        raise ConfigError(f"--model {args.model} and --report {args.report} both give the model; use one (--report "
                          "plans the model the report was measured on, at other sizes with the size flags)")
    refused = [flag for flag in _SIZE_FLAGS if flag not in _REPORT_SIZE_FLAGS and getattr(args, flag, None)]
    if refused:
        raise ConfigError(f"{_flags(refused)} do(es) not apply with --report; its size flags: "
                          f"{_flags(_REPORT_SIZE_FLAGS)}")
    sizes = {flag: getattr(args, flag) for flag in _REPORT_SIZE_FLAGS if getattr(args, flag, None) is not None}
    return report_config(args.report, **sizes)


def _report_rule(args: argparse.Namespace) -> str:
    """The rule of ``plan --report``: ``--rule``, else ``optimal:report=R``; the transfer flags are appended."""
    options = (["allow-depth-interpolation"] if args.allow_depth_interpolation else []) + \
              ([f"width-transfer={args.width_transfer}"] if args.width_transfer else [])
    rule = args.rule or f"optimal:report={args.report}"
    if options and not rule.startswith("optimal:"):
        raise ConfigError(f"--allow-depth-interpolation / --width-transfer apply to the optimal rule, not --rule "
                          f"{rule!r}; drop them or use an 'optimal:report=...' rule")
    return ",".join([rule, *options])


def _report_header(rule, args: argparse.Namespace) -> str:
    """Lines naming the recipe of an optimal rule's report, and a mismatch with ``--optimizer`` / ``--lr``."""
    from hf_varinit.init.optimal import OptimalRule
    from hf_varinit.init.rules import get_rule
    from hf_varinit.record.recipe import RunRecipe
    from hf_varinit.report.transfer import recipe_note

    parsed = get_rule(rule)
    if not isinstance(parsed, OptimalRule) or parsed.variances is not None:
        return ""
    table = parsed.table()
    lines = [f"# report {table.source}: measured under {(table.recipe or RunRecipe()).describe()}"]
    if table.transfer is not None:
        lines.append(f"# runs at widths {table.transfer.widths}, depths {table.transfer.depths}")
    mismatch = recipe_note(table.recipe, optimizer=args.optimizer, lr=args.lr)
    if mismatch:
        lines.append(f"# note: {mismatch}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[PlanRow]:
    import torch
    import transformers

    from hf_varinit.init.patch import PlanRow, from_config, init_plan

    if args.report is not None:
        config, described = _report_config(args), f"the model of report {args.report}"
        rule = _report_rule(args)
    else:
        described = f"--model {args.model or 'gpt2'}"
        if args.allow_depth_interpolation or args.width_transfer:
            raise ConfigError("--allow-depth-interpolation / --width-transfer apply with --report; with --model give "
                              "them in the rule, e.g. --rule 'optimal:report=R,width-transfer=fan-in'")
        config = plan_config(args.model or "gpt2", **{flag: getattr(args, flag) for flag in _SIZE_FLAGS})
        rule = args.rule or "hf"
    head = "base" if config.model_type == MLP_TYPE else args.head
    auto = getattr(transformers, _HEADS[head]) if _HEADS[head] else None  # None: from_config picks the LM head
    try:
        with torch.device("meta"):  # shapes only: no memory, no init work
            model = from_config(config, "hf", model_class=auto)
    except ValueError as exc:
        raise ConfigError(f"cannot build {described} with these sizes: {exc}") from None
    rows = init_plan(model, rule)
    header = _report_header(rule, args)
    if header:
        print(header, file=sys.stdout if args.format == "table" else sys.stderr)
    if args.format == "json":
        print(json.dumps([r._asdict() for r in rows], indent=1))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(PlanRow._fields)
        writer.writerows(rows)
    else:
        print(format_table(rows))
    return rows
