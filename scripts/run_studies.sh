#!/usr/bin/env bash
# Regenerate the MLP study report folders under model_cards/ (CPU; one job at a time).
#
#   scripts/run_studies.sh            # all four default studies (~10-15 min each on 2 busy CPU cores)
#   scripts/run_studies.sh sweep      # one of: sweep, init, optimal, calibrate
#
# `hf-varinit <command>` and `python -m hf_varinit <command>` are the same; the module form works before the
# CLI entry point is installed. --threads 1: these small MLPs run fastest on one torch thread.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1
which_runs=${1:-all}

run() { echo "+ $*" >&2; /usr/bin/time -f "wall %e s" "$@"; }

if [[ $which_runs == all || $which_runs == sweep ]]; then
  run $PY -m hf_varinit sweep --threads 1 --output model_cards/sweep-relu-mlp
fi
if [[ $which_runs == all || $which_runs == init ]]; then
  run $PY -m hf_varinit compare --study init --dataset mnist-subset --threads 1 \
    --output model_cards/compare-kaiming-xavier-mnist-subset
fi
if [[ $which_runs == all || $which_runs == optimal ]]; then
  for ds in mnist-subset digits wine; do
    run $PY -m hf_varinit compare --study optimal --dataset $ds --threads 1 \
      --output model_cards/optimal-vs-he-$ds
  done
fi
if [[ $which_runs == all || $which_runs == calibrate ]]; then
  run $PY -m hf_varinit calibrate --model mlp --dataset mnist-subset --depth 3 --width 256 --lr 0.05 \
    --steps 1500 --record-every 15 --rounds 6 --tol 0.05 --threads 1 --output model_cards/mlp-calibrated-mnist-subset
fi
