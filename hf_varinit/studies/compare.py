"""``hf-varinit compare``: init rules head to head on ReLU MLPs trained with plain SGD, over several seeds.

Studies:

* ``--study init`` (default): Kaiming (fan-in, ReLU gain) vs Xavier under ReLU, with tanh as the control where
  Xavier is the matched rule. Loss curves (full training set, mean ± std over seeds), steps to a target loss,
  final training loss and test accuracy. Folder ``model_cards/compare-kaiming-xavier-<dataset>``.
* ``--study optimal``: Horii & Has's experiment: He-normal (``kaiming``) vs ``optimal`` (s0² = V(W) measured in a
  He-normal pilot run) vs ``optimal-calibrated`` (the fixed point of `hf_varinit.calibrate`) vs Xavier.
  Folder ``model_cards/optimal-vs-he-<dataset>``.

Every model is built by ``hf_varinit.from_config(VarInitMLPConfig(...), rule=..., seed=seed)``.

Usage:
    hf-varinit compare --study init --dataset mnist-subset
    hf-varinit compare --study optimal --dataset mnist-subset
    hf-varinit compare --study optimal --quick     # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hf_varinit.errors import ConfigError
from hf_varinit.io_utils import atomic_write_json
from hf_varinit.studies.mlp_train import build_mlp, run_stats, train_mlp
from hf_varinit.studies.render import (
    add_threads_argument,
    apply_threads,
    csv_text,
    fmt,
    json_safe,
    markdown_table,
    mean_std,
    model_card,
    write_folder,
)

__all__ = ["CompareConfig", "CompareResult", "add_compare_arguments", "run_compare", "run_compare_cli", "main"]

STUDIES = ("init", "optimal")
HUB_IDS = {"mnist": "ylecun/mnist", "fashion_mnist": "zalando-datasets/fashion_mnist"}
RUN_COLUMNS = ["study", "dataset", "arm", "activation", "rule", "seed", "final_train_loss", "test_accuracy",
               "steps_to_target", "steps", "diverged"]
SUMMARY_KEYS = ["arm", "activation", "rule", "n_seeds", "final_train_loss_mean", "final_train_loss_std",
                "test_accuracy_mean", "test_accuracy_std", "steps_to_target_mean", "steps_to_target_std",
                "reached_target", "diverged"]


@dataclass
class CompareConfig:
    """Settings of ``hf-varinit compare`` (each field is a ``--flag``); None picks the study's default."""

    study: str = "init"
    dataset: str = "mnist-subset"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    depth: int | None = None  # init: 8, optimal: 3
    width: int | None = None  # init: 128, optimal: 256
    lr: float | None = None  # init: 0.01, optimal: 0.05
    steps: int | None = None  # init: 1000, optimal: 1500
    batch_size: int = 64
    eval_every: int | None = None  # default: steps // 50
    target_loss: float | None = None  # default: 0.5
    max_train: int | None = None
    pilot_seed: int = 1000  # optimal: seed of the He-normal pilot and of the calibration pilots
    record_every: int | None = None  # optimal: pilot record interval (default steps // 100)
    calibration_rounds: int = 4
    calibration_tol: float = 0.05
    output: str | None = None

    def __post_init__(self) -> None:
        if self.study not in STUDIES:
            raise ConfigError(f"compare: study={self.study!r} is unknown; valid: {', '.join(STUDIES)}")
        defaults = {"init": dict(depth=8, width=128, lr=0.01, steps=1000),
                    "optimal": dict(depth=3, width=256, lr=0.05, steps=1500)}[self.study]
        for k, v in defaults.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if len(self.seeds) < 1 or self.steps < 1 or self.depth < 1 or self.width < 1:
            raise ConfigError(f"compare: seeds={self.seeds}, steps={self.steps}, depth={self.depth}, width="
                              f"{self.width} must be non-empty / >= 1")
        self.eval_every = self.eval_every or max(1, self.steps // 50)
        self.record_every = self.record_every or max(1, self.steps // 100)
        self.target_loss = 0.5 if self.target_loss is None else self.target_loss
        if self.output is None:
            stem = "compare-kaiming-xavier" if self.study == "init" else "optimal-vs-he"
            self.output = f"model_cards/{stem}-{self.dataset}"


QUICK = dict(dataset="wine", seeds=[0, 1], depth=2, width=16, steps=60, lr=0.05, calibration_rounds=2)


@dataclass
class CompareResult:
    runs: list[dict]
    summary: dict
    output: Path | None


def _train_arm(data, arm: str, rule, activation: str, cfg: CompareConfig) -> tuple[list[dict], list[dict]]:
    runs, curves = [], []
    for seed in cfg.seeds:
        model = build_mlp(data, cfg.depth, cfg.width, rule, seed, activation=activation)
        run = train_mlp(model, data, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size, seed=seed,
                        eval_every=cfg.eval_every)
        hit = next((s for s, v in zip(run.eval_steps, run.eval_losses) if v <= cfg.target_loss), None)
        runs.append({"study": cfg.study, "dataset": data.name, "arm": arm, "activation": activation,
                     "rule": rule if isinstance(rule, str) else "optimal(variances table)", "seed": seed,
                     "final_train_loss": run.final_train_loss, "test_accuracy": run.test_accuracy,
                     "steps_to_target": hit, "steps": run.steps, "diverged": run.diverged})
        curves += [{"arm": arm, "activation": activation, "seed": seed, "step": s, "train_loss": v}
                   for s, v in zip(run.eval_steps, run.eval_losses)]
    return runs, curves


def _summarize(runs: list[dict]) -> list[dict]:
    out = []
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rs = [r for r in runs if r["arm"] == arm]
        loss_m, loss_s = mean_std([r["final_train_loss"] for r in rs])
        acc_m, acc_s = mean_std([r["test_accuracy"] for r in rs])
        hits = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
        st_m, st_s = mean_std(hits) if hits else (None, None)
        out.append({"arm": arm, "activation": rs[0]["activation"], "rule": rs[0]["rule"], "n_seeds": len(rs),
                    "final_train_loss_mean": loss_m, "final_train_loss_std": loss_s,
                    "test_accuracy_mean": acc_m, "test_accuracy_std": acc_s,
                    "steps_to_target_mean": st_m, "steps_to_target_std": st_s,
                    "reached_target": f"{len(hits)}/{len(rs)}", "diverged": sum(r["diverged"] for r in rs)})
    return out


def _pm(m, s, digits: int = 4) -> str:
    if m is None:
        return "—"
    return f"{fmt(m, digits)} ± {fmt(s, 2)}" if s is not None and math.isfinite(s) else fmt(m, digits)


def _table(groups: list[dict], target: float) -> str:
    rows = [{"arm": g["arm"], "activation": g["activation"], "n": g["n_seeds"],
             "loss": _pm(g["final_train_loss_mean"], g["final_train_loss_std"]),
             "acc": _pm(g["test_accuracy_mean"], g["test_accuracy_std"]),
             "steps": _pm(g["steps_to_target_mean"], g["steps_to_target_std"], 5),
             "reached": g["reached_target"], "diverged": g["diverged"]} for g in groups]
    return markdown_table(rows, ["arm", "activation", "n", "loss", "acc", "steps", "reached", "diverged"],
                          ["arm", "activation", "seeds", "final train loss (mean ± std)", "test accuracy (mean ± std)",
                           f"steps to train loss ≤ {target:g} (mean ± std over seeds that reached it)",
                           "reached", "diverged"])


def _plot(curves: list[dict], groups: list[dict], cfg: CompareConfig, path: Path) -> None:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    acts = list(dict.fromkeys(g["activation"] for g in groups))
    fig = Figure(figsize=(5.0 * len(acts) + 0.6, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(acts), squeeze=False)[0]
    cmap = matplotlib.colormaps["tab10"]
    for ax, act in zip(axes, acts):
        for i, g in enumerate(x for x in groups if x["activation"] == act):
            pts = [c for c in curves if c["arm"] == g["arm"]]
            steps = sorted(set(c["step"] for c in pts))
            vals = np.array([[c["train_loss"] for c in pts if c["step"] == s] for s in steps], dtype=float)
            mean, std = vals.mean(axis=1), vals.std(axis=1)
            ax.plot(steps, mean, color=cmap(i), label=f"{g['arm']} (n={g['n_seeds']})")
            ax.fill_between(steps, mean - std, mean + std, color=cmap(i), alpha=0.2)
        ax.axhline(cfg.target_loss, color="grey", ls=":", lw=0.8, label=f"target {cfg.target_loss:g}")
        ax.set_yscale("log")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("full training-set loss")
        ax.set_title(f"{cfg.dataset}, {act}, {cfg.depth}x{cfg.width}")
        ax.legend(fontsize=7)
    fig.savefig(path, format="png", dpi=110)


def _pilot_variances(data, cfg: CompareConfig, folder_writers: dict, log) -> tuple[dict, dict, dict]:
    """He-normal pilot -> V(W); calibration -> calibrated V(W). Returns (pilot V, calibrated V, info)."""
    from hf_varinit.calibrate import calibrate
    from hf_varinit.report.report import VarianceReport

    pilot_run = train_mlp(build_mlp(data, cfg.depth, cfg.width, "kaiming", cfg.pilot_seed), data, lr=cfg.lr,
                          steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.pilot_seed,
                          record_every=cfg.record_every, eval=False, rule="kaiming")
    if pilot_run.diverged:
        raise ConfigError(f"compare --study optimal: the He-normal pilot diverged at lr={cfg.lr}; lower --lr")
    meta = {"source": "training", "optimizer": "sgd", "lr": cfg.lr, "batch_size": cfg.batch_size,
            "seed": cfg.pilot_seed, "dataset": cfg.dataset, "steps": cfg.steps}
    report = VarianceReport.from_stats(run_stats(pilot_run, meta),
                                       title=f"He-normal pilot: ReLU MLP {cfg.depth}x{cfg.width} on {cfg.dataset}")
    pilot_v = report.variances()
    log(f"compare: pilot V(W) {json.dumps({k: round(v, 6) for k, v in pilot_v.items()})}")

    def build(rule):
        return build_mlp(data, cfg.depth, cfg.width, rule, cfg.pilot_seed)

    def pilot(model):
        run = train_mlp(model, data, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.pilot_seed,
                        record_every=cfg.record_every, eval=False, rule=getattr(model, "varinit_init_rule", None))
        return run_stats(run, meta)

    cal = calibrate(build, pilot, rounds=cfg.calibration_rounds, tol=cfg.calibration_tol, log=log)
    cal.metadata = {"dataset": cfg.dataset, "depth": cfg.depth, "width": cfg.width, "lr": cfg.lr,
                    "steps": cfg.steps, "seed": cfg.pilot_seed, "optimizer": "sgd (plain)"}
    folder_writers["pilot"] = report
    folder_writers["calibration"] = cal
    info = {
        "pilot": {k: {"init_var": a.init_var, "v_w": a.v_w, "ratio": a.ratio, "stationary": a.stationary}
                  for k, a in report.tensors.items()},
        "calibration": {"converged": cal.converged, "rounds": len(cal.history),
                        "max_rel_change": [h["max_rel_change"] for h in cal.history], "variances": cal.variances},
    }
    return pilot_v, cal.variances, info


def _card(cfg: CompareConfig, groups: list[dict], info: dict, wall: float, command: str) -> str:
    datasets = [HUB_IDS[cfg.dataset]] if cfg.dataset in HUB_IDS else []
    acts = "ReLU and tanh" if cfg.study == "init" else "ReLU"
    setting = (f"- dataset {cfg.dataset}; {acts} MLP, {cfg.depth} hidden layers of width {cfg.width}\n"
               f"- plain SGD (no momentum, no weight decay), lr {cfg.lr}, batch {cfg.batch_size}, {cfg.steps} steps\n"
               f"- seeds {cfg.seeds}; full-training-set loss evaluated every {cfg.eval_every} steps\n"
               f"- wall time {wall / 60:.1f} min on this machine")
    best = min(groups, key=lambda g: g["final_train_loss_mean"])
    if cfg.study == "init":
        title = "Kaiming vs Xavier init under ReLU (tanh control)"
        intro = ("Tests the claim of *Weight Initialization and Variance Dynamics in Deep Neural Networks and Large "
                 "Language Models* that Kaiming (fan-in) init converges faster and more stably than Xavier under "
                 "ReLU. With tanh, Xavier is the matched rule and should hold its own.")
        findings = _init_findings(groups)
        extra = ""
    else:
        title = "Optimal init s0² = V(W) vs He-normal"
        intro = ("Reproduces the experiment of Horii & Has (arXiv 2508.12834): fully connected ReLU networks trained "
                 "with plain SGD, He-normal init vs init with s0² = V(W), the steady-state second moment of each "
                 "layer's weights measured in a He-normal pilot run (`pilot/`). `optimal-calibrated` uses the "
                 "fixed point of s0² = V(W) from `hf_varinit.calibrate` (`calibration/`); Xavier for reference. "
                 "The paper reports lower final training loss and higher test accuracy for s0² = V(W).")
        findings = _optimal_findings(groups)
        rows = [{"key": k, **v} for k, v in info["pilot"].items()]
        cal = info["calibration"]
        extra = (f"\n## Pilot V(W) (He-normal, seed {cfg.pilot_seed})\n\n"
                 + markdown_table(rows, ["key", "init_var", "v_w", "ratio", "stationary"],
                                  ["tensor", "He init variance", "V(W)", "V(W) / init", "stationary"])
                 + f"\n\nCalibration: {'converged' if cal['converged'] else '**not converged**'} after "
                   f"{cal['rounds']} pilot run(s); max relative change per round "
                 + ", ".join(f"{x:.3g}" for x in cal["max_rel_change"])
                 + f" (tol {cfg.calibration_tol:g}). Calibrated V(W): "
                 + ", ".join(f"`{k}` {v:.4g}" for k, v in cal["variances"].items()) + ".\n")
    body = f"""
# {title}

{intro}

## Settings

{setting}

## Results (mean ± std over {len(cfg.seeds)} seeds)

{_table(groups, cfg.target_loss)}

Lowest mean final training loss: **{best['arm']}**.

{findings}

![loss curves](curves.png)
{extra}
Per-seed numbers: `results.csv`; loss curves: `curves.csv`; machine-readable: `summary.json`.

## Regenerate

```bash
{command}
```
"""
    tags = ["initialization", "mlp", "kaiming", "xavier"] + (["optimal-variance"] if cfg.study == "optimal" else [])
    return model_card(tags=tags, datasets=datasets, body=body)


def _by(groups: list[dict], arm: str) -> dict | None:
    return next((g for g in groups if g["arm"] == arm), None)


def _cmp(a: dict, b: dict, key: str, lower_better: bool) -> str:
    ma, sa, mb, sb = a[f"{key}_mean"], a[f"{key}_std"], b[f"{key}_mean"], b[f"{key}_std"]
    if ma is None or mb is None:
        return "not comparable (one arm never reached the target)"
    if not (math.isfinite(ma) and math.isfinite(mb)):
        return "not comparable (a run diverged)"
    better = ma < mb if lower_better else ma > mb
    gap = abs(ma - mb)
    if gap == 0:
        return "equal"
    clear = gap > (sa or 0) + (sb or 0)
    who = a["arm"] if better else b["arm"]
    return f"{who} better by {gap:.3g} ({'beyond' if clear else 'within'} the sum of the seed stds)"


def _init_findings(groups: list[dict]) -> str:
    lines = []
    for act in ("relu", "tanh"):
        k, x = _by(groups, f"kaiming-{act}"), _by(groups, f"xavier-{act}")
        if k and x:
            lines.append(f"- {act}: final train loss: {_cmp(k, x, 'final_train_loss', True)}; test accuracy: "
                         f"{_cmp(k, x, 'test_accuracy', False)}; steps to target: "
                         f"{_cmp(k, x, 'steps_to_target', True)} (reached {k['reached_target']} vs "
                         f"{x['reached_target']}).")
    return "Kaiming vs Xavier, measured:\n\n" + "\n".join(lines)


def _optimal_findings(groups: list[dict]) -> str:
    he = _by(groups, "he-normal")
    lines = []
    for arm in ("optimal", "optimal-calibrated", "xavier"):
        g = _by(groups, arm)
        if he and g:
            lines.append(f"- {arm} vs he-normal: final train loss: {_cmp(g, he, 'final_train_loss', True)}; "
                         f"test accuracy: {_cmp(g, he, 'test_accuracy', False)}.")
    return "Measured against He-normal:\n\n" + "\n".join(lines)


def run_compare(config: CompareConfig | None = None, *, command: str | None = None, log=None,
                **overrides) -> CompareResult:
    """Run a comparison study and write its report folder (``config.output``; empty string writes nothing).

    Returns:
        `CompareResult` with per-run rows, the summary (also ``summary.json``) and the folder.
    """
    from hf_varinit.studies.datasets import load_classification

    base = asdict(config) if config else {}
    cfg = CompareConfig(**{**base, **overrides})
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    data = load_classification(cfg.dataset, seed=0, max_train=cfg.max_train)
    extra_folders: dict = {}
    info: dict = {}
    if cfg.study == "init":
        arms = [(f"{r}-{a}", r, a) for a in ("relu", "tanh") for r in ("kaiming", "xavier")]
    else:
        pilot_v, cal_v, info = _pilot_variances(data, cfg, extra_folders, log)
        arms = [("he-normal", "kaiming", "relu"),
                ("optimal", {"name": "optimal", "variances": pilot_v}, "relu"),
                ("optimal-calibrated", {"name": "optimal", "variances": cal_v}, "relu"),
                ("xavier", "xavier", "relu")]
    runs, curves = [], []
    for arm, rule, act in arms:
        r, c = _train_arm(data, arm, rule, act, cfg)
        runs += r
        curves += c
        log(f"compare: {arm} done ({time.perf_counter() - t0:.0f}s)")
    groups = _summarize(runs)
    wall = time.perf_counter() - t0
    command = command or _command(cfg)
    summary = {"study": cfg.study, "dataset": cfg.dataset, "config": asdict(cfg), "groups": groups,
               "target_loss": cfg.target_loss, "wall_seconds": wall, "command": command, **info}
    out = None
    if cfg.output:
        md = f"# compare --study {cfg.study}: {cfg.dataset}\n\n{_table(groups, cfg.target_loss)}\n"
        out = write_folder(cfg.output, {
            "results.csv": lambda p: p.write_text(csv_text(runs, RUN_COLUMNS)),
            "curves.csv": lambda p: p.write_text(csv_text(curves, ["arm", "activation", "seed", "step",
                                                                   "train_loss"])),
            "results.md": lambda p: p.write_text(md),
            "curves.png": lambda p: _plot(curves, groups, cfg, p),
            "summary.json": lambda p: atomic_write_json(p, json_safe(summary)),
            "README.md": lambda p: p.write_text(_card(cfg, groups, info, wall, command)),
        })
        if "pilot" in extra_folders:
            extra_folders["pilot"].save(out / "pilot")
            extra_folders["calibration"].save(out / "calibration", command=command)
        log(f"compare: wrote {out} ({wall:.0f}s)")
    return CompareResult(runs, summary, out)


def _command(cfg: CompareConfig) -> str:
    parts = ["hf-varinit compare", f"--study {cfg.study}", f"--dataset {cfg.dataset}",
             "--seeds " + " ".join(map(str, cfg.seeds)), f"--depth {cfg.depth}", f"--width {cfg.width}",
             f"--lr {cfg.lr}", f"--steps {cfg.steps}", f"--batch-size {cfg.batch_size}",
             f"--eval-every {cfg.eval_every}", f"--target-loss {cfg.target_loss}"]
    if cfg.max_train:
        parts.append(f"--max-train {cfg.max_train}")
    if cfg.study == "optimal":
        parts += [f"--pilot-seed {cfg.pilot_seed}", f"--record-every {cfg.record_every}",
                  f"--calibration-rounds {cfg.calibration_rounds}", f"--calibration-tol {cfg.calibration_tol}"]
    return " ".join([*parts, *([f"--output {cfg.output}"] if cfg.output else [])])


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``hf-varinit compare`` options to ``parser``."""
    parser.add_argument("--study", choices=STUDIES, default="init", help="init: Kaiming vs Xavier; optimal: "
                        "He-normal vs s0²=V(W)")
    parser.add_argument("--dataset", default=None, help="mnist-subset (default), digits, wine; online: mnist, "
                        "fashion_mnist")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 3 4")
    parser.add_argument("--depth", type=int, default=None, help="hidden layers (init: 8, optimal: 3)")
    parser.add_argument("--width", type=int, default=None, help="hidden width (init: 128, optimal: 256)")
    parser.add_argument("--lr", type=float, default=None, help="plain SGD lr (init: 0.01, optimal: 0.05)")
    parser.add_argument("--steps", type=int, default=None, help="SGD steps per run (init: 1000, optimal: 1500)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64")
    parser.add_argument("--eval-every", type=int, default=None, help="full-train-loss interval (default steps/50)")
    parser.add_argument("--target-loss", type=float, default=None, help="for steps-to-target (default 0.5)")
    parser.add_argument("--max-train", type=int, default=None, help="subsample the training split")
    parser.add_argument("--pilot-seed", type=int, default=None, help="optimal: pilot seed (default 1000)")
    parser.add_argument("--record-every", type=int, default=None, help="optimal: pilot record interval")
    parser.add_argument("--calibration-rounds", type=int, default=None, help="optimal: most calibration pilots (4)")
    parser.add_argument("--calibration-tol", type=float, default=None, help="optimal: calibration tol (0.05)")
    parser.add_argument("--output", default=None, help="report folder (default model_cards/<study>-<dataset>)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke test (wine, 2 seeds, tiny)")
    add_threads_argument(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    values: dict = {"study": args.study}
    if args.quick:
        values.update(QUICK)
    for name in ("dataset", "seeds", "depth", "width", "lr", "steps", "batch_size", "eval_every", "target_loss",
                 "max_train", "pilot_seed", "record_every", "calibration_rounds", "calibration_tol", "output"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if args.quick and args.output is None:
        stem = "compare-kaiming-xavier" if args.study == "init" else "optimal-vs-he"
        values["output"] = f"model_cards/{stem}-{values['dataset']}-quick"
    return CompareConfig(**values)


def run_compare_cli(args: argparse.Namespace) -> int:
    """Entry point of ``hf-varinit compare``; prints the summary table and returns the exit code."""
    apply_threads(args)
    result = run_compare(config_from_args(args))
    print(_table(result.summary["groups"], result.summary["target_loss"]))
    print(json.dumps({"output": str(result.output), "wall_seconds": round(result.summary["wall_seconds"], 1)}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hf_varinit.studies.compare``: the same command as ``hf-varinit compare``."""
    from hf_varinit.cli.main import subcommand_main

    return subcommand_main("compare", argv)


if __name__ == "__main__":
    raise SystemExit(main())
