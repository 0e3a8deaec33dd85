"""The model cards (``README.md``) of the MLP studies: settings, criterion, results, the verdict on the claim."""

from __future__ import annotations

import math

from hf_varinit.report.tables import format_cell, markdown_table
from hf_varinit.train.study_report import study_card, summary_table
from hf_varinit_lab.control_cards import (
    P_THRESHOLD,
    best_lr_section,
    ci_table,
    paired_table,
    pilot_cost_line,
    scale_verdict,
)
from hf_varinit_lab.datasets import hub_id
from hf_varinit_lab.study_settings import CLAIM_BAND, CompareConfig, SweepConfig

__all__ = ["arm_table", "compare_card", "sweep_card"]


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
            verdicts.append(f"{b['dataset']}, depth {b['depth']}, width {b['width']}: no std was stable in the "
                            "majority of seeds")
        elif not b["contains_claim"]:
            verdicts.append(f"{b['dataset']}, depth {b['depth']}, width {b['width']}: the measured band "
                            f"{format_cell(b['band_lo'], 3)}.."
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
                  if b["band_lo"] else "none",
                  "band_he": f"{b['band_lo'] / b['he_std']:.2g} .. {b['band_hi'] / b['he_std']:.2g}"
                  if b["band_lo"] and b.get("he_std") else "—"} for b in bands]
    datasets = [d for d in map(hub_id, cfg.datasets) if d]
    length = f"{cfg.steps} steps" if cfg.steps else f"{cfg.epochs} epochs"
    lrs = (f"lr {cfg.lrs[0]}" if len(cfg.lrs) == 1 else
           f"best of {len(cfg.lrs)} lrs ({', '.join(f'{x:g}' for x in cfg.lrs)}: each point keeps its lowest final "
           "train loss)")
    decades = math.log10(cfg.stds[-1] / cfg.stds[0])
    grid = f"{(len(cfg.stds) - 1) / decades:.2g} points per decade" if decades > 0 else "one point"
    body = f"""
# Initial-std sweep of ReLU MLPs: vanishing, stable, exploding

A logarithmic sweep of the initial weight std of fully connected ReLU networks, measured with `hf_varinit`
(every model built by `hf_varinit.from_config(VarInitMLPConfig(...), rule="normal:std=<std>", seed=seed)`).
It tests the claim of *Weight Initialization and Variance Dynamics in Deep Neural Networks and Large Language
Models* that a stability band of roughly **1e-2 to 1e-1** separates the vanishing and exploding regimes.

## Settings

- datasets: {", ".join(cfg.datasets)}; depths: {", ".join(map(str, cfg.depths))}; widths: \
{", ".join(map(str, cfg.widths))}
- stds: {len(cfg.stds)} points log-spaced {format_cell(cfg.stds[0], 2)} .. {format_cell(cfg.stds[-1], 2)} \
({grid}); seeds: {cfg.seeds}
- every weight (first layer and head included) from N(0, std²), biases zero; ReLU
- plain SGD, {lrs}, weight decay {cfg.weight_decay:g}, batch {cfg.batch_size}, {length}
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

Which failure lies past each edge (majority of seeds at the first grid std outside the band): `vanishing-at-init`
(act_ratio < 1/B), `exploding-at-init` (act_ratio > B: forward explosion), `sgd-divergence` (signal at init
within B, but the loss became non-finite during training at every lr tried), `undertrained` (signal within B, no
divergence, L > tau·L0). Per-point causes: the `cause` column below and in `results.csv`.

## Measured stability band

{markdown_table(band_rows, ["dataset", "depth", "width", "band", "lo_cause", "hi_cause", "band_he", "stable_points",
                            "contiguous", "claim_points_in_band"],
                ["dataset", "depth", "width", "band (std)", "failure below", "failure above",
                 "band / sqrt(2/width)", "stable grid points", "contiguous", "grid stds of 1e-2..1e-1 in band"])}

{_claim_verdict(cfg, bands)}

Kaiming (He) std for reference: sqrt(2 / fan_in) = \
{", ".join(f"{format_cell(math.sqrt(2 / w), 3)} (width {w})" for w in cfg.widths)} for the hidden layers. If the
band scales as sqrt(2/width), the column "band / sqrt(2/width)" is the same at every width. In a plain-normal
init the per-layer gain of the mean square signal is width·std²/2, so the
band's position moves with width and its extent shrinks with depth.

![sweep](sweep.png)

## Per point (mean over seeds)

`regimes` counts vanishing/stable/exploding seeds; `act_ratio` and gradient norms at init are medians over seeds.

{markdown_table(agg, ["dataset", "depth", "width", "std", "loss", "acc", "act_ratio", "grad_first", "grad_head",
                      "regimes", "cause", "lr"],
                ["dataset", "depth", "width", "std", "final train loss", "test acc", "act ratio at init",
                 "grad norm layer 0", "grad norm head", "v/s/e", "cause (majority)", "lr kept per seed"])}

Per-seed rows with the activation variance and gradient norm of every layer: `results.csv`; machine-readable
summary: `summary.json`.

## Regenerate

```bash
{summary["command"]}
```
"""
    return study_card(tags=["initialization", "variance-sweep", "mlp", "relu"], datasets=datasets, body=body)


