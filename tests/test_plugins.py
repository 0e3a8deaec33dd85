"""The library's public hooks (`hf_varinit.plugins`) as a checkout without the lab sees them: what the lab provides
is refused in one line that says where it lives and how to install it; the library's own commands are untouched."""

import pytest

import hf_varinit.plugins as plugins
from hf_varinit.calibrate import pilot_factory
from hf_varinit.cli.main import main
from hf_varinit.errors import ConfigError

INSTALL = "pip install -e experiments/"


@pytest.fixture
def no_lab(monkeypatch):
    """No distribution declares any hf_varinit entry point (the library installed alone)."""
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])


@pytest.mark.parametrize("argv", [["sweep", "--quick"], ["sweep", "--help"], ["sweep", "--threads", "1"],
                                  ["compare", "--study", "init"],
                                  ["compare", "--study", "optimal", "--dataset", "digits", "--seeds", "0"],
                                  ["compare", "--dataset", "digits", "--study", "optimal"],
                                  ["calibrate", "--model", "mlp", "--rounds", "1"]])
def test_a_lab_command_without_the_lab_is_one_line_that_says_how_to_install_it(no_lab, capsys, argv, tmp_path):
    assert main([*argv, *(["--output", str(tmp_path / "out")] if argv[0] == "calibrate" else [])]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hf-varinit ") and ": error: " in err
    assert "lab" in err and INSTALL in err
    assert not (tmp_path / "out").exists()


def test_the_help_without_the_lab_lists_only_the_library_commands(no_lab, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "compare" in out and "calibrate" in out and "sweep" not in out


def test_an_unknown_pilot_lists_the_library_pilots(no_lab):
    with pytest.raises(ConfigError, match=r"available: \['gpt2', 'llama'\]"):
        pilot_factory("gpt9")
    with pytest.raises(ConfigError, match=INSTALL):
        pilot_factory("mlp")


def test_lookups_of_names_nobody_provides():
    assert plugins.load_entry(plugins.STUDIES, "no-such-study") is None
    assert plugins.lab_missing(plugins.STUDIES, "no-such-study", "--study no-such-study") is None
    assert "no-such-group" not in plugins.LAB and plugins.entry_names("hf_varinit.no-such-group") == []
