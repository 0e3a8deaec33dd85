"""``--compile``: torch.compile of the model in the loop; the recorder reads the original parameters.

The compiled run uses the ``aot_eager`` backend (``HF_VARINIT_COMPILE_BACKEND``): Dynamo's graph capture and AOT
autograd as with inductor, without inductor's C++ code generation, which takes over a minute on a 2-core CI
machine. (By hand, inductor here: the same step-0 record, 7e-8 relative difference after 4 steps.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hf_varinit.cli.pretrain import parse_options
from hf_varinit.record.stats_file import load_stats
from hf_varinit.train.build import COMPILE_BACKEND_ENV
from hf_varinit.train.loop import run_pretrain

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "hf_varinit" / "configs" / "gpt2-tiny-test.yaml")
RUN = ["--max-steps", "3", "--record-every", "1", "--checkpoint-every", "none", "--eval-every", "none",
       "--disable-tqdm"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, imported by torch.compile
def test_compiled_run_records_the_same_statistics_and_reports_compile_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")
    cache = str(tmp_path / "cache")
    plain = run_pretrain(parse_options(["--config", TEST_CONFIG, "--output-dir", str(tmp_path / "plain"),
                                        "--cache-dir", cache, *RUN]))
    compiled = run_pretrain(parse_options(["--config", TEST_CONFIG, "--output-dir", str(tmp_path / "compiled"),
                                           "--cache-dir", cache, *RUN, "--compile"]))
    assert plain.compile_s is None and compiled.compile_s > 0
    assert f"compile      {compiled.compile_s:.1f} s" in capsys.readouterr().out
    a, b = load_stats(plain.stats_path), load_stats(compiled.stats_path)
    assert b.metadata["compile_s"] == pytest.approx(compiled.compile_s) and a.metadata.get("compile_s") is None
    assert a.keys == b.keys and a.step.tolist() == b.step.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(b.var[0], a.var[0])  # step 0: the same weights, read the same way
    np.testing.assert_array_equal(b.mean[0], a.mean[0])
    np.testing.assert_allclose(b.var, a.var, rtol=1e-5)
    assert not np.allclose(b.var[-1], b.var[0], rtol=1e-6)  # the compiled model's updates reach the recorded weights
    weights = load_file(compiled.final_dir / "model.safetensors")
    reference = load_file(plain.final_dir / "model.safetensors")
    assert weights.keys() == reference.keys()  # no "_orig_mod." prefix: the bare model is saved
    for name in reference:
        torch.testing.assert_close(weights[name], reference[name], rtol=1e-4, atol=1e-6)
    w = weights["transformer.h.1.attn.c_attn.weight"][:, 32:64]  # layer 1's K block, from the saved weights
    assert b.var[-1, b.index("layers.1.k")] == pytest.approx(torch.var(w, correction=0).item(), rel=1e-6)
    lines = compiled.metrics_path.read_text().splitlines()
    assert len(lines) == 3  # one line per step; the compile time is not one of them