# ----------------------------------------------------------------------------- compare


def arm_table(groups: list[dict], target: float | list[float]) -> str:
    """The per-arm results of a comparison (mean ± std over seeds, ddof 1) as a markdown table; steps to the first
    target (`hf_varinit.train.study_report.summary_table`)."""
    target = target[0] if isinstance(target, list) else target
    return summary_table(groups, [
        ("arm", "arm"), ("activation", "activation"), ("n_seeds", "seeds"),
        ("final_train_loss", "final train loss (mean ± std)"), ("test_accuracy", "test accuracy (mean ± std)"),
        ("steps_to_target", f"steps to train loss ≤ {target:g} (mean ± std over seeds that reached it)", 5),
        ("reached_target", "reached"), ("diverged", "diverged")])


def _pilot_section(cfg: CompareConfig, summary: dict) -> str:
    out = []
    for lr, info in summary["pilots"].items():
        rows = [{"key": k, **v} for k, v in info["pilot"].items()]
        cal = info["calibration"]
        text = (f"\n## Pilot V(W) (He-normal, seed {cfg.pilot_seed}, lr {lr})\n\n"
                + markdown_table(rows, ["key", "init_var", "v_w", "ratio", "stationary"],
                                 ["tensor", "He init variance", "V(W)", "V(W) / init", "stationary"]) + "\n")
        if cal is not None:
            text += (f"\nCalibration: {'converged' if cal['converged'] else '**not converged**'} after "
                     f"{cal['rounds']} pilot run(s); max relative change per round "
                     + ", ".join(f"{x:.3g}" for x in cal["max_rel_change"])
                     + f" (tol {cfg.calibration_tol:g}). Calibrated V(W): "
                     + ", ".join(f"`{k}` {v:.4g}" for k, v in cal["variances"].items()) + ".\n")
        out.append(text)
    return "".join(out) + "\n" + pilot_cost_line(summary) + "\n"


def _controls(cfg: CompareConfig, summary: dict) -> str:
    groups, metrics = summary["groups"], summary["metrics"]
    text = (f"\n## Per arm: mean [bootstrap 95 % CI] over seeds\n\nSteps to a target: the first full-training-set "
            f"evaluation (every {cfg.eval_every} steps) at or below it, over the seeds that reached it (reached/n in "
            f"brackets).\n\n{ci_table(groups, metrics)}\n")
    if cfg.alphas:
        text += "\n## Is alpha = 1 a minimum?\n\n"
        for lr in cfg.lrs:
            suffix = "" if len(cfg.lrs) == 1 else f"@lr{lr:g}"
            text += (f"lr {lr:g}: \n\n" if len(cfg.lrs) > 1 else "") + \
                scale_verdict(groups, summary["paired"], cfg.alphas, suffix) + "\n\n"
    if len(cfg.lrs) > 1:
        text += ("\n## Learning-rate grid: best lr per arm and divergences\n\nBest lr: among the lrs where no seed "
                 "diverged (final train loss non-finite or above ln C), the lowest mean final train loss.\n\n"
                 + best_lr_section(summary["best_lr"]) + "\n")
    return text + (f"\n## Paired tests (arms share each seed's batch order)\n\nDifference = other − reference per "
                   f"seed; p < {P_THRESHOLD} counts as detectable. Lower is better for losses and steps, higher for "
                   f"accuracy.\n\n{paired_table(summary['paired'])}\n")


