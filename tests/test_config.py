"""Recipes: YAML plus key=value overrides, with typos rejected."""

from __future__ import annotations

import pytest

from pipeline.core.config import apply_overrides, list_recipes, load_recipe


def test_overrides_parse_yaml_values():
    cfg = load_recipe("sft-math", ["train.max_steps=20", "select.fraction=0.25", "eval.n_generate=4",
                                   "train.loss_params.tau=0.5", "select.keep=[0.1, 0.9]", "model=some/hub-id"])
    assert cfg["train"]["max_steps"] == 20
    assert cfg["select"]["fraction"] == 0.25
    assert cfg["train"]["loss_params"] == {"tau": 0.5}
    assert cfg["select"]["keep"] == [0.1, 0.9]
    assert cfg["model"] == "some/hub-id"


def test_unknown_keys_fail_loudly():
    with pytest.raises(KeyError, match="train.max_step"):
        load_recipe("sft-math", ["train.max_step=20"])
    with pytest.raises(KeyError, match="unknown section"):
        apply_overrides({"a": {}}, ["b.c=1"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({"a": 1}, ["a"])


def test_recipes_are_listed_with_descriptions():
    names = {r["name"]: r["description"] for r in list_recipes()}
    assert "sft-math" in names and names["sft-math"]


def test_unknown_recipe_names_known_ones():
    with pytest.raises(FileNotFoundError, match="sft-math"):
        load_recipe("no-such-recipe")
