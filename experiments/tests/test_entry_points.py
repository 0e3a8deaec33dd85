"""The lab plugs into ``hf-varinit`` through its entry points only: listed from metadata, imported when used,
registering nothing by being imported; the MLP studies and the LM study share one ``compare`` command."""

import json
import subprocess
import sys

import pytest

from hf_varinit.cli.main import main
from hf_varinit.plugins import ARCHITECTURES, COMMANDS, PILOTS, STUDIES, entry_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_lab_declares_its_entry_points():
    assert "sweep" in entry_names(COMMANDS)
    assert {"init", "optimal"} <= set(entry_names(STUDIES))
    assert "mlp" in entry_names(PILOTS) and "varinit_mlp" in entry_names(ARCHITECTURES)


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_the_help_lists_the_lab_command_without_importing_the_lab():
    code = ("import sys\nfrom hf_varinit.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('hf_varinit_lab')))\n")
    assert _python(code) == "[]"


def test_importing_the_lab_registers_nothing():
    code = ("import importlib, pkgutil, hf_varinit_lab, hf_varinit_lab.cli\n"
            "for pkg in (hf_varinit_lab, hf_varinit_lab.cli):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__):\n"
            "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
            "from hf_varinit.arch import table\nfrom hf_varinit.calibrate import PILOT_FACTORIES\n"
            "print(sorted(PILOT_FACTORIES), 'varinit_mlp' in table.ARCHITECTURES)\n")
    assert _python(code) == "['gpt2', 'llama'] False"


@pytest.mark.slow
def test_compare_study_init_quick_runs_through_the_entry_point(tmp_path, capsys):
    out = tmp_path / "init"
    assert main(["compare", "--study", "init", "--quick", "--steps", "10", "--seeds", "0", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kaiming-relu" in printed and json.loads(printed.strip().splitlines()[-1])["output"] == str(out)
    assert (out / "README.md").is_file()


def test_study_lm_refuses_the_mlp_flags(capsys):
    assert main(["compare", "--study", "lm", "--config", "gpt2-tiny-test", "--arms", "gpt2", "--target-loss", "5",
                 "--dataset", "wine", "--depth", "2"]) == 1
    err = capsys.readouterr().err
    assert "--dataset, --depth" in err and "--study lm takes --config" in err
