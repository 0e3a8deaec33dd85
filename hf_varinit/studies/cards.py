"""The model cards (``README.md``) of the MLP studies: settings, criterion, results, the verdict on the claim."""

from __future__ import annotations

import math

from hf_varinit.report.tables import format_cell, markdown_table
from hf_varinit.studies.configs import CLAIM_BAND, CompareConfig, SweepConfig
from hf_varinit.studies.datasets import hub_id
from hf_varinit.studies.render import model_card

__all__ = ["compare_card", "summary_table", "sweep_card"]


# ----------------------------------------------------------------------------- sweep


def _trained_but(rows: list[dict]) -> str:
    odd = [r for r in rows if r["trained"] and r["regime"] != "stable"]
    if not odd:
        return "none"
    pts = dict.fromkeys(f"{r['dataset']} depth {r['depth']} std {r['std']:.3g}" for r in odd)
    return f"{len(odd)} of {len(rows)} runs (" + "; ".join(pts) + ")"


def _claim_verdict(cfg: SweepConfig, bands: list[dict]) -> str:
    verdicts = []
    for b in bands:
        if b["band_lo"] is None:
            verdicts.append(f"{b['dataset']}, depth {b['depth']}: no std was stable in the majority of seeds")
        elif not b["contains_claim"]:
            verdicts.append(f"{b['dataset']}, depth {b['depth']}: the measured band {format_cell(b['band_lo'], 3)}.."
                            f"{format_cell(b['band_hi'], 3)} holds {b['claim_points_in_band']} of the grid stds "
                            "inside 1e-2..1e-1")
    claim_grid = ", ".join(f"{x:.3g}" for x in cfg.stds if CLAIM_BAND[0] <= x <= CLAIM_BAND[1])
    return (f"Grid stds inside the claimed range: {claim_grid or 'none'}. " +
            ("The measured bands contain all of them everywhere." if not verdicts else
             "Where the measurement disagrees with the claim of ~1e-2..1e-1:\n\n" +
             "\n".join(f"- {v}" for v in verdicts)))


def sweep_card(cfg: SweepConfig, rows: list[dict], bands: list[dict], agg: list[dict], summary: dict) -> str:
    """The sweep's card.

    Args:
        cfg (`SweepConfig`): the settings.
        rows (`list[dict]`): per-seed rows; bands (`list[dict]`): per (dataset, depth); agg (`list[dict]`): per point.
        summary (`dict`): ``wall_seconds``, ``torch_threads`` and ``command`` (the regenerating command line).
    """
    band_rows = [{**b, "band": f"{format_cell(b['band_lo'], 2)} .. {format_cell(b['band_hi'], 2)}"
                  if b["band_lo"] else "none"} for b in bands]
    datasets = [d for d in map(hub_id, cfg.datasets) if d]
    length = f"{cfg.steps} steps" if cfg.steps else f"{cfg.epochs} epochs"
    body = f"""
# Initial-std sweep of ReLU MLPs: vanishing, stable, exploding

A logarithmic sweep of the initial weight std of fully connected ReLU networks, measured with `hf_varinit`
(every model built by `hf_varinit.from_config(VarInitMLPConfig(...), rule="normal:std=<std>", seed=seed)`).
It tests the claim of *Weight Initialization and Variance Dynamics in Deep Neural Networks and Large Language
Models* that a stability band of roughly **1e-2 to 1e-1** separates the vanishing and exploding regimes.

## Settings

- datasets: {", ".join(cfg.datasets)}; depths: {", ".join(map(str, cfg.depths))}; width {cfg.width}
- stds: {len(cfg.stds)} points log-spaced {format_cell(cfg.stds[0], 2)} .. {format_cell(cfg.stds[-1], 2)}; seeds: \
{cfg.seeds}
- every weight (first layer and head included) from N(0, std²), biases zero; ReLU
- plain SGD, lr {cfg.lr}, batch {cfg.batch_size}, {length}
  per point; features standardized; max_train {cfg.max_train}
- wall time {summary["wall_seconds"] / 60:.1f} min on this machine ({summary["torch_threads"]} torch threads)

## Criterion (measured numbers only)

With C classes, chance loss L0 = ln C, tau = {cfg.stable_fraction}, L the final full-training-set loss and
`act_ratio` = mean square of the last hidden layer's activation at init / mean square of the input (one batch of
256 training examples):

- **exploding**: the loss became non-finite (diverged), or act_ratio > B, or L > tau·L0 with act_ratio ≥ 1;
- **vanishing**: act_ratio < 1/B, or L > tau·L0 with act_ratio < 1;
- **stable**: otherwise — training brought L to at most tau·L0 *and* the signal at init stayed within a factor
  B = {format_cell(cfg.signal_bound, 2)} of the input.

Points that trained (L ≤ tau·L0) although their signal at init was outside that factor:
{_trained_but(rows)}.

Band = the longest contiguous run of grid stds stable in the majority of seeds (edges are grid points).

## Measured stability band

{markdown_table(band_rows, ["dataset", "depth", "band", "stable_points", "contiguous", "claim_points_in_band"],
                ["dataset", "depth", "band (std)", "stable grid points", "contiguous",
                 "grid stds of 1e-2..1e-1 in band"])}

{_claim_verdict(cfg, bands)}

Kaiming (He) std for reference: sqrt(2 / fan_in) = {format_cell(math.sqrt(2 / cfg.width), 3)} for the hidden layers
at width {cfg.width}. In a plain-normal init the per-layer gain of the mean square signal is width·std²/2, so the
band's position moves with width and its extent shrinks with depth.

![sweep](sweep.png)

## Per point (mean over seeds)

`regimes` counts vanishing/stable/exploding seeds; `act_ratio` and gradient norms at init are medians over seeds.

{markdown_table(agg, ["dataset", "depth", "std", "loss", "acc", "act_ratio", "grad_first", "grad_head", "regimes"],
                ["dataset", "depth", "std", "final train loss", "test acc", "act ratio at init",
                 "grad norm layer 0", "grad norm head", "v/s/e"])}

Per-seed rows with the activation variance and gradient norm of every layer: `results.csv`; machine-readable
summary: `summary.json`.

## Regenerate

```bash
{summary["command"]}
```
"""
    return model_card(tags=["initialization", "variance-sweep", "mlp", "relu"], datasets=datasets, body=body)


