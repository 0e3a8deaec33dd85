"""The Accelerate pretraining loop: options, recording, checkpoints, resume, DDP, failure modes.

Tiny runs (2 layers, n_embd 32, block 32) of configs/gpt2-tiny-test.yaml; in-process through
`run_pretrain` where possible, subprocesses only for `accelerate launch` and the kill/resume test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hf_varinit.cli import pretrain as pretrain_command
from hf_varinit.cli.main import main
from hf_varinit.cli.pretrain import parse_options
from hf_varinit.errors import ConfigError, NonFiniteLossError
from hf_varinit.record.stats_file import load_stats
from hf_varinit.train.checkpoint import COMPLETE, complete_checkpoints, find_latest_checkpoint
from hf_varinit.train.loop import run_pretrain
from hf_varinit.train.run_config import PretrainOptions, load_yaml_options

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "hf_varinit" / "configs" / "gpt2-tiny-test.yaml")
D = 32  # n_embd of the test config
BASE = ["--max-steps", "6", "--checkpoint-every", "3", "--record-every", "1", "--keep-last", "5"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tokenizer_cache"))


def pretrain(out: Path, cache_dir: str, *extra: str):
    return run_pretrain(parse_options(["--config", TEST_CONFIG, "--output-dir", str(out), "--cache-dir", cache_dir,
                                       *extra]))


def launch(cache_dir: str, out: Path, *launch_args: str, extra: tuple[str, ...] = ()) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "-m", "hf_varinit", "pretrain",
           "--config", TEST_CONFIG, "--output-dir", str(out), "--cache-dir", cache_dir, *BASE, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def qkv_stats(weights: dict[str, torch.Tensor], layer: int) -> dict[str, tuple[float, float]]:
    """(var, mean) of Q, K, V recomputed from a GPT-2 state dict: c_attn.weight column blocks."""
    w = weights[f"transformer.h.{layer}.attn.c_attn.weight"]
    blocks = {"q": w[:, :D], "k": w[:, D : 2 * D], "v": w[:, 2 * D :]}
    return {r: tuple(x.item() for x in torch.var_mean(b.float(), correction=0)) for r, b in blocks.items()}


def assert_stats_match(stats, step: int, weights: dict[str, torch.Tensor]) -> None:
    i = int(np.flatnonzero(stats.step == step)[0])
    for layer in (0, 1):
        for role, (var, mean) in qkv_stats(weights, layer).items():
            j = stats.index(f"layers.{layer}.{role}")
            assert stats.var[i, j] == pytest.approx(var, rel=1e-6), (step, layer, role)
            assert stats.mean[i, j] == pytest.approx(mean, rel=1e-5, abs=1e-9), (step, layer, role)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("base")
    return pretrain(out, cache_dir, *BASE)


# ----------------------------------------------------------------------------- options


def test_every_config_file_loads_against_the_options():
    files = sorted((ROOT / "hf_varinit" / "configs").glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        options = parse_options(["--config", str(path)])
        assert isinstance(options, PretrainOptions), path


def test_cli_flags_override_the_yaml():
    options = parse_options(["--config", TEST_CONFIG, "--lr", "3e-4", "--n-layer", "3", "--resume"])
    assert options.training.lr == 3e-4 and options.model.n_layer == 3 and options.training.resume
    assert options.model.n_embd == load_yaml_options(TEST_CONFIG)["n_embd"]


def test_unknown_yaml_key_is_a_config_error_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layers: 2\n")
    with pytest.raises(ConfigError, match=r"n_layers.*n_layer"):
        parse_options(["--config", str(bad)])
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        parse_options(["--config", str(bad)])


def test_block_size_larger_than_n_positions_is_a_config_error():
    with pytest.raises(ConfigError, match="n_positions"):
        parse_options(["--config", TEST_CONFIG, "--block-size", "64", "--n-positions", "32"])


def test_invalid_choice_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"adamw.*sgd"):
        parse_options(["--optimizer", "adam"])


def test_output_dir_not_writable_fails_before_any_work(tmp_path, cache_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="not writable"):
        pretrain(blocker / "run", cache_dir)


def test_resume_without_a_checkpoint_is_a_config_error(tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="no complete checkpoint.*without --resume"):
        pretrain(tmp_path, cache_dir, "--resume")
    assert main(["pretrain", "--config", TEST_CONFIG, "--output-dir", str(tmp_path), "--resume"]) == 1


def test_resume_with_changed_options_names_the_option(tmp_path, cache_dir):
    pretrain(tmp_path, cache_dir, "--max-steps", "3", "--checkpoint-every", "3")
    with pytest.raises(ConfigError, match=r"trained with lr=0\.001, now lr=0\.002"):
        pretrain(tmp_path, cache_dir, "--max-steps", "3", "--checkpoint-every", "3", "--resume", "--lr", "0.002")


def test_checkpoint_without_complete_marker_is_ignored(tmp_path):
    for step, complete in ((3, True), (9, False)):
        folder = tmp_path / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
        if complete:
            (folder / COMPLETE).write_text("")
    assert find_latest_checkpoint(tmp_path).name == "step_3"


# ----------------------------------------------------------------------------- one run


def test_statistics_equal_a_recomputation_from_checkpoint_weights(base_run):
    stats = load_stats(base_run.stats_path)
    assert stats.step.tolist() == list(range(7))  # the init (0), every step, the last step
    assert stats.metadata["source"] == "training" and stats.metadata["seed"] == 0
    for step in (3, 6):
        folder = base_run.output_dir / "checkpoints" / f"step_{step}"
        assert_stats_match(stats, step, load_file(folder / "model.safetensors"))
        assert load_stats(folder).step.tolist() == list(range(step + 1))  # records up to N in the checkpoint


def test_qkv_split_is_the_c_attn_column_blocks(base_run):
    stats = load_stats(base_run.stats_path)
    assert stats.info("layers.0.q")["slice"] == f"[:, 0:{D}]"
    assert stats.info("layers.0.k")["slice"] == f"[:, {D}:{2 * D}]"
    assert stats.info("layers.0.v")["slice"] == f"[:, {2 * D}:{3 * D}]"


def test_final_folder_loads_and_carries_the_rule(base_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_run.final_dir)
    assert model.config.varinit_rule == "gpt2"
    assert AutoTokenizer.from_pretrained(base_run.final_dir) is not None
    assert_stats_match(load_stats(base_run.stats_path), 6, dict(model.state_dict()))


def test_metrics_jsonl_has_one_line_per_step_and_eval(base_run):
    lines = [json.loads(line) for line in base_run.metrics_path.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "nonfinite_skips"} <= lines[0].keys()
    assert "eval_loss" in lines[2] and "eval_ppl" in lines[-1] and base_run.eval_loss == lines[-1]["eval_loss"]
    state = json.loads((base_run.output_dir / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["tokens"] == 3 * 4 * 32


# ----------------------------------------------------------------------------- resume, failures


@pytest.mark.slow
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, cache_dir):
    out = tmp_path / "run"
    with_dropout = ("--dropout", "0.1")  # dropout on: the restored RNG state matters
    full = pretrain(out, cache_dir, *BASE, *with_dropout)
    weights, stats = load_file(full.final_dir / "model.safetensors"), load_stats(full.stats_path)
    shutil.rmtree(out / "checkpoints" / "step_6")  # as if killed after the checkpoint at step 3
    shutil.rmtree(full.final_dir)
    stale = out / "checkpoints" / "step_7"  # incomplete: no COMPLETE marker, must be ignored
    stale.mkdir()
    (stale / "trainer_state.json").write_text(json.dumps({"step": 7}))
    with full.metrics_path.open("a") as fh:  # killed while writing a metrics line: the torn line is dropped
        fh.write('{"step": 7, "loss": 3.1')
    resumed = pretrain(out, cache_dir, *BASE, *with_dropout, "--resume")
    assert resumed.resumed_from.name == "step_3"
    again, stats2 = load_file(resumed.final_dir / "model.safetensors"), load_stats(resumed.stats_path)
    assert weights.keys() == again.keys()
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert np.array_equal(stats.step, stats2.step)
    for name in ("mean", "var", "second_moment"):
        assert np.array_equal(getattr(stats, name), getattr(stats2, name))
    steps = [json.loads(line)["step"] for line in resumed.metrics_path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_naming_the_step_and_keeps_the_stats(tmp_path, cache_dir):
    with pytest.raises(NonFiniteLossError, match=r"at step \d+") as info:
        pretrain(tmp_path, cache_dir, *BASE, "--lr", "1e30", "--grad-clip", "0", "--warmup-steps", "0")
    stats = load_stats(tmp_path / "variance.safetensors")
    assert stats.step[0] == 0 and np.isfinite(stats.var).all()
    nan_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert stats.step[-1] < nan_step  # records of weights that gave a finite loss only
    argv = ["pretrain", "--config", TEST_CONFIG, "--output-dir", str(tmp_path / "again"), "--cache-dir", cache_dir,
            "--lr", "1e30", "--warmup-steps", "0"]
    assert main(argv) == 1


def test_on_nonfinite_skip_counts_the_skipped_steps(tmp_path, cache_dir):
    result = pretrain(tmp_path, cache_dir, "--max-steps", "4", "--lr", "1e30", "--warmup-steps", "0",
                      "--on-nonfinite", "skip", "--checkpoint-every", "none")
    assert result.step == 4 and result.nonfinite_skips >= 1
    last = json.loads(result.metrics_path.read_text().splitlines()[-1])
    assert last["nonfinite_skips"] == result.nonfinite_skips


def test_bf16_runs_on_cpu_with_float32_master_weights(tmp_path, cache_dir):
    result = pretrain(tmp_path, cache_dir, "--max-steps", "3", "--mixed-precision", "bf16",
                      "--checkpoint-every", "none")
    stats = load_stats(result.stats_path)
    assert stats.metadata["mixed_precision"] == "bf16" and np.isfinite(stats.var).all()
    weights = load_file(result.final_dir / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert_stats_match(stats, 3, weights)


# ----------------------------------------------------------------------------- entry points


@pytest.mark.slow
def test_accelerate_launch_entry_point_runs(tmp_path, cache_dir, base_run):
    launch(cache_dir, tmp_path, "--cpu", "--num_processes", "1")
    a = load_file(tmp_path / "final" / "model.safetensors")
    b = load_file(base_run.final_dir / "model.safetensors")
    for k in a:  # same seed, same code path as in-process (thread counts may differ: float tolerance)
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, cache_dir, base_run):
    launch(cache_dir, tmp_path, "--multi_gpu", "--num_processes", "2")
    stats = load_stats(tmp_path / "variance.safetensors")
    assert stats.metadata["world_size"] == 2 and stats.step.tolist() == list(range(7))
    ddp = load_file(tmp_path / "final" / "model.safetensors")
    assert_stats_match(stats, 6, ddp)  # the one stats file is the main process's final weights
    single = load_file(base_run.final_dir / "model.safetensors")
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.glob("**/variance.safetensors.*"))  # no stray second writer


@pytest.mark.slow
def test_kill_and_resume_twice_is_bit_identical(tmp_path, cache_dir):
    cmd = [sys.executable, str(ROOT / "scripts" / "kill_resume.py"), "--kills", "2", "--max-steps", "12",
           "--checkpoint-every", "3", "--seed", "0", "--workdir", str(tmp_path), "--cache-dir", cache_dir]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK: bit-identical" in proc.stdout


# ----------------------------------------------------------------------------- the console, help


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "hf_varinit", "pretrain", "--config", TEST_CONFIG, *args]
    env = {**{k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_console_has_no_known_warnings_and_resume_says_where_it_starts(tmp_path, cache_dir):
    common = ("--output-dir", str(tmp_path), "--cache-dir", cache_dir, "--checkpoint-every", "2")
    first = _run_cli(*common, "--max-steps", "3")
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-3000:]
    assert "loss_type" not in output and "Removed shared tensor" not in output
    assert "it/s" in output  # the progress bar is there, only the warnings are gone
    assert re.search(r"eval loss \d+\.\d{3} \(ppl \d+\.\d\)", first.stdout)  # rounded, not 6.205443382263184
    assert f"checkpoints  {tmp_path / 'checkpoints'}" in first.stdout
    second = _run_cli(*common, "--max-steps", "4", "--resume", "--disable-tqdm")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from step 3 (checkpoint {tmp_path / 'checkpoints' / 'step_3'})" in second.stdout
    assert "it/s" not in second.stdout + second.stderr and "Tokenizing" not in second.stderr


def test_tqdm_disable_env_turns_the_progress_bar_off(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    pretrain(tmp_path, cache_dir, "--max-steps", "2", "--checkpoint-every", "none")
    captured = capsys.readouterr()
    assert "pretrain:" not in captured.err and "it/s" not in captured.err
    assert "checkpoints" not in captured.out  # none written: no checkpoints path
    assert "final model" in captured.out


def test_checkpoint_saves_drop_the_shared_tensor_warning(tmp_path, cache_dir, caplog):
    pretrain(tmp_path, cache_dir, "--max-steps", "2", "--checkpoint-every", "1")
    assert not [r for r in caplog.records if "Removed shared tensor" in r.getMessage()]
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [1, 2]


@pytest.mark.slow
def test_a_finished_run_continues_to_a_larger_max_steps(tmp_path, cache_dir, capsys):
    finished = pretrain(tmp_path, cache_dir, "--max-steps", "4", "--checkpoint-every", "3", "--keep-last", "5")
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [3, 4]  # the last step is checkpointed
    continued = pretrain(tmp_path, cache_dir, "--max-steps", "6", "--checkpoint-every", "3", "--keep-last", "5",
                         "--resume")
    assert continued.resumed_from.name == "step_4" and continued.step == 6
    assert continued.tokens == 6 * 4 * 32 and finished.tokens == 4 * 4 * 32
    assert "max_steps 4 -> 6: the warmup + cosine schedule is rebuilt over 6 steps" in capsys.readouterr().out
    lines = [json.loads(line) for line in continued.metrics_path.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    lr = {x["step"]: x["lr"] for x in lines}
    assert lr[4] == pytest.approx(0.0, abs=1e-12) and lr[5] > 0.1 * 1e-3  # the rebuilt cosine: lr rises again
    stats = load_stats(continued.stats_path)
    assert stats.step.tolist() == [0, 2, 4, 6] and stats.metadata["max_steps"] == 6
    with pytest.raises(ConfigError, match=r"max_steps=6, now max_steps=5.*may grow"):
        pretrain(tmp_path, cache_dir, "--max-steps", "5", "--checkpoint-every", "3", "--resume")


def test_every_pretrain_option_has_help_and_shows_its_default():
    parser = argparse.ArgumentParser(prog="hf-varinit pretrain")
    pretrain_command.add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {"--disable-tqdm", "--max-steps", "--resume", "--report-to", "--config"} <= \
        {s for a in options for s in a.option_strings}
    for action in options:
        assert action.help and "(default: " in action.help, action.option_strings
    text = " ".join(parser.format_help().split())  # argparse wraps the lines
    assert "rebuilt over the new max_steps" in text and "TQDM_DISABLE" in text
