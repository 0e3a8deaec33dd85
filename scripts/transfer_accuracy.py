"""How well V(W) measured on proxies predicts a target's own V(W): width transfer (fan-in, fit) and depth mapping.

Usage:
    python scripts/transfer_accuracy.py --target runs/lm-study/pilots/w256 \\
        --proxies runs/lm-study/pilots/w64 runs/lm-study/pilots/w128 \\
        --depth-proxies runs/lm-study/pilots/d4 runs/lm-study/pilots/d6 --output runs/lm-study/transfer-accuracy

Every folder is a run of `hf-varinit pretrain` (holding ``variance.safetensors``); one whose ``final/`` does not
exist yet (still training) is skipped with a message. Modes, each run through the optimal rule itself
(`OptimalRule(...)` planned with `hv.init_plan` on the target model built on the meta device):

* ``fan-in from <proxy>``: ``width-transfer=fan-in`` from each proxy (also maps depth when it differs);
* ``fit over <proxies>``: ``width-transfer=fit`` from the multi-run report of all width proxies (>= 2 widths);
* ``fit-pooled over <proxies>``: ``width-transfer=fit-pooled`` from the same report (one shrunk exponent per role);
* ``depth from <proxy>``: ``allow-depth-interpolation`` from each shallower proxy of the target's width (of another
  width: ``width-transfer=fan-in`` too);
* ``--rules SPEC ...``: any optimal-rule spec, scored as given (a bundled report at a size it was never measured
  at: ``optimal:report=gpt2-12l-lm-study-w64-w128,width-transfer=fit-pooled``).

Baselines, scored the same way: ``copy from <proxy>`` (``width-transfer=copy``: the nearest proxy's V(W) unchanged,
alpha = 0), ``init variance`` (what the target's own init rule, e.g. ``gpt2``, gives each tensor) and, with
``--replica RUN`` (the target's recipe at another seed; or a committed card's ``per_tensor.csv``, whose ``measured``
column is that card's target), ``replica <run>``: the noise floor, the error of a second measurement of the target
itself. ``verdicts.md`` says per role whether each width mode beats each baseline by more
than the floor.

``--rescore model_cards/<card>`` recomputes the summary and verdicts from a committed ``per_tensor.csv`` (runs no
longer on disk): the copy baseline is rebuilt from the ``fan-in from <proxy>`` rows (V(W) of the proxy = prediction x
fan_in(target) / fan_in(proxy)), the ``fit-pooled`` mode from the same proxy values (`pooled_fit_table`, as the rule
applies it) and the init variance from the ``gpt2`` rule (initializer_range 0.02, residual projections / 2·n_layer).

The target's measured V(W) is its report's: the window mean when stationary, else its last recorded value (the
CSV's ``measured_stationary`` column says which). Writes ``README.md`` (per mode and role: median and max
|log(pred / measured)|, and the exact command) and ``per_tensor.csv`` into ``--output``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import pandas as pd
import torch

import hf_varinit as hv
from hf_varinit.arch.config import hidden_size
from hf_varinit.arch.keys import parse_layer_key
from hf_varinit.init.optimal import OptimalRule
from hf_varinit.init.rules import get_rule
from hf_varinit.init.transfer import TransferFit, pooled_fit_table
from hf_varinit.io_utils import atomic_folder
from hf_varinit.report.multi_run import combine_reports
from hf_varinit.report.next_model import report_config
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.transfer import fit_power_law

ROLE_ORDER = ("q", "k", "v", "attn_out", "mlp_gate", "mlp_in", "mlp_out", "embedding", "position", "head")


def finished(folders: list[str]) -> list[Path]:
    """The folders whose run has finished (``final/`` exists); the others are named and skipped."""
    out = []
    for folder in map(Path, folders):
        if (folder / "final").is_dir() and (folder / "variance.safetensors").is_file():
            out.append(folder)
        else:
            print(f"skipped {folder}: no final/ (still training?) or no variance.safetensors", file=sys.stderr)
    return out


def load(folder: Path) -> VarianceReport:
    report = VarianceReport.from_stats(folder / "variance.safetensors")
    report.origin = str(folder)
    return report


def predicted(rule: OptimalRule, model) -> dict[str, tuple[float, str]]:
    """key -> (V(W) the rule gives, its note) for every tracked tensor the rule reads from its report."""
    return {r.key: (r.std ** 2, r.note) for r in hv.init_plan(model, rule)
            if r.std is not None and not r.note.startswith("fallback")}


def modes(target: VarianceReport, proxies: list[Path], depth_proxies: list[Path]) -> dict[str, OptimalRule]:
    width = hidden_size(target.config)
    out = {f"fan-in from {p.name}": OptimalRule(loaded=load(p), width_transfer="fan-in") for p in proxies}
    if proxies:
        nearest = max(proxies, key=lambda p: hidden_size(load(p).config) or 0)
        out[f"copy from {nearest.name}"] = OptimalRule(loaded=load(nearest), width_transfer="copy")
    widths = {hidden_size(load(p).config) for p in proxies}
    if len(widths) >= 2:
        combined = combine_reports([load(p) for p in proxies])
        names = ",".join(p.name for p in proxies)
        out[f"fit over {names}"] = OptimalRule(loaded=combined, width_transfer="fit")
        out[f"fit-pooled over {names}"] = OptimalRule(loaded=combined, width_transfer="fit-pooled")
    for p in depth_proxies:
        report = load(p)
        if report.n_layer and target.n_layer and report.n_layer < target.n_layer:
            same_width = hidden_size(report.config) == width
            out[f"depth from {p.name}"] = (OptimalRule(loaded=report, allow_depth_interpolation=True) if same_width
                                           else OptimalRule(loaded=report, width_transfer="fan-in"))
    return out


def replica_values(path: str) -> tuple[str, dict[str, float]]:
    """The target measured at another seed: a run folder, or a committed card's ``per_tensor.csv`` (its
    ``measured`` column, the V(W) of that card's target)."""
    if path.endswith(".csv"):
        frame = pd.read_csv(path).drop_duplicates("key")
        card = Path(path).parent  # name the card, not only its subfolder (transfer-accuracy/)
        return f"replica {card.parent.name}/{card.name}", dict(zip(frame["key"], frame["measured"]))
    (folder,) = finished([path]) or sys.exit(f"the replica {path} has not finished")
    return f"replica {folder.name}", load(folder).variances(nonstationary="last")


