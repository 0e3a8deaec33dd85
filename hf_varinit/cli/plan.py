"""`hf-varinit plan`: print what std every tensor (or Q/K/V slice) of a model would get under a rule."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence

import torch
from transformers import AutoConfig

from hf_varinit.errors import ConfigError
from hf_varinit.init.patch import PlanRow, from_config, init_plan
from hf_varinit.models import VarInitMLPConfig

# model name -> (model_type, {CLI option -> config attribute})
MODEL_OPTIONS = {
    "gpt2": ("gpt2", {"n_layer": "n_layer", "n_embd": "n_embd", "n_head": "n_head", "vocab_size": "vocab_size"}),
    "llama": (
        "llama",
        {"n_layer": "num_hidden_layers", "n_embd": "hidden_size", "n_head": "num_attention_heads",
         "n_kv_heads": "num_key_value_heads", "vocab_size": "vocab_size"},
    ),
    "mistral": ("mistral", {"n_layer": "num_hidden_layers", "n_embd": "hidden_size",
                            "n_head": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
                            "vocab_size": "vocab_size"}),
    "qwen2": ("qwen2", {"n_layer": "num_hidden_layers", "n_embd": "hidden_size",
                        "n_head": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
                        "vocab_size": "vocab_size"}),
    "bert": ("bert", {"n_layer": "num_hidden_layers", "n_embd": "hidden_size", "n_head": "num_attention_heads",
                      "vocab_size": "vocab_size"}),
    "gpt_neox": ("gpt_neox", {"n_layer": "num_hidden_layers", "n_embd": "hidden_size",
                              "n_head": "num_attention_heads", "vocab_size": "vocab_size"}),
    "mlp": ("varinit_mlp", {"input_size": "input_size", "n_labels": "num_labels"}),
}


def build_config(model: str, **options):
    """A config for ``model`` (a name of `MODEL_OPTIONS` or a local / hub config path) with the given sizes."""
    options = {k: v for k, v in options.items() if v is not None}
    if model in MODEL_OPTIONS:
        valid = set(MODEL_OPTIONS[model][1]) | ({"n_layer", "n_embd"} if model == "mlp" else set())
        ignored = sorted(set(options) - valid)
        if ignored:
            flags = ", ".join("--" + k.replace("_", "-") for k in ignored)
            raise ConfigError(f"{flags} do(es) not apply to --model {model}; its options: "
                              f"{', '.join('--' + k.replace('_', '-') for k in sorted(valid))}")
    if model == "mlp":
        depth, width = options.pop("n_layer", 3), options.pop("n_embd", 256)
        kwargs = {MODEL_OPTIONS["mlp"][1][k]: v for k, v in options.items() if k in MODEL_OPTIONS["mlp"][1]}
        return VarInitMLPConfig(hidden_sizes=[width] * depth, **kwargs)
    if model not in MODEL_OPTIONS:
        try:
            config = AutoConfig.from_pretrained(model)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--model {model!r} is neither a known model ({', '.join(MODEL_OPTIONS)}) nor a loadable config "
                f"folder or hub id: {exc}"
            ) from None
        return config
    model_type, mapping = MODEL_OPTIONS[model]
    if "n_embd" in options and "n_head" not in options:
        options["n_head"] = max(1, options["n_embd"] // 64)  # head dim 64
    kwargs = {mapping[k]: v for k, v in options.items() if k in mapping}
    if "n_embd" in options and model_type != "gpt2":
        ratio = 8 / 3 if model_type in ("llama", "mistral", "qwen2") else 4
        kwargs["intermediate_size"] = int(ratio * options["n_embd"] + 7) // 8 * 8
    try:
        return AutoConfig.for_model(model_type, **kwargs)
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


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="gpt2",
                        help=f"one of {', '.join(MODEL_OPTIONS)}, or a config folder / hub id")
    parser.add_argument("--rule", default="hf", help="init rule spec, e.g. kaiming, 'normal:std=0.02'")
    parser.add_argument("--n-layer", type=int, help="number of blocks (MLP: hidden layers)")
    parser.add_argument("--n-embd", type=int, help="hidden size (MLP: width)")
    parser.add_argument("--n-head", type=int, help="attention heads")
    parser.add_argument("--n-kv-heads", type=int, help="key/value heads (Llama family)")
    parser.add_argument("--vocab-size", type=int, help="vocabulary size")
    parser.add_argument("--input-size", type=int, help="MLP input features")
    parser.add_argument("--n-labels", type=int, help="MLP classes")
    parser.add_argument("--head", choices=("lm", "base", "seq-cls", "token-cls"), default="lm",
                        help="which model class: LM head (default), base model, or a classification head")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")


_HEADS = {"lm": None, "base": "AutoModel", "seq-cls": "AutoModelForSequenceClassification",
          "token-cls": "AutoModelForTokenClassification"}


def run_plan(args: argparse.Namespace) -> list[PlanRow]:
    import transformers

    config = build_config(args.model, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                          n_kv_heads=args.n_kv_heads, vocab_size=args.vocab_size, input_size=args.input_size,
                          n_labels=args.n_labels)
    head = "base" if args.model == "mlp" else args.head
    auto = getattr(transformers, _HEADS[head]) if _HEADS[head] else None  # None: from_config picks the LM head
    try:
        with torch.device("meta"):  # shapes only: no memory, no init work
            model = from_config(config, "hf", model_class=auto)
    except ValueError as exc:
        raise ConfigError(f"cannot build --model {args.model} with these sizes: {exc}") from None
    rows = init_plan(model, args.rule)
    if args.format == "json":
        print(json.dumps([r._asdict() for r in rows], indent=1))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(PlanRow._fields)
        writer.writerows(rows)
    else:
        print(format_table(rows))
    return rows
