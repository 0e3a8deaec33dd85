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

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from hf_varinit.init.patch import PlanRow

# --model name -> model_type (the names are the CLI's; the table behind them is `hf_varinit.arch`)
MLP_TYPE = "varinit_mlp"
MODELS = {"gpt2": "gpt2", "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "bert": "bert",
          "gpt_neox": "gpt_neox", "mlp": MLP_TYPE}
# the size flags of `plan`, and the `build_config` option each one sets
_SIZE_FLAGS = {"n_layer": "n_layer", "n_embd": "n_embd", "n_head": "n_head", "n_kv_heads": "n_kv_heads",
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

    from hf_varinit.arch import build_config, check_config_sizes, config_options, default_mlp_width

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
    parser.add_argument("--vocab-size", type=int, help="vocabulary size (default: the model's)")
    parser.add_argument("--input-size", type=int, help="MLP input features (default: the MLP's)")
    parser.add_argument("--n-labels", type=int, help="MLP classes (default: the MLP's)")
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


def _report_config(args: argparse.Namespace) -> PretrainedConfig:
    """The config of the model ``--report`` was measured on; sizes are the report's, so size flags are refused."""
    from hf_varinit.report.optimal import report_config

    if args.model is not None:
        raise ConfigError(f"--model {args.model} and --report {args.report} both give the model; use one (--report "
                          "plans the model the report was measured on)")
    sizes = [flag for flag in _SIZE_FLAGS if getattr(args, flag, None) is not None]
    if sizes:
        raise ConfigError(f"{_flags(sizes)} do(es) not apply with --report: the sizes are the report's; to plan "
                          f"another size, use --model with size flags and --rule "
                          f"'optimal:report={args.report},allow-depth-interpolation' (another depth) or "
                          f"'optimal:report={args.report},width-transfer=fan-in' (another width and depth)")
    return report_config(args.report)


def _report_header(rule, args: argparse.Namespace) -> str:
    """Lines naming the recipe of an optimal rule's report, and a mismatch with ``--optimizer`` / ``--lr``."""
    from hf_varinit.init.rules import get_rule
    from hf_varinit.report.optimal import OptimalRule, recipe_mismatch
    from hf_varinit.report.report import VarianceReport
    from hf_varinit.report.transfer import describe_recipe

    parsed = get_rule(rule)
    if not isinstance(parsed, OptimalRule) or parsed.variances is not None:
        return ""
    report = parsed.loaded or VarianceReport.load(parsed.report)
    lines = [f"# report {parsed.report or report.origin}: measured under {describe_recipe(report.recipe)}"]
    if report.transfer is not None:
        lines.append(f"# runs at widths {report.transfer.widths}, depths {report.transfer.depths}")
    mismatch = recipe_mismatch(report, optimizer=args.optimizer, lr=args.lr)
    if mismatch:
        lines.append(f"# note: {mismatch}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[PlanRow]:
    import torch
    import transformers

    from hf_varinit.init.patch import PlanRow, from_config, init_plan

    if args.report is not None:
        config, described = _report_config(args), f"the model of report {args.report}"
        rule = args.rule or f"optimal:report={args.report}"
    else:
        described = f"--model {args.model or 'gpt2'}"
        config = plan_config(args.model or "gpt2", n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                             n_kv_heads=args.n_kv_heads, vocab_size=args.vocab_size, input_size=args.input_size,
                             n_labels=args.n_labels)
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
