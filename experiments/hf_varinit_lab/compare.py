"""Init rules head to head on ReLU MLPs trained with plain SGD, over several seeds (``hf-varinit compare``).

Studies:

* ``study="init"`` (default): Kaiming (fan-in, ReLU gain) vs Xavier under ReLU, with tanh as the control where
  Xavier is the matched rule. Loss curves (full training set, mean ± std over seeds), steps to a target loss,
  final training loss and test accuracy. Folder ``runs/compare-kaiming-xavier-<dataset>``.
* ``study="optimal"``: Horii & Has's experiment: He-normal (``kaiming``) vs ``optimal`` (s0² = V(W) measured in a
  He-normal pilot run) vs ``optimal-calibrated`` (the fixed point of `hf_varinit.calibrate`) vs Xavier.
  Folder ``runs/optimal-vs-he-<dataset>``. With ``alphas`` the scale arms of `hf_varinit_lab.controls` replace
  ``optimal`` and Xavier.

Controls (`hf_varinit_lab.controls`): ``lrs`` runs every arm at each lr (the optimal study measures its pilots
per lr) and picks each arm's best lr; ``weight_decay`` trains everything, pilots included, with SGD + L2. Every
arm of a seed shares that seed's batch order; the card reports bootstrap 95 % CIs and paired tests over seeds.
Finished runs are cached in ``<output>.runs.jsonl``: a study stopped half-way resumes (the pilots rerun).

Every model is built by ``hf_varinit.from_config(VarInitMLPConfig(...), rule=..., seed=seed)``.

Example:
    >>> result = run_compare(CompareConfig(study="optimal", dataset="digits"))
    >>> [g["arm"] for g in result.summary["groups"]]  # doctest: +SKIP
    ['he-normal', 'optimal', 'optimal-calibrated', 'xavier']
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hf_varinit.calibrate import CalibrationResult, calibrate
from hf_varinit.errors import ConfigError
from hf_varinit.io_utils import atomic_write_json, check_overwrite, json_safe, write_folder
from hf_varinit.report.cost import run_cost
from hf_varinit.report.report import VarianceReport
from hf_varinit_lab.cards import arm_table, compare_card
from hf_varinit_lab.controls import best_lrs, metric_names, paired_rows, scale_arms, summarize_groups
from hf_varinit_lab.datasets import load_classification
from hf_varinit_lab.mlp_train import build_mlp, run_stats, train_mlp
from hf_varinit_lab.plots import compare_plot
from hf_varinit_lab.results import RunCache, csv_text
from hf_varinit_lab.study_settings import CompareConfig

__all__ = ["RUN_COLUMNS", "SUMMARY_KEYS", "CompareConfig", "CompareResult", "compare_command", "run_columns",
           "run_compare"]

RUN_COLUMNS = ["study", "dataset", "arm", "base_arm", "activation", "rule", "lr", "weight_decay", "seed",
               "final_train_loss", "test_loss", "test_accuracy", "steps_to_target", "steps", "diverged"]
CURVE_COLUMNS = ["arm", "activation", "seed", "step", "train_loss"]
SUMMARY_KEYS = ["arm", "base_arm", "lr", "activation", "rule", "n_seeds", "final_train_loss_mean",
                "final_train_loss_std", "test_accuracy_mean", "test_accuracy_std", "steps_to_target_mean",
                "steps_to_target_std", "reached_target", "diverged"]
# settings that do not change a single run: left out of the run cache's fingerprint
NOT_PER_RUN = ("output", "overwrite", "seeds", "lrs", "lr", "alphas", "head_only", "target_loss", "target_losses",
               "calibration_rounds", "calibration_tol")


@dataclass
class CompareResult:
    """Per-run rows, the summary (also ``summary.json``) and the folder written (None when nothing was)."""

    runs: list[dict]
    summary: dict
    output: Path | None


def _rule_name(rule) -> str:
    return rule if isinstance(rule, str) else "optimal(variances table)"


def _train_arm(data, arm: str, base: str, rule, activation: str, lr: float, cfg: CompareConfig,
               cache: RunCache) -> tuple[list[dict], list[dict]]:
    runs, curves = [], []
    for seed in cfg.seeds:
        key = json.dumps([base, lr, seed, rule], sort_keys=True)
        done = cache.get(key)
        if done is None:
            model = build_mlp(data, cfg.depth, cfg.width, rule, seed, activation=activation)
            run = train_mlp(model, data, lr=lr, weight_decay=cfg.weight_decay, steps=cfg.steps,
                            batch_size=cfg.batch_size, seed=seed, eval_every=cfg.eval_every)
            done = {"final_train_loss": run.final_train_loss, "test_loss": run.test_loss,
                    "test_accuracy": run.test_accuracy, "steps": run.steps, "diverged": run.diverged,
                    "eval_steps": run.eval_steps, "eval_losses": run.eval_losses}
            cache.put(key, done)
        curve = list(zip(done["eval_steps"], done["eval_losses"]))
        hits = {f"steps_to_{t:g}": next((s for s, v in curve if v <= t), None) for t in cfg.target_losses}
        runs.append({"study": cfg.study, "dataset": data.name, "arm": arm, "base_arm": base, "activation": activation,
                     "rule": _rule_name(rule), "lr": lr, "weight_decay": cfg.weight_decay, "seed": seed,
                     **{k: done[k] for k in ("final_train_loss", "test_loss", "test_accuracy", "steps", "diverged")},
                     **hits, "steps_to_target": hits[f"steps_to_{cfg.target_losses[0]:g}"]})
        curves += [{"arm": arm, "activation": activation, "seed": seed, "step": s, "train_loss": v} for s, v in curve]
    return runs, curves


@dataclass
class _Pilots:
    """The optimal study's pilot report (He-normal) and its calibration (None with 0 rounds) at one lr."""

    report: VarianceReport
    calibration: CalibrationResult | None
    steps: int

    def info(self) -> dict:
        cal = self.calibration
        return {
            "pilot": {k: {"init_var": a.init_var, "v_w": a.v_w, "ratio": a.ratio, "stationary": a.stationary}
                      for k, a in self.report.tensors.items()},
            "pilot_steps": self.steps,
            "calibration": None if cal is None else {
                "converged": cal.converged, "rounds": len(cal.history), "steps": self.steps * len(cal.history),
                "max_rel_change": [h["max_rel_change"] for h in cal.history], "variances": cal.variances},
        }


