"""Init rules head to head on ReLU MLPs trained with plain SGD, over several seeds (``hf-varinit compare``).

Studies:

* ``study="init"`` (default): Kaiming (fan-in, ReLU gain) vs Xavier under ReLU, with tanh as the control where
  Xavier is the matched rule. Loss curves (full training set, mean ± std over seeds), steps to a target loss,
  final training loss and test accuracy. Folder ``runs/compare-kaiming-xavier-<dataset>``.
* ``study="optimal"``: Horii & Has's experiment: He-normal (``kaiming``) vs ``optimal`` (s0² = V(W) measured in a
  He-normal pilot run) vs ``optimal-calibrated`` (the fixed point of `hf_varinit.calibrate`) vs Xavier.
  Folder ``runs/optimal-vs-he-<dataset>``.

Every model is built by ``hf_varinit.from_config(VarInitMLPConfig(...), rule=..., seed=seed)``.

Example:
    >>> result = run_compare(CompareConfig(study="optimal", dataset="digits"))
    >>> [g["arm"] for g in result.summary["groups"]]  # doctest: +SKIP
    ['he-normal', 'optimal', 'optimal-calibrated', 'xavier']
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hf_varinit.calibrate import CalibrationResult, calibrate, check_output
from hf_varinit.errors import ConfigError
from hf_varinit.io_utils import atomic_write_json, json_safe
from hf_varinit.report.report import VarianceReport
from hf_varinit.studies.cards import compare_card, summary_table
from hf_varinit.studies.configs import CompareConfig
from hf_varinit.studies.datasets import load_classification
from hf_varinit.studies.mlp_train import build_mlp, run_stats, train_mlp
from hf_varinit.studies.plots import compare_plot
from hf_varinit.studies.render import csv_text, mean_std, write_folder

__all__ = ["RUN_COLUMNS", "SUMMARY_KEYS", "CompareConfig", "CompareResult", "compare_command", "run_compare"]

RUN_COLUMNS = ["study", "dataset", "arm", "activation", "rule", "seed", "final_train_loss", "test_accuracy",
               "steps_to_target", "steps", "diverged"]
CURVE_COLUMNS = ["arm", "activation", "seed", "step", "train_loss"]
SUMMARY_KEYS = ["arm", "activation", "rule", "n_seeds", "final_train_loss_mean", "final_train_loss_std",
                "test_accuracy_mean", "test_accuracy_std", "steps_to_target_mean", "steps_to_target_std",
                "reached_target", "diverged"]


@dataclass
class CompareResult:
    """Per-run rows, the summary (also ``summary.json``) and the folder written (None when nothing was)."""

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


@dataclass
class _Pilots:
    """The optimal study's pilot report (He-normal) and its calibration, with the summary's view of them."""

    report: VarianceReport
    calibration: CalibrationResult

    def info(self) -> dict:
        cal = self.calibration
        return {
            "pilot": {k: {"init_var": a.init_var, "v_w": a.v_w, "ratio": a.ratio, "stationary": a.stationary}
                      for k, a in self.report.tensors.items()},
            "calibration": {"converged": cal.converged, "rounds": len(cal.history),
                            "max_rel_change": [h["max_rel_change"] for h in cal.history], "variances": cal.variances},
        }


def _pilots(data, cfg: CompareConfig, log) -> _Pilots:
    """He-normal pilot -> V(W) (its report); calibration from there -> the calibrated V(W)."""
    pilot_run = train_mlp(build_mlp(data, cfg.depth, cfg.width, "kaiming", cfg.pilot_seed), data, lr=cfg.lr,
                          steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.pilot_seed,
                          record_every=cfg.record_every, eval=False, rule="kaiming")
    if pilot_run.diverged:
        raise ConfigError(f"compare --study optimal: the He-normal pilot diverged at lr={cfg.lr}; lower --lr")
    meta = {"source": "training", "optimizer": "sgd", "lr": cfg.lr, "batch_size": cfg.batch_size,
            "seed": cfg.pilot_seed, "dataset": cfg.dataset, "steps": cfg.steps}
    report = VarianceReport.from_stats(run_stats(pilot_run, meta),
                                       title=f"He-normal pilot: ReLU MLP {cfg.depth}x{cfg.width} on {cfg.dataset}")
    log(f"compare: pilot V(W) {json.dumps({k: round(v, 6) for k, v in report.variances().items()})}")

    def build(rule):
        return build_mlp(data, cfg.depth, cfg.width, rule, cfg.pilot_seed)

    def pilot(model):
        run = train_mlp(model, data, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.pilot_seed,
                        record_every=cfg.record_every, eval=False, rule=getattr(model, "varinit_init_rule", None))
        return run_stats(run, meta)

    cal = calibrate(build, pilot, rounds=cfg.calibration_rounds, tol=cfg.calibration_tol, log=log)
    cal.metadata = {"dataset": cfg.dataset, "depth": cfg.depth, "width": cfg.width, "lr": cfg.lr,
                    "steps": cfg.steps, "seed": cfg.pilot_seed, "optimizer": "sgd (plain)"}
    return _Pilots(report, cal)


def compare_command(cfg: CompareConfig) -> str:
    """The ``hf-varinit compare`` command line that regenerates ``cfg``'s report (written into its card)."""
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