# ----------------------------------------------------------------------------- compare


def _pm(m, s, digits: int = 4) -> str:
    if m is None:
        return "—"
    return f"{format_cell(m, digits)} ± {format_cell(s, 2)}" if s is not None and math.isfinite(s) \
        else format_cell(m, digits)


def summary_table(groups: list[dict], target: float) -> str:
    """The per-arm results of a comparison (mean ± std over seeds) as a markdown table."""
    rows = [{"arm": g["arm"], "activation": g["activation"], "n": g["n_seeds"],
             "loss": _pm(g["final_train_loss_mean"], g["final_train_loss_std"]),
             "acc": _pm(g["test_accuracy_mean"], g["test_accuracy_std"]),
             "steps": _pm(g["steps_to_target_mean"], g["steps_to_target_std"], 5),
             "reached": g["reached_target"], "diverged": g["diverged"]} for g in groups]
    return markdown_table(rows, ["arm", "activation", "n", "loss", "acc", "steps", "reached", "diverged"],
                          ["arm", "activation", "seeds", "final train loss (mean ± std)", "test accuracy (mean ± std)",
                           f"steps to train loss ≤ {target:g} (mean ± std over seeds that reached it)",
                           "reached", "diverged"])


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


def _pilot_section(cfg: CompareConfig, summary: dict) -> str:
    rows = [{"key": k, **v} for k, v in summary["pilot"].items()]
    cal = summary["calibration"]
    return (f"\n## Pilot V(W) (He-normal, seed {cfg.pilot_seed})\n\n"
            + markdown_table(rows, ["key", "init_var", "v_w", "ratio", "stationary"],
                             ["tensor", "He init variance", "V(W)", "V(W) / init", "stationary"])
            + f"\n\nCalibration: {'converged' if cal['converged'] else '**not converged**'} after "
              f"{cal['rounds']} pilot run(s); max relative change per round "
            + ", ".join(f"{x:.3g}" for x in cal["max_rel_change"])
            + f" (tol {cfg.calibration_tol:g}). Calibrated V(W): "
            + ", ".join(f"`{k}` {v:.4g}" for k, v in cal["variances"].items()) + ".\n")


def compare_card(cfg: CompareConfig, summary: dict) -> str:
    """The card of a comparison study.

    Args:
        cfg (`CompareConfig`): the settings.
        summary (`dict`): ``groups`` (per-arm results), ``wall_seconds``, ``command``, and for ``--study optimal``
            ``pilot`` (per-tensor pilot analysis) and ``calibration``.
    """
    groups = summary["groups"]
    datasets = [d for d in [hub_id(cfg.dataset)] if d]
    acts = "ReLU and tanh" if cfg.study == "init" else "ReLU"
    setting = (f"- dataset {cfg.dataset}; {acts} MLP, {cfg.depth} hidden layers of width {cfg.width}\n"
               f"- plain SGD (no momentum, no weight decay), lr {cfg.lr}, batch {cfg.batch_size}, {cfg.steps} steps\n"
               f"- seeds {cfg.seeds}; full-training-set loss evaluated every {cfg.eval_every} steps\n"
               f"- wall time {summary['wall_seconds'] / 60:.1f} min on this machine")
    best = min(groups, key=lambda g: g["final_train_loss_mean"])
    if cfg.study == "init":
        title = "Kaiming vs Xavier init under ReLU (tanh control)"
        intro = ("Tests the claim of *Weight Initialization and Variance Dynamics in Deep Neural Networks and Large "
                 "Language Models* that Kaiming (fan-in) init converges faster and more stably than Xavier under "
                 "ReLU. With tanh, Xavier is the matched rule and should hold its own.")
        findings, extra = _init_findings(groups), ""
    else:
        title = "Optimal init s0² = V(W) vs He-normal"
        intro = ("Reproduces the experiment of Horii & Has (arXiv 2508.12834): fully connected ReLU networks trained "
                 "with plain SGD, He-normal init vs init with s0² = V(W), the steady-state second moment of each "
                 "layer's weights measured in a He-normal pilot run (`pilot/`). `optimal-calibrated` uses the "
                 "fixed point of s0² = V(W) from `hf_varinit.calibrate` (`calibration/`); Xavier for reference. "
                 "The paper reports lower final training loss and higher test accuracy for s0² = V(W).")
        findings, extra = _optimal_findings(groups), _pilot_section(cfg, summary)
    body = f"""
# {title}

{intro}

## Settings

{setting}

## Results (mean ± std over {len(cfg.seeds)} seeds)

{summary_table(groups, cfg.target_loss)}

Lowest mean final training loss: **{best['arm']}**.

{findings}

![loss curves](curves.png)
{extra}
Per-seed numbers: `results.csv`; loss curves: `curves.csv`; machine-readable: `summary.json`.

## Regenerate

```bash
{summary["command"]}
```
"""
    tags = ["initialization", "mlp", "kaiming", "xavier"] + (["optimal-variance"] if cfg.study == "optimal" else [])
    return model_card(tags=tags, datasets=datasets, body=body)