def _pilots(data, cfg: CompareConfig, lr: float, log) -> _Pilots:
    """He-normal pilot at ``lr`` -> V(W) (its report); calibration from there -> the calibrated V(W)."""
    def pilot(model):
        run = train_mlp(model, data, lr=lr, weight_decay=cfg.weight_decay, steps=cfg.steps, batch_size=cfg.batch_size,
                        seed=cfg.pilot_seed, record_every=cfg.record_every, eval=False,
                        rule=getattr(model, "varinit_init_rule", None))
        if run.diverged:
            raise ConfigError(f"compare --study optimal: a pilot diverged at lr={lr}; lower --lr / --lrs")
        return run_stats(run, meta)

    def build(rule):
        return build_mlp(data, cfg.depth, cfg.width, rule, cfg.pilot_seed)

    meta = {"source": "training", "optimizer": "sgd", "lr": lr, "weight_decay": cfg.weight_decay,
            "batch_size": cfg.batch_size, "seed": cfg.pilot_seed, "dataset": cfg.dataset, "steps": cfg.steps}
    report = VarianceReport.from_stats(pilot(build("kaiming")),
                                       title=f"He-normal pilot: ReLU MLP {cfg.depth}x{cfg.width} on {cfg.dataset}")
    log(f"compare: lr {lr:g}: pilot V(W) {json.dumps({k: round(v, 6) for k, v in report.variances().items()})}")
    cal = None
    if cfg.calibration_rounds:
        cal = calibrate(build, pilot, rounds=cfg.calibration_rounds, tol=cfg.calibration_tol, log=log)
        cal.metadata = {"dataset": cfg.dataset, "depth": cfg.depth, "width": cfg.width, "lr": lr,
                        "weight_decay": cfg.weight_decay, "steps": cfg.steps, "seed": cfg.pilot_seed,
                        "optimizer": "sgd" + (f" + weight decay {cfg.weight_decay:g}" if cfg.weight_decay else "")}
    return _Pilots(report, cal, run_cost(report.stats.metadata)["steps"])  # the pilot's record says what it cost


