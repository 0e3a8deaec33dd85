"""The `hf-varinit` command line: plan, errors as one line with exit code 1, the demo's plumbing."""

import json

import pytest

from hf_varinit.cli.main import main


def test_plan_prints_the_per_tensor_table(capsys):
    assert main(["plan", "--model", "gpt2", "--n-layer", "12", "--n-embd", "256", "--rule", "kaiming"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:8] == ["name", "role", "layer", "slice", "fan_in", "fan_out", "distribution", "std"]
    q = next(line.split() for line in out if "h.11.attn.c_attn.weight" in line and " q " in line)
    assert q[3:6] == ["[:,", "0:256]", "256"]
    c_fc = next(line.split() for line in out if "h.0.mlp.c_fc.weight" in line)
    assert c_fc[3:5] == ["256", "1024"] and float(c_fc[6]) == pytest.approx((2 / 256) ** 0.5, rel=1e-4)


def test_plan_json_covers_every_tensor_of_a_llama(capsys):
    assert main(["plan", "--model", "llama", "--n-layer", "2", "--n-embd", "64", "--n-head", "4",
                 "--n-kv-heads", "2", "--rule", "xavier", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    k = next(r for r in rows if r["key"] == "layers.1.k")
    assert (k["fan_in"], k["fan_out"]) == (64, 32)
    assert k["std"] == pytest.approx((2 / (64 + 32)) ** 0.5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plan", "--rule", "bogus"], "unknown init rule 'bogus'; valid rules:"),
        (["plan", "--model", "mlp", "--n-head", "4"], "--n-head do(es) not apply to --model mlp"),
        (["plan", "--model", "gpt2", "--n-embd", "100", "--n-head", "3"], "cannot build --model gpt2"),
        (["report", "/nonexistent/run", "--output", "/tmp/x"], "cannot build a report"),
        (["pretrain", "--config", "no-such-config"], "does not exist; give a YAML path or a bundled config name"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_1(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
