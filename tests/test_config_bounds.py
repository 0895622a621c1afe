"""Issue 24, rules 2 and 3: names that become paths are one plain component, every number is bounded and
finite, scheduler names are checked, all before any stage runs; a diverged model is never published."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from pipeline.cli import main
from pipeline.core.config import MAX_NEW_TOKENS, MAX_ROWS


@pytest.mark.parametrize("override,key,expect", [
    ("train.learning_rate=.inf", "train.learning_rate", "finite"),
    ("train.learning_rate=.nan", "train.learning_rate", "finite"),
    ("train.epochs=.inf", "train.epochs", "finite"),
    ("train.epochs=1e9", "train.epochs", "less than or equal to 1000"),
    ("train.warmup_ratio=.nan", "train.warmup_ratio", "finite"),
    ("train.max_steps=-5", "train.max_steps", "greater than or equal to -1"),
    ("train.max_steps=1e12", "train.max_steps", "less than or equal"),
    ("train.batch_size=100000000", "train.batch_size", "less than or equal to 4096"),
    ("train.max_length=1e9", "train.max_length", "less than or equal to 131072"),
    ("data.n_train=1000000000", "data.n_train", f"less than or equal to {MAX_ROWS}"),
    ("data.n_test=1e12", "data.n_test", "less than or equal"),
    ("eval.max_new_tokens=1e12", "eval.max_new_tokens", f"less than or equal to {MAX_NEW_TOKENS}"),
    ("eval.max_new_tokens=1000000", "eval.max_new_tokens", "less than or equal"),
    ("eval.batch_size=1e9", "eval.batch_size", "less than or equal"),
    ("score.max_length=1e9", "score.max_length", "less than or equal"),
    ("score.shard_size=1e12", "score.shard_size", "less than or equal"),
    ("seed=-1", "seed", "greater than or equal to 0"),
    ("seed=4294967296", "seed", "less than or equal to 4294967295"),
    ("train.lr_scheduler=cosinus", "train.lr_scheduler", "unknown learning-rate scheduler"),
    ("select={rule: top_k, column: ppl, k: -3}", "select.k", "must be >= 0"),
    ("select={rule: fraction, column: ppl, fraction: .nan}", "select.fraction", "finite"),
    ("name=../../x", "name", "must be one plain folder name"),
    ("name=a/b", "name", "must be one plain folder name"),
    ("name=.hidden", "name", "must be one plain folder name"),
    ("name=a\\b", "name", "must be one plain folder name"),
])
def test_every_key_is_bounded_before_anything_runs(tmp_path, override, key, expect, cli_error):
    line = cli_error(["recipes", "--show", "sft-math", "--set", override])
    assert line.startswith(f"pipeline: error: {key}: ") and expect in line, line
    run_dir = tmp_path / "run"  # the same check ends `pipeline run` before a run folder exists
    assert cli_error(["run", "sft-math", "--run-dir", str(run_dir), "--set", override]) == line
    assert not run_dir.exists()


@pytest.mark.parametrize("name", ["../../etc/x", "recipes/../../x", ".hidden"])
def test_a_recipe_name_is_never_a_path_out_of_the_recipe_folders(name, cli_error):
    assert "no recipe file" in cli_error(["recipes", "--show", name])


def test_sane_values_still_pass(capsys):
    assert main(["recipes", "--show", "sft-math", "--set", "train.lr_scheduler=linear", "--set", "train.epochs=2.5",
                 "--set", "eval.max_new_tokens=512", "--set", "name=my-run_2", "--set", "seed=4294967295"]) == 0
    assert "lr_scheduler: linear" in capsys.readouterr().out


def _trainer(model, loss_history):
    return SimpleNamespace(model=model, state=SimpleNamespace(global_step=2, log_history=loss_history))


@pytest.mark.parametrize("poison,loss,expect", [
    (None, float("nan"), "the final loss (nan) is not finite"),
    ("nan", 0.5, "the final weights are not finite"),
    ("inf", float("inf"), "the final loss (inf) and weights are not finite"),
])
def test_a_diverged_model_is_never_saved(tmp_path, poison, loss, expect):
    from pipeline.core.config import TrainSection
    from pipeline.training.train import check_finite

    model = torch.nn.Linear(3, 2)
    check_finite(_trainer(model, []), 0.5, tmp_path, TrainSection())  # finite: passes
    if poison:
        with torch.no_grad():
            model.weight[0, 1] = float(poison)
    with pytest.raises(ValueError) as err:
        check_finite(_trainer(model, [{"step": 1, "loss": 3.0}]), loss, tmp_path, TrainSection(learning_rate=1.0))
    assert expect in str(err.value) and "lower train.learning_rate (now 1)" in str(err.value)
    assert "train_log.json" in str(err.value) and (tmp_path / "train_log.json").is_file()  # the log is kept
    assert not math.isfinite(loss) or poison


def test_training_with_a_huge_learning_rate_publishes_no_model(tmp_path, tiny_model_dir, cli_error):
    """Through the CLI on the tiny model: lr=1e30 diverges within two steps; exit 2, no model in the run."""
    import polars as pl

    subset = tmp_path / "subset.parquet"
    pl.DataFrame({"id": [f"i{i}" for i in range(4)], "prompt": ["What is 2+2?"] * 4,
                  "response": [f"It is {i}." for i in range(4)]}).write_parquet(subset)
    run = tmp_path / "run"
    line = cli_error(["run", "train-subset", "--run-dir", str(run), "--set", f"model={tiny_model_dir}",
                           "--set", f"cache_dir={tmp_path / 'cache'}", "--set", f"data.subset={subset}",
                           "--set", "train.learning_rate=1e30", "--set", "train.max_steps=3",
                           "--set", "train.batch_size=2", "--set", "train.max_length=32"])
    assert "training diverged" in line and "no model was saved" in line, line
    assert not (run / "model").exists() and (run / "config.yaml").is_file()  # the run and its config stay
    assert list((tmp_path / "cache" / "train").glob("*/train_log.json"))  # the loss log is kept
