"""The run recipe: parsed once from a record's metadata, unknown fields stay unknown, old reports still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_varinit.record.recipe import RunRecipe
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.transfer import recipe_note

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = {"source": "training", "optimizer": "adamw", "lr": 1e-3, "lr_schedule": "constant", "warmup_steps": 30,
            "max_steps": 600, "weight_decay": 0.1, "momentum": 0.0, "batch_size": 8, "seed": 0}
MLP = {"source": "training", "optimizer": "sgd", "lr": 0.05, "weight_decay": 0.01, "batch_size": 64, "steps": 1500}


def test_a_pretrain_record_gives_the_whole_recipe():
    assert RunRecipe.from_metadata(PRETRAIN) == RunRecipe("adamw", 1e-3, "constant", 30, 600, 0.1, 0.0, 8)


def test_a_pretrain_record_from_before_lr_schedule_was_written_was_cosine():
    legacy = {k: v for k, v in PRETRAIN.items() if k != "lr_schedule"}
    assert RunRecipe.from_metadata(legacy).lr_schedule == "cosine"


@pytest.mark.parametrize("metadata", [
    MLP,  # an MLP study: its constant lr is not written down
    {"source": "trainer", "optimizer": "adamw_torch", "lr": 1e-3, "max_steps": 100},  # a VarianceCallback
    {"source": "training", "optimizer": "adamw", "lr": 1e-3, "warmup_steps": 10},  # no max_steps: not pretrain's
])
def test_a_record_that_does_not_give_its_schedule_leaves_it_unknown(metadata):
    recipe = RunRecipe.from_metadata(metadata)
    assert recipe.lr_schedule is None and recipe.schedule_text() == "unknown"
    assert "lr schedule unknown" in recipe.describe()


def test_the_mlp_studies_steps_are_the_runs_length_and_missing_fields_are_unknown():
    recipe = RunRecipe.from_metadata(MLP)
    assert (recipe.optimizer, recipe.lr, recipe.max_steps, recipe.weight_decay) == ("sgd", 0.05, 1500, 0.01)
    assert recipe.warmup_steps is None and recipe.momentum is None


def test_a_snapshot_of_weights_has_no_recipe():
    recipe = RunRecipe.from_metadata({**PRETRAIN, "source": "checkpoint"})
    assert not recipe.known and recipe.to_dict() is None and recipe.describe() == "training recipe unknown"


def test_values_of_the_wrong_type_are_unknown_not_guessed():
    recipe = RunRecipe.from_metadata({"source": "training", "optimizer": 3, "lr": "0.1", "warmup_steps": True,
                                      "max_steps": -5, "weight_decay": float("nan"), "lr_schedule": ""})
    assert not recipe.known


def test_to_dict_round_trips_and_an_old_four_field_recipe_loads():
    for recipe in (RunRecipe.from_metadata(PRETRAIN), RunRecipe.from_metadata(MLP)):
        assert RunRecipe.from_dict(recipe.to_dict()) == recipe
    old = {"optimizer": "adamw", "lr": 0.001, "lr_schedule": "cosine", "warmup_steps": 30}
    assert RunRecipe.from_dict(old) == RunRecipe("adamw", 0.001, "cosine", 30)
    assert RunRecipe.from_dict(None) == RunRecipe() == RunRecipe.from_dict({"a_field_of_a_newer_writer": 1})


def test_differences_compare_only_what_both_records_know():
    a, b = RunRecipe.from_metadata(PRETRAIN), RunRecipe.from_metadata({**PRETRAIN, "lr": 3e-3})
    assert a.differences(b) == [("lr", 1e-3, 3e-3)]
    assert a.differences(RunRecipe(optimizer="adamw")) == []  # unknown fields make no claim


def test_the_recipe_note_names_a_mismatch_and_makes_no_claim_on_unknowns():
    recipe = RunRecipe.from_metadata(PRETRAIN)
    assert "measured under adamw, lr 0.001, constant schedule" in recipe_note(recipe, optimizer="sgd")
    assert recipe_note(recipe, optimizer="AdamW", lr=1e-3) is None
    assert recipe_note(RunRecipe(lr=1e-3), optimizer="sgd") is None  # the optimizer is unknown
    assert recipe_note(RunRecipe(), optimizer="sgd", lr=0.1) is None and recipe_note(None, optimizer="sgd") is None


def test_the_bundled_reference_report_keeps_its_recipe():
    recipe = VarianceReport.load("gpt2-12l-tiny-qkv-dynamics").recipe
    assert (recipe.optimizer, recipe.lr, recipe.lr_schedule, recipe.warmup_steps) == ("adamw", 0.001, "cosine", 30)


def test_every_committed_report_loads_with_the_recipe_it_stored():
    files = sorted((ROOT / "model_cards").glob("**/steady_state.json"))
    for path in files:
        stored = json.loads(path.read_text()).get("recipe") or {}
        recipe = VarianceReport.load(path.parent).recipe
        for name, value in stored.items():
            assert getattr(recipe, name) == value, (path, name)
