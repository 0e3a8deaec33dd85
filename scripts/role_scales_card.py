"""The per-role scale baseline against the same-size pilot's V(W): a card from the runs of two `compare --study lm`.

The skeptic's question: is V(W) more than "embeddings and residual projections larger", which a handful of numbers
and no pilot could capture? A 2x2 grid of `gpt2:embedding_std=E,residual_scale=R` is run on a tuning seed (not an
evaluation seed); the best is run on the evaluation seeds 0-4 of `model_cards/lm-study-gpt2-12l`, whose `gpt2` and
`optimal-pilot` arms (same config, same data orders) it is paired with, by seed.

    python scripts/role_scales_card.py --grid runs/role-grid --eval runs/role-eval-scales \\
        --reference model_cards/lm-study-gpt2-12l --output model_cards/lm-study-gpt2-12l-role-scales
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pandas as pd

from hf_varinit.io_utils import write_folder
from hf_varinit.record.stats_file import load_stats
from hf_varinit.report.cost import run_cost
from hf_varinit.train.lm_study_runs import read_metrics
from hf_varinit.train.study_stats import paired_test


def final_eval(run: Path) -> float | None:
    frame = read_metrics(run / "metrics.jsonl").dropna(subset=["eval_loss"])
    return float(frame["eval_loss"].iloc[-1]) if len(frame) and (run / "final").is_dir() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", required=True, help="the grid study's folder (runs/<arm>/seed<N>/)")
    parser.add_argument("--eval", required=True, help="the best arm's study folder on the evaluation seeds")
    parser.add_argument("--reference", required=True, help="the committed LM study card with gpt2 / optimal-pilot")
    parser.add_argument("--grid-seed", type=int, default=100, help="the tuning seed of the grid")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    grid = {run.parent.name: final_eval(run) for run in sorted(Path(args.grid).glob(f"runs/*/seed{args.grid_seed}"))}
    grid = {arm: loss for arm, loss in grid.items() if loss is not None}
    (best_dir,) = Path(args.eval).glob("runs/*")
    best = {int(run.name.removeprefix("seed")): final_eval(run) for run in sorted(best_dir.glob("seed*"))}
    best = {s: v for s, v in best.items() if v is not None}
    spec = json.loads((Path(args.eval) / "study.json").read_text())["arms"][0]["spec"]
    reference = pd.read_csv(Path(args.reference) / "runs.csv")
    ref = {arm: dict(zip(rows["seed"], rows["final_eval_loss"])) for arm, rows in reference.groupby("arm")}
    seeds = sorted(best)
    table = pd.DataFrame({"seed": seeds, "gpt2": [ref["gpt2"][s] for s in seeds],
                          "optimal-pilot": [ref["optimal-pilot"][s] for s in seeds],
                          spec: [best[s] for s in seeds]})
    tests = []
    for name, a, b in (("role scales - gpt2", ref["gpt2"], best), ("pilot - role scales", best, ref["optimal-pilot"]),
                       ("pilot - gpt2", ref["gpt2"], ref["optimal-pilot"])):
        t = paired_test({s: a[s] for s in seeds}, {s: b[s] for s in seeds})
        tests.append({"difference": name, "seeds": t["n"], "mean": t["mean_diff"], "95% CI lo": t["t_lo"],
                      "95% CI hi": t["t_hi"], "paired t p": t["t_p"]})
    first = next(r for r in sorted(best_dir.glob("seed*")) if (r / "final").is_dir())
    one_run = run_cost(load_stats(first / "variance.safetensors").metadata)
    body = f"""---
library_name: hf_varinit
tags: [hf-varinit, initialization, language-model, init-study]
---

# Per-role scales of `gpt2` against the same-size pilot's V(W) (12-layer tiny GPT-2, 300 steps)

Is the pilot's gain more than "embeddings and residual projections larger"? The pilot's report
(`lm-study-gpt2-12l/pilot-reports/w128`) puts the token embedding at 3.1x and the residual projections at
2.1-4.3x `gpt2`'s std. A pilot-free baseline: `gpt2:embedding_std=E,residual_scale=R`.

## Grid (tuning seed 100, not an evaluation seed): final eval loss after 300 steps

{pd.DataFrame({"arm": list(grid), "final eval loss": list(grid.values())}).to_markdown(index=False, floatfmt=".4f")}

Arms: `e04` = embedding_std 0.04, `e06` = 0.06; `r2` / `r3` = residual_scale 2 / 3. Grid cost: {len(grid)} runs of
{one_run['tokens']:,} tokens ({one_run['flops']:.3g} FLOPs each, 6·N·tokens without the embedding tables). The best,
`{spec}`, was run on the evaluation seeds.

## Evaluation seeds, paired by seed with `lm-study-gpt2-12l` (same config, same data order per seed)

{table.to_markdown(index=False, floatfmt=".4f")}

{pd.DataFrame(tests).to_markdown(index=False, floatfmt=".4g")}

`gpt2` and `optimal-pilot` are the committed runs of `lm-study-gpt2-12l` (its `runs.csv`); rerun with this code, their
seeds 0-3 (`gpt2`) and 0-2 (`optimal-pilot`) reproduced the committed final eval losses to within 1e-6.
Seeds evaluated: {seeds}.

## Regenerate

```bash
hf-varinit compare --study lm --config gpt2-12l-lm-study --arms gpt2 gpt2:embedding_std=0.04,residual_scale=2 \\
  gpt2:embedding_std=0.04,residual_scale=3 gpt2:embedding_std=0.06,residual_scale=2 \\
  gpt2:embedding_std=0.06,residual_scale=3 --arm-names gpt2 e04-r2 e04-r3 e06-r2 e06-r3 --seeds 100 101 \\
  --steps 300 --target-loss 5.7 --output runs/role-grid      # stopped after seed 100
hf-varinit compare --study lm --config gpt2-12l-lm-study --arms "{spec}" --arm-names gpt2-role-scales \\
  --seeds 0 1 2 3 4 --steps 300 --target-loss 5.7 --output runs/role-eval-scales
{shlex.join(["python", "scripts/role_scales_card.py", *sys.argv[1:]])}
```
"""
    write_folder(args.output, {"README.md": lambda p: p.write_text(body),
                               "per_seed.csv": lambda p: table.to_csv(p, index=False)}, overwrite=True)
    print(table.to_string(index=False))
    print(pd.DataFrame(tests).to_string(index=False))


if __name__ == "__main__":
    main()