def _arms(cfg: CompareConfig, pilots: _Pilots | None) -> list[tuple[str, object, str]]:
    if cfg.study == "init":
        return [(f"{r}-{a}", r, a) for a in ("relu", "tanh") for r in ("kaiming", "xavier")]
    calibrated = ([("optimal-calibrated", {"name": "optimal", "variances": pilots.calibration.variances}, "relu")]
                  if pilots.calibration else [])
    if cfg.alphas:
        return [*scale_arms(pilots.report.variances(), cfg.alphas, head_only=cfg.head_only), *calibrated]
    return [("he-normal", "kaiming", "relu"),
            ("optimal", {"name": "optimal", "variances": pilots.report.variances()}, "relu"),
            *calibrated, ("xavier", "xavier", "relu")]


def _pairs(cfg: CompareConfig, groups: list[dict], best: dict) -> list[tuple[str, str]]:
    """(reference, other) arm pairs of the paired tests: per lr, and at each arm's best lr for the init study."""
    pairs = []
    for lr in cfg.lrs:
        arms = {g["base_arm"]: g["arm"] for g in groups if g["lr"] == lr}
        if cfg.study == "init":
            pairs += [(arms[f"xavier-{a}"], arms[f"kaiming-{a}"]) for a in ("relu", "tanh")]
            continue
        ref = "alpha-1" if "alpha-1" in arms else "he-normal"
        pairs += [(arms[ref], arm) for base, arm in arms.items() if base != ref]
        if ref != "he-normal":
            pairs.append((arms["he-normal"], arms[ref]))
    if cfg.study == "init" and len(cfg.lrs) > 1:
        for a in ("relu", "tanh"):
            x, k = best[f"xavier-{a}"]["best_arm"], best[f"kaiming-{a}"]["best_arm"]
            if x and k and (x, k) not in pairs:
                pairs.append((x, k))
    return pairs


def compare_command(cfg: CompareConfig) -> str:
    """The ``hf-varinit compare`` command line that regenerates ``cfg``'s report (written into its card)."""
    lrs = f"--lr {cfg.lr}" if len(cfg.lrs) == 1 else "--lrs " + " ".join(f"{x:g}" for x in cfg.lrs)
    parts = ["hf-varinit compare", f"--study {cfg.study}", f"--dataset {cfg.dataset}",
             "--seeds " + " ".join(map(str, cfg.seeds)), f"--depth {cfg.depth}", f"--width {cfg.width}",
             lrs, f"--steps {cfg.steps}", f"--batch-size {cfg.batch_size}", f"--eval-every {cfg.eval_every}",
             "--target-losses " + " ".join(f"{t:g}" for t in cfg.target_losses)]
    if cfg.weight_decay:
        parts.append(f"--weight-decay {cfg.weight_decay:g}")
    if cfg.max_train:
        parts.append(f"--max-train {cfg.max_train}")
    if cfg.study == "optimal":
        parts += [f"--pilot-seed {cfg.pilot_seed}", f"--record-every {cfg.record_every}",
                  f"--calibration-rounds {cfg.calibration_rounds}", f"--calibration-tol {cfg.calibration_tol}"]
        if cfg.alphas:
            parts.append("--alphas " + " ".join(f"{a:g}" for a in cfg.alphas) + (" --head-only" if cfg.head_only
                                                                                  else ""))
    return " ".join([*parts, *([f"--output {cfg.output}"] if cfg.output else [])])


def run_columns(targets: list[float]) -> list[str]:
    """The columns of ``results.csv``: `RUN_COLUMNS` (steps to the first target), then steps to every target."""
    return [*RUN_COLUMNS, *(f"steps_to_{t:g}" for t in targets)]


