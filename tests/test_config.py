"""Recipes: YAML plus key=value overrides, checked against typed sections and each part's parameters."""

from __future__ import annotations

import pytest

from pipeline.core.config import (
    ConfigError,
    apply_overrides,
    list_recipes,
    load_recipe,
    section_defaults,
)
from pipeline.flows.recipe import resolve_recipe


def test_overrides_parse_yaml_values_and_defaults_fill_in():
    cfg = load_recipe("sft-math", ["train.max_steps=20", "select.fraction=0.25", "eval.n_generate=4",
                                   "train.loss=talr", "train.loss_params.tau=0.5", "model=some/hub-id"])
    assert cfg["train"]["max_steps"] == 20
    assert cfg["select"]["fraction"] == 0.25
    assert cfg["train"]["loss_params"] == {"tau": 0.5}
    assert cfg["model"] == "some/hub-id"
    assert cfg["train"]["masked_thought"] == section_defaults("train")["masked_thought"]  # not in the file
    assert cfg["score"]["max_length"] == cfg["train"]["max_length"] == cfg["eval"]["max_length"] == 384


@pytest.mark.parametrize("override, key", [
    ("train.max_step=20", "train.max_step: unknown key (allowed here:"),
    ("data.n_train=0", "data.n_train: input should be greater than 0"),
    ("data.n_train=-3", "data.n_train: input should be greater than 0"),
    ("select.keep=[0.1,", "select.keep: value '[0.1,' is not valid YAML"),
    ("train.masked_thought.replace=foo", "train.masked_thought.replace: input should be 'random' or 'mask'"),
    ("train.lora.rank=8", "train.lora.rank: unknown key (allowed here: alpha, dropout, r, target_modules)"),
    ("score.executor=spark", "score.executor: input should be 'local' or 'ray'"),
    ("train.max_steps.x=1", "train.max_steps: input should be a valid integer"),
])
def test_mistakes_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_recipe("sft-math", [override])
    assert str(err.value).startswith(key)


@pytest.mark.parametrize("overrides, key", [
    (["train.loss_params.gama=2"], "train.loss_params.gama: ce has no parameter 'gama'"),
    (["train.loss=talr", "train.loss_params.tau=hot"], "train.loss_params.tau:"),
    (["train.loss=nope"], "train.loss: unknown loss 'nope'"),
    (["train.loss=no_such_module:Loss"], "train.loss: cannot load 'no_such_module:Loss'"),
    (["select.fraktion=0.3"], "select.fraktion: fraction has no parameter 'fraktion'"),
    (["select.column=ppl", "select.keep=0.5", "select.rule=quantile"], "select.keep:"),
    (["select.rule=top_k", "select.k=5", "select.order=sideways"], "select.order:"),
    (["score.params.ful_text=true"], "score.params.ful_text: perplexity has no parameter 'ful_text'"),
    (["flow=nope"], "flow: unknown flow 'nope'"),
    (["flow=os:system"], "flow: unknown flow 'os:system'"),
    (["select.column=pll"], "select.column: no score column 'pll' (the scorers write: nll, ppl, n_tokens)"),
    (["oracle=clean"], "oracle: only a study reads it (flow: study); the sft_math flow would ignore it"),
    (["seeds=[0,1]"], "seeds: only a study reads it"),
    (["variants=[{name: dft, train: {loss: dft}}]"], "variants: only a study reads it"),
])
def test_part_parameters_are_checked_before_anything_runs(overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve_recipe("sft-math", overrides)
    assert str(err.value).startswith(key)


def test_switching_the_rule_drops_the_old_rules_parameters():
    """The README's example: the recipe's `fraction` rule keys go, the shared `column` stays."""
    plan, notes = resolve_recipe("sft-math", ["select.rule=quantile", "select.keep=[0.1, 0.9]"])
    assert plan.recipe.select == {"rule": "quantile", "column": "ppl", "keep": [0.1, 0.9]}
    assert notes and "fraction, order" in notes[0]
    assert [type(s.selector).__name__ for s in plan.steps] == ["Quantile"]  # built once, when resolved
    plan, _ = resolve_recipe("sft-math", ["select.rule=top_k", "select.k=5"])
    assert plan.recipe.select == {"rule": "top_k", "column": "ppl", "k": 5, "order": "lowest"}  # shared keys stay
    with pytest.raises(ConfigError, match="select.fraction: quantile has no parameter"):
        resolve_recipe("sft-math", ["select.rule=quantile", "select.fraction=0.3"])  # given, so checked


def test_score_params_keyed_by_scorer_survive_a_narrower_scorer_list_and_typos_are_named():
    """study-full keys `score.params` by scorer: `--set score.scorer=[less]` runs less with its defaults
    (clear_confidence's entry is set aside, it does not run), while a key that names no scorer is an error."""
    losses_only = "variants=[{name: dft, train: {loss: dft}}]"
    plan, _ = resolve_recipe("study-full", ["score.scorer=[less]", losses_only])
    assert [(s.name, s.params) for s in plan.scorers] == [("less", {})]
    plan, _ = resolve_recipe("study-full", ["score.scorer=[less, clear_confidence]", losses_only])
    assert dict((s.name, s.params) for s in plan.scorers)["clear_confidence"] == {"k": 3, "max_new_tokens": 160}
    with pytest.raises(ConfigError, match="^score.params.clear_confidnce: no scorer 'clear_confidnce' runs"):
        resolve_recipe("study-full", ["score.params.clear_confidnce={k: 2}", losses_only])
    with pytest.raises(ConfigError, match="^score.params.less: expected the scorer's parameters as a mapping"):
        resolve_recipe("study-full", ["score.params.less=3", losses_only])


def test_apply_overrides_rejects_non_assignments():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({"a": 1}, ["a"])


def test_recipes_are_listed_with_descriptions(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "broken.yaml").write_text("name: [unclosed\n")
    monkeypatch.chdir(tmp_path)
    names = {r["name"]: r["description"] for r in list_recipes()}
    assert "sft-math" in names and names["sft-math"]
    assert names["broken"].startswith("(invalid:") and "broken.yaml:2: not valid YAML" in names["broken"]


def test_unknown_recipe_names_known_ones():
    with pytest.raises(FileNotFoundError, match="sft-math"):
        load_recipe("no-such-recipe")


def test_override_numbers_parse_as_numbers():
    cfg = load_recipe("sft-math", ["train.learning_rate=1e-4", "train.loss=talr", "train.loss_params.tau=1e1"])
    assert cfg["train"]["learning_rate"] == 1e-4 and cfg["train"]["loss_params"] == {"tau": 10.0}
