"""``scripts/gpu_check.py``, the GPU acceptance test, kept from rotting on CPU.

``--device cpu --quick`` runs every path at a tiny size (1 layer x 64): the JSON must have the schema a GPU run
writes, every path that can run on a CPU must pass, and Accelerate's FSDP2 must say it was skipped for want of
CUDA (with the commands it would run). The helpers are tested on their own: the peak table, the host-transfer
counter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
CHECKS = {"precision", "recorder", "fsdp2", "compile"}


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


@pytest.fixture(scope="module")
def cpu_quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out),
                           "--work-dir", str(tmp / "work")], capture_output=True, text=True, env=env, timeout=600)
    return proc, out


@pytest.mark.slow
def test_cpu_quick_prints_one_json_and_writes_it(cpu_quick):
    proc, out = cpu_quick
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = json.loads(proc.stdout)  # stdout is the JSON alone; progress went to stderr
    assert printed == json.loads(out.read_text())
    assert printed["schema"] == "hf_varinit.gpu_check/1" and printed["mode"] == "quick"
    assert printed["device"]["type"] == "cpu" and printed["passed"] is True
    assert set(printed["checks"]) == CHECKS
    for name, check in printed["checks"].items():
        assert set(check) == {"status", "reason", "wall_s", "figures", "criteria", "error"}, name
        assert check["status"] in ("passed", "failed", "skipped") and check["error"] is None, name


@pytest.mark.slow
def test_every_cpu_path_passes_and_fsdp2_is_skipped_for_want_of_cuda(cpu_quick):
    checks = json.loads(cpu_quick[0].stdout)["checks"]
    for name in CHECKS - {"fsdp2"}:
        assert checks[name]["status"] == "passed", (name, checks[name])
        assert checks[name]["criteria"] and all(c["ok"] for c in checks[name]["criteria"]), name
    fsdp = checks["fsdp2"]
    assert fsdp["status"] == "skipped" and fsdp["reason"] == "needs CUDA"
    assert "--use_fsdp --fsdp_version 2" in fsdp["figures"]["commands"]["sharded"]
    assert fsdp["figures"]["commands"]["resume"].endswith("--resume")


@pytest.mark.slow
def test_cpu_figures(cpu_quick):
    checks = json.loads(cpu_quick[0].stdout)["checks"]
    precision = checks["precision"]["figures"]
    assert precision["fp32"]["autocast_dtype"] == ["float32"] and precision["bf16"]["autocast_dtype"] == ["bfloat16"]
    assert precision["fp16"]["autocast_dtype"] == ["float16"] and precision["fp16"]["scaler_skips"] == 0
    assert 0 < precision["bf16"]["var_rel_diff_max"] <= precision["tolerance"]["bf16"]  # the one step moved weights
    compile_ = checks["compile"]["figures"]
    for side in ("ours", "trainer", "bare"):
        assert compile_[side]["tokens_per_s"] > 0 and compile_[side]["compile_s"] > 0
        assert compile_[side]["mfu"] is None  # no CPU peak in the table
    assert compile_["ratio_ours_to_bare"] > 0 and compile_["flops_per_token"] > 0
    recorder = checks["recorder"]["figures"]
    assert recorder["host_transfers_per_record"] == 1 and recorder["transfer_calls"] == {"cpu": 1}
    assert recorder["cuda_syncs_per_record"] is None


def test_peak_table_reads_the_device_name():
    gpu_check = _module()
    assert gpu_check.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == ("H100", 989.4)
    assert gpu_check.peak_bf16_tflops("NVIDIA H100 PCIe") == ("H100 PCIe", 756.0)
    assert gpu_check.peak_bf16_tflops("NVIDIA H200") == ("H200", 989.4)
    assert gpu_check.peak_bf16_tflops("NVIDIA L40S")[1] == 362.0 and gpu_check.peak_bf16_tflops("NVIDIA L4")[1] == 121
    assert gpu_check.peak_bf16_tflops("Some Future GPU") is None


def test_host_transfer_counter_counts_reads_to_the_host_and_restores_tensor():
    gpu_check = _module()
    x = torch.arange(4.0)
    original = torch.Tensor.cpu
    with gpu_check.HostTransfers(cuda=False) as counter:
        x.sum().item()
        x.tolist()
        float(x[0])
        x.cpu().numpy()  # a CPU tensor's numpy() moves nothing: not counted
        x.to(torch.float64)  # no device change: not counted
    assert counter.calls == {"item": 1, "tolist": 1, "__float__": 1, "cpu": 1} and counter.count == 4
    assert torch.Tensor.cpu is original
