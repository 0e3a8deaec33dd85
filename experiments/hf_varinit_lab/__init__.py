"""hf_varinit's lab: the seed papers' reproductions on ReLU MLPs, apart from the library.

* `model`: the HF-native MLP classifier (``model_type="varinit_mlp"``); `arch`: its `hf_varinit.arch` table entry.
* `datasets`: UCI Wine, 8x8 digits, the MNIST subset (offline), MNIST / Fashion-MNIST (hub).
* `mlp_train`: plain-SGD training on in-memory tensors, with variance recording.
* `sweep`: the log sweep of the initial std and its stability band (``hf-varinit sweep``).
* `compare`, `controls`: Kaiming vs Xavier, He-normal vs s0² = V(W), with scale arms, lr grids and paired tests
  (``hf-varinit compare --study init|optimal``); `cards`, `control_cards`, `plots`: their reports.
* `calibrate_mlp`: the MLP pilot of the calibration s0² = V(W) (``hf-varinit calibrate --model mlp``).
* `study_settings`: the studies' settings as dataclasses (the flags of those commands); `results`: the resumable
  per-run cache and CSV text; `cli`: the entry points.
* `dynamics_trends`: exploratory depth trends of the Q/K/V dynamics (``python scripts/dynamics_seeds.py`` gives
  their intervals over seeds).

The lab imports the library; the library never imports the lab. It plugs into ``hf-varinit`` through the entry
points of ``experiments/pyproject.toml`` (`hf_varinit.plugins`), resolved when used: importing this package
registers nothing. Install from a checkout with ``pip install -e experiments/`` (``make install`` does).
"""
