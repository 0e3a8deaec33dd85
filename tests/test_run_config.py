"""Pretraining options: the dataclasses and YAML configs (`hf_varinit.train.run_config`) and the one
dataclass -> flags -> values path of the command line (`hf_varinit.cli.flags`)."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hf_varinit.cli.flags import FlagParser, add_dataclass_flags, flag_values
from hf_varinit.cli.pretrain import parse_options
from hf_varinit.errors import ConfigError
from hf_varinit.train.run_config import TrainingOptions, build_options, command_line, config_values

TEST_CONFIG = "gpt2-tiny-test"


@dataclass
class Settings:
    """A dataclass of every kind of field the flags handle."""

    name: str = field(default="a", metadata={"help": "a name", "choices": ("a", "b")})
    steps: int | None = field(default=600, metadata={"help": "steps (none: use epochs)"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "seeds"})
    widths: list[int] | None = field(default=None, metadata={"help": "widths", "shown": "--width"})
    overwrite: bool = field(default=False, metadata={"help": "replace"})


def _parse(argv: list[str]) -> dict:
    parser = FlagParser(prog="test")
    add_dataclass_flags(parser, Settings)
    return flag_values(parser.parse_args(argv), Settings)


def test_only_the_flags_typed_are_values_and_a_typed_none_is_one():
    assert _parse([]) == {}
    assert _parse(["--lr", "3e-4", "--seeds", "1", "2", "3"]) == {"lr": 3e-4, "seeds": [1, 2, 3]}
    assert _parse(["--steps", "none"]) == {"steps": None}


def test_bool_flags_read_on_a_word_and_off():
    assert _parse(["--overwrite"]) == {"overwrite": True}
    assert _parse(["--overwrite", "false"]) == {"overwrite": False}
    assert _parse(["--no-overwrite"]) == {"overwrite": False}


def test_a_flag_parser_raises_config_error_naming_the_flag():
    with pytest.raises(ConfigError, match="--name: invalid choice: 'c'"):
        _parse(["--name", "c"])
    with pytest.raises(ConfigError, match="--lr: invalid float value: 'fast'"):
        _parse(["--lr", "fast"])
    with pytest.raises(ConfigError, match="--overwrite: invalid bool value: 'maybe'"):
        _parse(["--overwrite", "maybe"])


def test_every_flag_shows_its_default_in_the_help():
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, Settings, group="settings")
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings and a.dest != "help"}
    assert helps["--lr"] == "learning rate (default: 0.001)"
    assert helps["--seeds"].endswith("(default: 0 1)") and helps["--widths"].endswith("(default: --width)")
    assert helps["--overwrite"].endswith("(default: off)") and helps["--no-overwrite"].endswith("(default: off)")
    assert helps["--steps"].endswith("(default: 600)")


def test_yaml_values_take_their_options_types():
    values = config_values(TEST_CONFIG)
    assert isinstance(values["n_layer"], int) and isinstance(values["lr"], float)


def test_a_yaml_value_of_the_wrong_type_names_file_key_and_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layer: two\ntraining:\n  lr: 1e-3\n")  # YAML reads 1e-3 as text: fine
    with pytest.raises(ConfigError, match=r"bad.yaml: n_layer='two' is not an integer"):
        build_options(bad)
    bad.write_text("training:\n  lr: 1e-3\n  checkpoint_every: none\n  compile: 1\n")
    with pytest.raises(ConfigError, match=r"compile=1 is not true or false"):
        build_options(bad)
    bad.write_text("training:\n  lr: 1e-3\n  checkpoint_every: none\n")
    options = build_options(bad)
    assert options.training.lr == 1e-3 and options.training.checkpoint_every is None


def test_build_options_puts_values_over_the_config_and_the_flags_do_the_same():
    options = build_options(TEST_CONFIG, max_steps=4, checkpoint_every=None, init="kaiming")
    t = options.training
    assert (t.max_steps, t.checkpoint_every, t.init) == (4, None, "kaiming")
    assert parse_options(["--config", TEST_CONFIG, "--max-steps", "4", "--checkpoint-every", "none",
                          "--init", "kaiming"]) == options
    assert parse_options(["--config", TEST_CONFIG, "--resume", "true"]).training.resume is True


def test_command_line_regenerates_the_options():
    options = build_options(TEST_CONFIG, max_steps=4, compile=True, grad_clip=None)
    words = command_line(options).split()
    assert words[:2] == ["hf-varinit", "pretrain"] and "--compile" in words
    assert parse_options(words[2:]) == options


def test_unknown_options_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['learning_rate'\]"):
        build_options(learning_rate=1.0)
    with pytest.raises(ConfigError, match="unrecognized arguments: --learning-rate"):
        parse_options(["--learning-rate", "1"])


def test_argparse_is_imported_only_under_cli():
    package = Path(__file__).resolve().parents[1] / "hf_varinit"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if "cli" in path.relative_to(package).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            if any(n and n.split(".")[0] in ("argparse", "transformers") and
                   (n == "argparse" or "HfArgumentParser" in ast.unparse(node)) for n in names):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not offenders and not hasattr(TrainingOptions, "_argument_group_name"), offenders


def test_pretrain_help_loads_neither_torch_nor_transformers():
    code = ("import sys, runpy\n"
            "sys.argv = ['hf_varinit', 'pretrain', '--help']\n"
            "try:\n    runpy.run_module('hf_varinit', run_name='__main__')\n"
            "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--max-steps" in out and out.strip().splitlines()[-1] == "[]", out[-500:]