def compare_card(cfg: CompareConfig, summary: dict) -> str:
    """The card of a comparison study.

    Args:
        cfg (`CompareConfig`): the settings.
        summary (`dict`): ``groups`` (per-arm results), ``paired`` (paired tests), ``best_lr``, ``metrics``,
            ``wall_seconds``, ``command``, and for ``--study optimal`` ``pilots`` (per lr: pilot and calibration).
    """
    groups = summary["groups"]
    datasets = [d for d in [hub_id(cfg.dataset)] if d]
    acts = "ReLU and tanh" if cfg.study == "init" else "ReLU"
    decay = ((f"weight decay {cfg.weight_decay:g} (torch SGD: lambda·w added to the gradient, biases included; "
              "with no momentum the same as decoupled decay by lr·lambda per step)") if cfg.weight_decay
             else "no weight decay")
    lrs = f"lr {cfg.lr}" if len(cfg.lrs) == 1 else "lrs " + ", ".join(f"{x:g}" for x in cfg.lrs)
    setting = (f"- dataset {cfg.dataset}; {acts} MLP, {cfg.depth} hidden layers of width {cfg.width}\n"
               f"- plain SGD (no momentum), {decay}, {lrs}, batch {cfg.batch_size}, {cfg.steps} steps\n"
               f"- seeds {cfg.seeds}, shared by every arm (each seed fixes the batch order and the init noise); "
               f"full-training-set loss evaluated every {cfg.eval_every} steps\n"
               f"- wall time {summary['wall_seconds'] / 60:.1f} min on this machine")
    finite = [g for g in groups if math.isfinite(g["final_train_loss_mean"])]
    best = min(finite, key=lambda g: g["final_train_loss_mean"])["arm"] if finite else "none (all diverged)"
    if cfg.study == "init":
        title = "Kaiming vs Xavier init under ReLU (tanh control)"
        intro = ("Tests the claim of *Weight Initialization and Variance Dynamics in Deep Neural Networks and Large "
                 "Language Models* that Kaiming (fan-in) init converges faster and more stably than Xavier under "
                 "ReLU. With tanh, Xavier is the matched rule and should hold its own. Kaiming is exactly √2 × "
                 "Xavier here, so with a learning-rate grid each arm is also compared at its own best lr.")
        extra = ""
    else:
        title = "Optimal init s0² = V(W) vs He-normal"
        intro = ("Reproduces the experiment of Horii & Has (arXiv 2508.12834): fully connected ReLU networks trained "
                 "with plain SGD, He-normal init vs init with s0² = V(W), the steady-state second moment of each "
                 "layer's weights measured in a He-normal pilot run (`pilot/`). `optimal-calibrated` uses the "
                 "fixed point of s0² = V(W) from `hf_varinit.calibrate` (`calibration/`). The paper reports lower "
                 "final training loss and higher test accuracy for s0² = V(W).")
        if cfg.alphas:
            intro += (" Scale control: `alpha-<a>` initialises every layer at a·V(W) (alpha-1 is `optimal`); "
                      "`head-alpha-<a>` keeps the hidden layers at He and sets only the head to a·V(W)_head "
                      "(head-alpha-1 is He with the head at V(W)_head). Paired tests use alpha-1 as the reference.")
        extra = _pilot_section(cfg, summary)
    body = f"""
# {title}

{intro}

## Settings

{setting}

## Results (mean ± std over {len(cfg.seeds)} seeds)

{arm_table(groups, cfg.target_losses)}

Lowest mean final training loss: **{best}**.
{_controls(cfg, summary)}
![loss curves](curves.png)
{extra}
Per-seed numbers: `results.csv`; loss curves: `curves.csv`; machine-readable: `summary.json`.

## Regenerate

```bash
{summary["command"]}
```
"""
    tags = ["initialization", "mlp", "kaiming", "xavier"] + (["optimal-variance"] if cfg.study == "optimal" else [])
    return study_card(tags=tags, datasets=datasets, body=body)