def _pilot_writers(cfg: CompareConfig, pilots: dict[float, _Pilots], command: str) -> dict:
    """``pilot/`` and ``calibration/`` (one lr) or ``pilot-lr<lr>/`` and ``calibration-lr<lr>/`` (a grid)."""
    writers = {}
    for lr, p in pilots.items():
        tag = "" if len(pilots) == 1 else f"-lr{lr:g}"
        writers[f"pilot{tag}"] = lambda d, p=p, tag=tag: p.report.save(d, reference=f"{cfg.output}/pilot{tag}")
        if p.calibration is not None:
            writers[f"calibration{tag}"] = lambda d, p=p, tag=tag: p.calibration.save(
                d, command=command, reference=f"{cfg.output}/calibration{tag}")
    return writers


def _write(cfg: CompareConfig, runs: list[dict], curves: list[dict], summary: dict,
           pilots: dict[float, _Pilots]) -> Path:
    groups = summary["groups"]
    columns = run_columns(cfg.target_losses)
    md = f"# compare --study {cfg.study}: {cfg.dataset}\n\n{arm_table(groups, cfg.target_losses)}\n"
    out = write_folder(cfg.output, {
        "results.csv": lambda p: p.write_text(csv_text(runs, columns)),
        "curves.csv": lambda p: p.write_text(csv_text(curves, CURVE_COLUMNS)),
        "results.md": lambda p: p.write_text(md),
        "curves.png": lambda p: compare_plot(curves, groups, cfg, p),
        "summary.json": lambda p: atomic_write_json(p, json_safe(summary)),
        "README.md": lambda p: p.write_text(compare_card(cfg, summary)),
        **_pilot_writers(cfg, pilots, summary["command"]),
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
    for single, grid in (("lr", "lrs"), ("target_loss", "target_losses")):  # a single value given wins over the grid
        if single in overrides and grid not in overrides:
            base[grid] = None
    cfg = CompareConfig(**{**base, **overrides})
    if cfg.output:
        check_overwrite(cfg.output, cfg.overwrite)  # before the work, not after it
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    data = load_classification(cfg.dataset, seed=0, max_train=cfg.max_train)
    cache = RunCache(cfg.output, {k: v for k, v in asdict(cfg).items() if k not in NOT_PER_RUN})
    pilots: dict[float, _Pilots] = {}
    runs, curves = [], []
    for lr in cfg.lrs:
        if cfg.study == "optimal":
            pilots[lr] = _pilots(data, cfg, lr, log)
        for base_arm, rule, act in _arms(cfg, pilots.get(lr)):
            arm = base_arm if len(cfg.lrs) == 1 else f"{base_arm}@lr{lr:g}"
            r, c = _train_arm(data, arm, base_arm, rule, act, lr, cfg, cache)
            runs += r
            curves += c
            log(f"compare: {arm} done ({time.perf_counter() - t0:.0f}s)")
    chance = math.log(data.num_classes)
    groups = summarize_groups(runs, cfg.target_losses, chance)
    best = best_lrs(groups)
    wall = time.perf_counter() - t0
    summary = {"study": cfg.study, "dataset": cfg.dataset, "config": asdict(cfg), "groups": groups,
               "target_loss": cfg.target_losses, "metrics": metric_names(cfg.target_losses), "chance_loss": chance,
               "best_lr": best, "paired": paired_rows(runs, _pairs(cfg, groups, best), cfg.target_losses),
               "wall_seconds": wall, "command": command or compare_command(cfg)}
    if pilots:
        summary["pilots"] = {f"{lr:g}": p.info() for lr, p in pilots.items()}
        summary.update(next(iter(pilots.values())).info())  # the first lr's, as "pilot" / "calibration"
    out = None
    if cfg.output:
        out = _write(cfg, runs, curves, summary, pilots)
        cache.clear()
        log(f"compare: wrote {out} ({wall:.0f}s)")
    return CompareResult(runs, summary, out)