def _write(cfg: CompareConfig, runs: list[dict], curves: list[dict], summary: dict, pilots: _Pilots | None) -> Path:
    groups = summary["groups"]
    md = f"# compare --study {cfg.study}: {cfg.dataset}\n\n{summary_table(groups, cfg.target_loss)}\n"
    out = write_folder(cfg.output, {
        "results.csv": lambda p: p.write_text(csv_text(runs, RUN_COLUMNS)),
        "curves.csv": lambda p: p.write_text(csv_text(curves, CURVE_COLUMNS)),
        "results.md": lambda p: p.write_text(md),
        "curves.png": lambda p: compare_plot(curves, groups, cfg, p),
        "summary.json": lambda p: atomic_write_json(p, json_safe(summary)),
        "README.md": lambda p: p.write_text(compare_card(cfg, summary)),
        **({"pilot": lambda p: pilots.report.save(p, reference=f"{cfg.output}/pilot"),
            "calibration": lambda p: pilots.calibration.save(p, command=summary["command"])} if pilots else {}),
    }, overwrite=cfg.overwrite)
    return out


def run_compare(config: CompareConfig | None = None, *, command: str | None = None, log=None,
                **overrides) -> CompareResult:
    """Run a comparison study and write its report folder (``config.output``; empty string writes nothing).

    Args:
        config (`CompareConfig`, *optional*): the settings; keyword ``overrides`` replace its fields.
        command (`str`, *optional*): the regenerating command written into the card (default: `compare_command`).
        log (`Callable[[str], None]`, *optional*): progress messages (default: stderr).

    Returns:
        `CompareResult` with per-run rows, the summary (also ``summary.json``) and the folder.
    """
    base = asdict(config) if config else {}
    cfg = CompareConfig(**{**base, **overrides})
    if cfg.output:
        check_output(cfg.output, cfg.overwrite)  # before the work, not after it
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    data = load_classification(cfg.dataset, seed=0, max_train=cfg.max_train)
    pilots = None
    if cfg.study == "init":
        arms = [(f"{r}-{a}", r, a) for a in ("relu", "tanh") for r in ("kaiming", "xavier")]
    else:
        pilots = _pilots(data, cfg, log)
        arms = [("he-normal", "kaiming", "relu"),
                ("optimal", {"name": "optimal", "variances": pilots.report.variances()}, "relu"),
                ("optimal-calibrated", {"name": "optimal", "variances": pilots.calibration.variances}, "relu"),
                ("xavier", "xavier", "relu")]
    runs, curves = [], []
    for arm, rule, act in arms:
        r, c = _train_arm(data, arm, rule, act, cfg)
        runs += r
        curves += c
        log(f"compare: {arm} done ({time.perf_counter() - t0:.0f}s)")
    groups = _summarize(runs)
    wall = time.perf_counter() - t0
    summary = {"study": cfg.study, "dataset": cfg.dataset, "config": asdict(cfg), "groups": groups,
               "target_loss": cfg.target_loss, "wall_seconds": wall, "command": command or compare_command(cfg),
               **(pilots.info() if pilots else {})}
    out = None
    if cfg.output:
        out = _write(cfg, runs, curves, summary, pilots)
        log(f"compare: wrote {out} ({wall:.0f}s)")
    return CompareResult(runs, summary, out)
