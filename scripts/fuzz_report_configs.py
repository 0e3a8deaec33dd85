"""Fuzz the stored config of a report (``steady_state.json`` -> ``config``): a report read from the hub is untrusted.

Every input mutates one to three values inside ``config`` (every key the stored config has, and every key of the
model type's config class), with lists, nested objects, huge and negative numbers, NaN, strings and wrong types,
then loads the report and builds / plans the model from it. Each must succeed or raise the library's own error
(`HFVarInitError`) on one line; anything else is printed with its traceback and counted as a failure.

    python scripts/fuzz_report_configs.py --inputs 10000 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import torch
from transformers import AutoConfig

import hf_varinit as hv
from hf_varinit.errors import HFVarInitError

BUNDLED = "gpt2-12l-tiny-qkv-dynamics"
HOSTILE = [None, True, False, 0, -1, 1, 2, 3, 2**31, 2**63, 10**400, -(10**30), 0.5, -0.5, 1e308, -1e308,
           float("inf"), float("-inf"), float("nan"), "", "abc", "128", "1e3", "gelu", "none", [], [1], [1, 2, 3],
           ["a"], {}, {"a": 1}, {"n_embd": 64}, [[1]], {"": None}, "layers.0.q", 4096, 128, 12, 1e-9, -0.0]


def mutate(doc: dict, keys: list[str], rng: random.Random) -> tuple[dict, list[str]]:
    doc = json.loads(json.dumps(doc))
    changed = []
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(keys)
        op = rng.random()
        if op < 0.1:
            doc["config"].pop(key, None)
            changed.append(f"del {key}")
            continue
        value = rng.choice(HOSTILE) if op < 0.8 else rng.choice([rng.randint(-5, 10**6), rng.uniform(-1e6, 1e6),
                                                                 "x" * rng.randint(0, 8)])
        doc["config"][key] = value
        changed.append(f"{key}={value!r}"[:80])
    return doc, changed


def attempts(folder: Path, model) -> list:
    """The ways a user meets the stored config: load, plan against a model, build the report's model."""
    return [
        lambda: hv.VarianceReport.load(folder).variances(),
        lambda: hv.init_plan(model, f"optimal:report={folder}"),
        lambda: hv.init_plan(model, f"optimal:report={folder},width-transfer=fan-in"),
        lambda: hv.from_report(folder),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = hv.VarianceReport.load(BUNDLED).stats.path.parent / "steady_state.json"
    doc = json.loads(source.read_text())
    keys = sorted(set(doc["config"]) | set(AutoConfig.for_model(doc["model_type"]).to_dict()))
    rng = random.Random(args.seed)
    with torch.device("meta"):
        model = hv.from_report(BUNDLED)
    outcomes: collections.Counter = collections.Counter()
    failures = []
    start = time.time()
    work = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
    try:
        for i in range(args.inputs):
            mutated, changed = mutate(doc, keys, rng)
            folder = work / f"r{i}"  # a new folder each time: no report cache can answer for it
            folder.mkdir()
            (folder / "steady_state.json").write_text(json.dumps(mutated))
            try:
                with torch.device("meta"):
                    for attempt in attempts(folder, model):
                        attempt()
                outcomes["accepted"] += 1
            except HFVarInitError as exc:
                one_line = "\n" not in str(exc)
                outcomes["library error" if one_line else "library error over several lines"] += 1
                if not one_line:
                    failures.append((changed, f"{type(exc).__name__}: {exc}"))
            except Exception as exc:  # noqa: BLE001 (what the fuzzer is looking for)
                outcomes[f"foreign {type(exc).__name__}"] += 1
                failures.append((changed, traceback.format_exc(limit=-3)))
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for changed, what in failures[:10]:
        print(f"--- {changed}\n{what}")
    print(json.dumps({"inputs": args.inputs, "seed": args.seed, "keys": len(keys), "outcomes": dict(outcomes),
                      "failures": len(failures), "seconds": round(time.time() - start, 1)}))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
