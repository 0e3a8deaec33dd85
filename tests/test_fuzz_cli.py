"""Fuzzing the command line: hostile arguments to ``plan``, ``pretrain``, ``report`` and ``report --from-model``
end in exit code 1 with one ``hf-varinit <command>: error: ...`` line, no traceback, and no new file in the output
folder. Most cases call the CLI entry in-process (fast); a few run ``python -m hf_varinit`` for real.
Deterministic (``derandomize=True``)."""

import contextlib
import io
import itertools
import json
import os
import re
import struct
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel

import hf_varinit as hv
from hf_varinit.cli.main import main
from hf_varinit.errors import HFVarInitError

FUZZ = dict(derandomize=True, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
BUNDLED = "gpt2-12l-tiny-qkv-dynamics"
_COUNTER = itertools.count()


def _tree(folder):
    """The files under ``folder`` (an empty folder made before a refusal is not counted: pretrain makes its own)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def run_cli(argv, workdir):
    """``main(argv)`` in ``workdir``: (exit code, stderr, files created under ``workdir``)."""
    before = set(_tree(workdir))
    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refused the command line (exit 2, usage on stderr)
        code = exc.code
    finally:
        os.chdir(cwd)
    return code, err.getvalue(), sorted(set(_tree(workdir)) - before)


def assert_refused(argv, workdir, *, allow_success=False):
    """Exit code 1, one error line naming the command, no traceback, nothing written (or, if allowed, exit 0)."""
    code, err, created = run_cli(argv, workdir)
    assert "Traceback" not in err, err[-2000:]
    if code == 0 and allow_success:
        return code
    assert code == 1, (argv, code, err[-500:])
    lines = [line for line in err.splitlines() if line.startswith(f"hf-varinit {argv[0]}: error:")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-1000:]
    assert len(lines[0]) < 2000, lines[0][:300]
    assert created == [], created
    return code


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Bad inputs on disk: a file where a folder belongs, corrupt statistics, reports and checkpoints."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "afile").write_text("not a folder")
    (root / "random.safetensors").write_bytes(os.urandom(3000))
    (root / "pickle.safetensors").write_bytes(b"\x80\x04K\x01.")
    good = hv.load_stats(hv.VarianceReport.load(BUNDLED).stats.path)
    raw = good.save(root / "good.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    doc = json.loads((hv.VarianceReport.load(BUNDLED).stats.path.parent / "steady_state.json").read_text())
    for name, (field, value) in {"wide": ("n_embd", "abc"), "zero_heads": ("n_head", 0),
                                 "list_heads": ("n_head", [4])}.items():
        (root / name).mkdir()
        (root / name / "steady_state.json").write_text(json.dumps({**doc, "config": {**doc["config"], field: value}}))
    (root / "notjson").mkdir()
    (root / "notjson" / "steady_state.json").write_text("{nope")
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0,
                        eos_token_id=0)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(root / "model")
    for name, value in {"config_wide": "abc", "config_zero": 0}.items():  # config folders with a bad width
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps({**config.to_dict(), "n_embd": value}))
    return root


# --- plan -------------------------------------------------------------------------------------------------------
SPECS = ["kaiming", "hf", "optimal:report", "optimal:report=" + "a" * 5000, "normal:std=1e308", "normal:std=-1",
         "trunc_normal:cutoff=1e-300", "kaiming:a=1e308,nonlinearity=leaky_relu", "nosuch", "", ":", "x" * 3000,
         "optimal:report=<wide>", "optimal:report=<zero_heads>", "optimal:report=<notjson>", "optimal:report=<afile>",
         "optimal:report=<random.safetensors>", "optimal:report=" + BUNDLED, "xavier:gain=nan", "gpt2:std=1e400"]


@st.composite
def plan_argv(draw, root):
    argv = ["plan"]
    report = draw(st.sampled_from([None, None, "wide", "zero_heads", "list_heads", "notjson", "afile",
                                   "random.safetensors", "nope", BUNDLED]))
    if report is not None:
        argv += [f"--report={report if report == BUNDLED else root / report}"]
    if report is None or draw(st.booleans()):
        argv += ["--model=" + draw(st.sampled_from(["gpt2", "llama", "mlp", "bert", "gpt_neox", "qwen2", "nosuch",
                                                  str(root / "afile"), str(root / "model"), "a" * 300,
                                                  str(root / "config_wide"), str(root / "config_zero")]))]
    for flag, values in [("--n-layer", [-5, 0, 1, 2]), ("--n-embd", [-1, 0, 1, 7, 32, 10**20]),
                         ("--n-head", [-1, 0, 1, 3, 4]), ("--n-kv-heads", [0, 1, 3]), ("--vocab-size", [-1, 0, 64]),
                         ("--input-size", [0, 8]), ("--n-labels", [0, 3])]:
        if draw(st.integers(0, 3)) == 0:
            argv += [f"{flag}={draw(st.sampled_from(values))}"]  # one word: a value may start with '-'
    if draw(st.booleans()):
        spec = draw(st.sampled_from(SPECS) | st.text(max_size=12))
        argv += ["--rule=" + re.sub(r"<([\w.]+)>", lambda m: str(root / m.group(1)), spec)]  # <name>: that input
    argv += ["--head", draw(st.sampled_from(["lm", "base", "seq-cls"])), "--format", "json"]
    return argv


@pytest.mark.slow
@settings(max_examples=600, **FUZZ)
@given(st.data())
def test_plan_with_hostile_arguments_plans_or_exits_1(inputs, tmp_path, data):
    argv = data.draw(plan_argv(inputs))
    assume("\x00" not in "".join(map(str, argv)))  # the OS cannot take it as an argument
    assert_refused(argv, tmp_path, allow_success=True)


# --- report -----------------------------------------------------------------------------------------------------
BAD_RUNS = ["random.safetensors", "pickle.safetensors", "truncated.safetensors", "afile", "nope", "notjson", "wide"]
BAD_OPTIONS = {"--drift-tol": [-1, 0, "nan"], "--band": [0, -0.1, "nan"], "--window-fraction": [0, 1.5, "nan"],
               "--min-window": [1, 0, -3]}


@st.composite
def report_argv(draw, root, workdir):
    """A report command with at least one bad input: the run, the output or an analysis option."""
    bad = draw(st.sampled_from(["run", "output", "option"]))
    run = root / draw(st.sampled_from(BAD_RUNS)) if bad == "run" else root / "good.safetensors"
    output = root / "afile" / "out" if bad == "output" else workdir / f"out{next(_COUNTER)}"
    argv = ["report", run, "--output", output]
    if bad == "option" or draw(st.booleans()):
        flag = draw(st.sampled_from(sorted(BAD_OPTIONS)))
        argv += [f"{flag}={draw(st.sampled_from(BAD_OPTIONS[flag]))}"]
    if draw(st.booleans()):
        argv += ["--license=" + draw(st.sampled_from(["apache-2.0", "", "not a license", "a" * 300]))]
    return argv


@settings(max_examples=300, **FUZZ)
@given(st.data())
def test_report_with_a_bad_input_exits_1_and_writes_nothing(inputs, tmp_path, data):
    argv = data.draw(report_argv(inputs, tmp_path))
    assert_refused(argv, tmp_path)
    assert not os.path.exists(argv[3])


# --- report --from-model ----------------------------------------------------------------------------------------
CONFIG_SWAPS = ["abc", "128px", 0, -1, [4], None, 1e308, float("inf"), True, {}]


@pytest.mark.slow
@settings(max_examples=120, **FUZZ)
@given(st.data())
def test_report_from_a_corrupt_model_exits_1_and_writes_nothing(inputs, tmp_path, data):
    folder = tmp_path / f"model{next(_COUNTER)}"
    folder.mkdir()
    weights = bytearray((inputs / "model" / "model.safetensors").read_bytes())
    config = json.loads((inputs / "model" / "config.json").read_text())
    what = data.draw(st.sampled_from(["truncate", "header", "random", "config", "config_text", "no_weights"]))
    if what == "truncate":
        weights = weights[: data.draw(st.integers(0, len(weights) - 1))]
    elif what == "header":  # bytes of the length field or the JSON header changed
        end = 8 + struct.unpack("<Q", weights[:8])[0]
        for i in data.draw(st.lists(st.integers(0, end - 1), min_size=1, max_size=3)):
            weights[i] = data.draw(st.sampled_from([0x00, 0xFF, ord("{"), ord("]"), ord("9")]))
    elif what == "random":
        weights = bytearray(data.draw(st.binary(max_size=200)))
    elif what == "config":
        key = data.draw(st.sampled_from(["n_embd", "n_head", "n_layer", "vocab_size", "n_positions", "model_type"]))
        config[key] = data.draw(st.sampled_from(CONFIG_SWAPS))
    (folder / "config.json").write_text("{'not json" if what == "config_text" else json.dumps(config))
    if what != "no_weights":
        (folder / "model.safetensors").write_bytes(bytes(weights))
    output = tmp_path / f"out{next(_COUNTER)}"
    if assert_refused(["report", "--from-model", folder, "--output", output], tmp_path,
                      allow_success=what == "header") == 1:  # a changed byte of a tensor name may leave a valid file
        assert not output.exists()


def test_report_from_a_model_of_other_shapes_names_the_tensor(inputs, tmp_path):
    folder = tmp_path / "mismatch"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32)).save_pretrained(folder)
    config = json.loads((inputs / "model" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config))  # says n_embd 32, the weights are 64 wide
    code, err, created = run_cli(["report", "--from-model", folder, "--output", tmp_path / "out"], tmp_path)
    assert code == 1 and "shape" in err and "Traceback" not in err and created == []


# --- pretrain ---------------------------------------------------------------------------------------------------
PRETRAIN_BAD = [
    ["--n_layer", "0"], ["--n_embd", "0"], ["--n_head", "3"], ["--lr", "-1"], ["--lr", "nan"],
    ["--batch_size", "0"], ["--max_steps", "-1"], ["--init", "optimal:report"], ["--init", "normal:std=1e308"],
    ["--init", "nosuch"], ["--init", "a" * 5000], ["--init", f"optimal:report={BUNDLED}"], ["--config", "nosuch"],
    ["--block_size", "0"], ["--dropout", "2"], ["--vocab_size", "0"], ["--record_every", "0"],
    ["--mixed_precision", "fp17"], ["--optimizer", "nosuch"], ["--model_type", "bert"], ["--n_positions", "1"],
    ["--grad_accum", "0"], ["--warmup_steps", "-5"], ["--lr_schedule", "zigzag"], ["--n_kv_heads", "3"],
    ["--momentum", "-1"], ["--validation_fraction", "1.5"], ["--grad_clip", "-1"], ["--keep_last", "-1"],
    ["--on_nonfinite", "explode"], ["--max_chars", "0"],
    ["--seed", "-1"], ["--lr", "inf"], ["--weight_decay", "nan"], ["--momentum", "nan"],
    ["--n_embd", "100000000000000000000"],  # was: TypeError from torch (no upper bound on sizes)
]


@pytest.mark.parametrize("flags", PRETRAIN_BAD, ids=lambda f: " ".join(f)[:40])
def test_pretrain_with_a_bad_option_exits_1_before_writing(inputs, tmp_path, flags):
    argv = ["pretrain", "--config", "gpt2-tiny-test", "--max_steps", "1", "--output_dir", tmp_path / "run", *flags]
    assert_refused(argv, tmp_path)


def test_pretrain_into_a_file_exits_1(inputs, tmp_path):
    assert_refused(["pretrain", "--config", "gpt2-tiny-test", "--output_dir", inputs / "afile" / "run"], tmp_path)


def test_pretrain_with_a_yaml_syntax_error_is_one_line(inputs, tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    code, err, _ = run_cli(["pretrain", "--config", tmp_path / "bad.yaml", "--output_dir", tmp_path / "run"],
                           tmp_path)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def _rejected(spec):
    try:
        hv.get_rule(spec)
    except HFVarInitError:
        return True
    return False


@pytest.mark.slow
@settings(max_examples=30, **FUZZ)
@given(st.text(max_size=30).filter(lambda s: "\x00" not in s))
def test_pretrain_with_a_bad_init_spec_exits_1(tmp_path, spec):
    assume(_rejected(spec))
    argv = ["pretrain", "--config", "gpt2-tiny-test", "--max_steps", "1", "--output_dir", tmp_path / "run",
            "--init", spec]
    assert_refused(argv, tmp_path)


# --- real processes ---------------------------------------------------------------------------------------------
def _subprocess(argv, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, "-m", "hf_varinit", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["plan_non_integer_width", "report_from_corrupt_model"])
def test_real_process_prints_one_error_line_and_exits_1(inputs, tmp_path, case):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((inputs / "model" / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(os.urandom(1000))
    argv = {
        "plan_key_without_value": ["plan", "--rule", "optimal:report"],
        "report_from_corrupt_model": ["report", "--from-model", corrupt, "--output", tmp_path / "out"],
        "report_into_a_file": ["report", inputs / "good.safetensors", "--output", inputs / "afile" / "Y"],
        "plan_non_integer_width": ["plan", "--rule", f"optimal:report={inputs / 'wide'}"],
    }[case]
    before = _tree(tmp_path)
    proc = _subprocess(argv, tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"hf-varinit {argv[0]}: error: "), proc.stderr[-2000:]
    assert _tree(tmp_path) == before


def test_pretrain_with_a_bad_init_creates_no_output_folder(tmp_path):
    code, err, _ = run_cli(["pretrain", "--config", "gpt2-tiny-test", "--init", "nosuch", "--output_dir",
                            tmp_path / "run"], tmp_path)
    assert code == 1 and "unknown init rule" in err and not (tmp_path / "run").exists()