def compare(target: VarianceReport, rules: dict[str, OptimalRule],
            replica: tuple[str, dict[str, float]] | None = None) -> pd.DataFrame:
    with torch.device("meta"):  # shapes only
        model = hv.from_config(report_config(target), "hf")
    measured = target.variances(nonstationary="last")
    init_rule = target.rule or "gpt2"  # the rule the target's own run started from
    baselines = {"init variance": {r.key: (r.std ** 2, f"{init_rule} rule") for r in hv.init_plan(model, init_rule)
                                   if r.key and r.std}}
    if replica is not None:
        baselines[replica[0]] = {k: (v, "the target at another seed") for k, v in replica[1].items()}
    rows = []
    for mode, table in [*((m, predicted(rule, model)) for m, rule in rules.items()), *baselines.items()]:
        for key, (v, note) in table.items():
            if key in measured:
                rows.append({"mode": mode, "key": key, "role": parse_layer_key(key)[1], "predicted": v,
                             "measured": measured[key], "abs_log_error": abs(math.log(v / measured[key])),
                             "measured_stationary": target.tensors[key].stationary, "note": note})
    return pd.DataFrame(rows)


def summary(per_tensor: pd.DataFrame) -> pd.DataFrame:
    grouped = per_tensor.groupby(["mode", "role"], sort=False)["abs_log_error"]
    table = grouped.agg(median="median", max="max", tensors="count").reset_index()
    table["median error %"] = (table["median"].map(math.exp) - 1) * 100
    order = {r: i for i, r in enumerate(ROLE_ORDER)}
    table["_order"] = table["role"].map(lambda r: order.get(r, len(order)))
    return table.sort_values(["mode", "_order"], kind="stable").drop(columns="_order")


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Per role and width mode (fan-in, fit, a ``--rules`` spec): its median error % against each baseline (copy,
    init variance), and whether it is lower by more than the noise floor (the replica's median error % of that role,
    when measured)."""
    errors = table.pivot_table(index="role", columns="mode", values="median error %", sort=False)
    floors = [m for m in errors.columns if m.startswith("replica")]
    baselines = [m for m in errors.columns
                 if m.startswith("copy") or "width-transfer=copy" in m or m == "init variance"]
    rows = []
    for mode in (m for m in errors.columns if m.startswith(("fit", "fan-in", "optimal:")) and m not in baselines):
        for role, err in errors[mode].items():
            floor = errors.loc[role, floors[0]] if floors else math.nan
            row = {"mode": mode, "role": role, "error %": err, "floor %": floor}
            for base in baselines:  # no floor: a gap below the table's precision (0.05 points) is no gap
                gap, margin = errors.loc[role, base] - err, floor if floors else 0.05
                tie = "within floor" if floors else "equal"
                word = "better" if gap > margin else "worse" if gap < -margin else tie
                row[f"vs {base}"] = f"{word} ({errors.loc[role, base]:.3g})"
            rows.append(row)
    return pd.DataFrame(rows)


def rescored(per_tensor: pd.DataFrame) -> pd.DataFrame:
    """A committed ``per_tensor.csv`` with the copy and init-variance baselines rebuilt from its own rows."""
    fan_in = per_tensor[per_tensor["mode"].str.startswith("fan-in from ")]
    widths = fan_in["note"].str.extract(r"from width (\d+)")[0].astype(float)
    nearest = fan_in[widths == widths.max()].copy()
    layers = per_tensor["key"].str.extract(r"^layers\.(\d+)\.")[0].dropna().astype(int)
    n_layer = int(layers.max()) + 1 if len(layers) else 1
    # fan-in scaled the proxy's V(W) by fan_in(proxy) / fan_in(target) = width ratio (embeddings: vocab / vocab = 1)
    target_width = float(per_tensor.attrs["target_width"])
    ratio = nearest["role"].map(lambda r: 1.0 if r in ("embedding", "position") else target_width / widths.max())
    copy = nearest.assign(mode=f"copy from {nearest['mode'].iloc[0].removeprefix('fan-in from ')}",
                          predicted=nearest["predicted"] * ratio, note="rebuilt: alpha=0")
    init = per_tensor.drop_duplicates("key").assign(mode="init variance", note="gpt2 rule, initializer_range 0.02")
    init["predicted"] = init["role"].map(lambda r: 0.02 ** 2 / (2 * n_layer) if r in ("attn_out", "mlp_out")
                                         else 0.02 ** 2)
    rebuilt = ("copy from", "init variance", "fit-pooled")
    kept = per_tensor[~per_tensor["mode"].str.startswith(rebuilt)]
    out = pd.concat([kept, copy, pooled_rows(fan_in, widths, target_width), init])
    out["abs_log_error"] = (out["predicted"] / out["measured"]).map(lambda x: abs(math.log(x)))
    return out


def pooled_rows(fan_in: pd.DataFrame, widths: pd.Series, target_width: float) -> pd.DataFrame:
    """``fit-pooled`` rows rebuilt from the proxies' V(W) that the ``fan-in from <proxy>`` rows carry."""
    emb = fan_in["role"].isin(("embedding", "position"))
    proxies = fan_in.assign(width=widths.astype(int),
                            v_proxy=fan_in["predicted"].where(emb, fan_in["predicted"] * target_width / widths))
    fits = {}
    for key, rows in proxies.groupby("key", sort=False):
        fit = fit_power_law(rows["width"].tolist(), rows["v_proxy"].tolist())  # every role's fan_in is ∝ the width
        fit.variable = "width"
        fits[key] = fit
    names = ",".join(m.removeprefix("fan-in from ") for m in sorted(fan_in["mode"].unique(), key=len))
    fit = TransferFit(widths=sorted(proxies["width"].unique().tolist()), depths=[], sources=[], n_layer=None,
                      fits=fits)
    table = pooled_fit_table(fit, {k: int(target_width) for k in fits}, None, int(target_width))
    measured = fan_in.drop_duplicates("key").set_index("key")
    return pd.DataFrame([{"mode": f"fit-pooled over {names}", "key": k, "role": measured.loc[k, "role"],
                          "predicted": v, "measured": measured.loc[k, "measured"],
                          "measured_stationary": measured.loc[k, "measured_stationary"], "note": f"rebuilt: {note}"}
                         for k, (v, note) in table.items()])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=None, help="the target run folder")
    parser.add_argument("--proxies", nargs="*", default=[], help="narrower runs (width transfer)")
    parser.add_argument("--depth-proxies", nargs="*", default=[], help="shallower runs (depth mapping)")
    parser.add_argument("--rules", nargs="*", default=[], metavar="SPEC",
                        help="optimal-rule specs to score as well, e.g. a bundled report with its width transfer")
    parser.add_argument("--replica", default=None,
                        help="the target's recipe at another seed, the noise floor: a run folder, or the "
                             "per_tensor.csv of a committed card whose target it is")
    parser.add_argument("--rescore", default=None, metavar="CARD",
                        help="recompute summary and verdicts of a committed card from its per_tensor.csv, writing "
                             "baselines.md and verdicts.md into it (needs --target-width)")
    parser.add_argument("--target-width", type=int, default=None, help="with --rescore: the target's n_embd")
    parser.add_argument("--output", default=None, help="report folder to write (under runs/)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/transfer_accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    if args.rescore:
        per_tensor = pd.read_csv(Path(args.rescore) / "per_tensor.csv")
        per_tensor.attrs["target_width"] = args.target_width or sys.exit("--rescore needs --target-width")
        table = summary(rescored(per_tensor))
        verdict = verdicts(table)
        for name, frame in (("baselines.md", table), ("verdicts.md", verdict)):
            text = (f"# {name[:-3]}: {args.rescore}\n\nRecomputed from `per_tensor.csv` (no noise floor: no replica "
                    f"was measured for this card).\n\n{frame.to_markdown(index=False, floatfmt='.3g')}\n\n"
                    f"Command:\n\n```\n{command}\n```\n")
            (Path(args.rescore) / name).write_text(text)
        print(verdict.to_string(index=False))
        return
    if not args.output:
        sys.exit("--output is required (or --rescore CARD)")
    (target_folder,) = finished([args.target or sys.exit("--target is required")]) or sys.exit(
        f"the target {args.target} has not finished")
    target = load(target_folder)
    rules = modes(target, finished(args.proxies), finished(args.depth_proxies))
    for spec in args.rules:
        rule = get_rule(spec)
        if not isinstance(rule, OptimalRule):
            sys.exit(f"--rules {spec!r}: not an optimal rule (it reads no report); use 'optimal:report=...'")
        rules[spec] = rule
    if not rules:
        sys.exit("no finished proxy runs: nothing to compare")
    per_tensor = compare(target, rules, replica_values(args.replica) if args.replica else None)
    table = summary(per_tensor)
    nonstationary = int((per_tensor.drop_duplicates("key")["measured_stationary"] == False).sum())  # noqa: E712
    readme = (
        f"# V(W) transfer accuracy: target {target_folder}\n\n"
        "Per mode and role: median and max |log(predicted / measured)| of V(W) over the target's tracked tensors "
        "(`median error %` = exp(median) - 1). Predictions are what `optimal:report=...` gives the target model; "
        f"measured is the target's own V(W) ({nonstationary} of its tensors not stationary: their last recorded "
        "value is used).\n\n"
        f"{table.to_markdown(index=False, floatfmt='.3g')}\n\nPer tensor: `per_tensor.csv`.\n\n"
        f"Command:\n\n```\n{command}\n```\n"
    )
    with atomic_folder(args.output) as tmp:
        per_tensor.to_csv(tmp / "per_tensor.csv", index=False)
        (tmp / "README.md").write_text(readme)
        (tmp / "verdicts.md").write_text(f"{verdicts(table).to_markdown(index=False, floatfmt='.3g')}\n")
    print(table.to_string(index=False))
    print(f"written to {args.output}/")


if __name__ == "__main__":
    main()
