"""The study flow: variants x seeds at equal compute, paired CIs vs the baseline, resumable after a kill."""

from __future__ import annotations

import json
import os
import signal

import polars as pl
import pytest

from pipeline.cli import main
from tests.test_flow_losses import _cli

SMALL = ["train.max_steps=2", "train.batch_size=4", "train.max_length=192", "data.n_train=16", "data.n_val=4",
         "data.n_test=8", "eval.n_generate=2", "eval.max_new_tokens=8", "eval.max_length=192", "score.max_length=192"]


def study_args(tmp_path, tiny_model_dir, run: str, *extra: str) -> list[str]:
    args = ["run", "study", "--run-dir", str(tmp_path / run)]
    for s in (f"model={tiny_model_dir}", f"cards_dir={tmp_path / 'cards'}", f"cache_dir={tmp_path / 'cache'}",
              "seeds=[0, 1]", "variants=[{name: dft, train: {loss: dft}}, {name: ppl-low, select: {rule: fraction, "
              "column: ppl, fraction: 0.5, order: lowest}}]", *SMALL, *extra):
        args += ["--set", s]
    return args


def test_study_compares_variants_with_paired_intervals(tmp_path, tiny_model_dir):
    assert main(study_args(tmp_path, tiny_model_dir, "s")) == 0
    run = tmp_path / "s"
    results = pl.read_parquet(run / "results.parquet")
    assert results.get_column("variant").to_list() == ["baseline", "dft", "ppl-low"]
    base = results.filter(pl.col("variant") == "baseline").row(0, named=True)
    assert base["d_nll"] == 0 and base["d_nll_lo"] == 0 and base["d_nll_hi"] == 0
    for row in results.iter_rows(named=True):
        assert row["nll_lo"] <= row["nll"] <= row["nll_hi"] and row["d_nll_lo"] <= row["d_nll"] <= row["d_nll_hi"]
    per_example = pl.read_parquet(run / "per_example.parquet")
    assert per_example.group_by("variant", "seed").len().get_column("len").to_list() == [8] * 6  # same 8 test ids
    assert per_example.group_by("variant").agg(pl.col("id").n_unique()).get_column("id").to_list() == [8, 8, 8]
    text = (run / "results.md").read_text()
    assert all(name in text for name in ("baseline", "dft", "ppl-low")) and (run / "results.png").exists()
    runs = json.loads((run / "metrics.json").read_text())["study"]
    assert {r["variant"] for r in runs} == {"baseline", "dft", "ppl-low"}
    # equal compute: every cell trained the same steps at the same batch
    cells = sorted((run / "cells").iterdir())
    assert len(cells) == 6
    assert {r["steps"] for r in results.iter_rows(named=True)} == {2}
    # compute by phase, each shared stage once: the sum is the sum of the recorded stage times
    minutes = json.loads((run / "study.json").read_text())["compute_minutes"]
    recorded = [json.loads(f.read_text())["seconds"] for f in (tmp_path / "cache").glob("*/*/stage_seconds.json")]
    kinds = {f.parent.parent.name for f in (tmp_path / "cache").glob("*/*/stage_seconds.json")}
    assert minutes["unrecorded"] == 0 and {"data", "scores", "selection", "train", "eval"} <= kinds
    assert all(seconds > 0 for seconds in recorded)  # minutes are rounded: a tiny model's evaluation reads 0.0
    assert minutes["total"] == pytest.approx(sum(recorded) / 60, abs=0.2)
    assert "**compute (minutes, each stage once, as timed when it ran)**: data" in text
    # a re-run reuses every stage and still reports what the study cost
    assert main(study_args(tmp_path, tiny_model_dir, "s")) == 0
    assert json.loads((run / "study.json").read_text())["compute_minutes"] == minutes


def test_inspect_reads_a_study_folder(tmp_path, tiny_model_dir, capsys):
    assert main(study_args(tmp_path, tiny_model_dir, "s", "seeds=[0]", "variants=[{name: dft, train: {loss: dft}}]")) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "s"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["baseline"] == "baseline" and [r["variant"] for r in report["rows"]] == ["baseline", "dft"]
    assert main(["inspect", str(tmp_path / "s")]) == 0
    assert "dft" in capsys.readouterr().out


def test_killed_study_resumes_and_finishes_only_the_rest(tmp_path, tiny_model_dir):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "SFT_PIPELINE_CRASH": "train:1"}
    args = study_args(tmp_path, tiny_model_dir, "s", "seeds=[0]", "train.save_steps=1")
    assert _cli(args, env, tmp_path / "log1.txt") == -signal.SIGKILL  # killed after the first checkpoint
    env.pop("SFT_PIPELINE_CRASH")
    assert _cli(args, env, tmp_path / "log2.txt") == 0, (tmp_path / "log2.txt").read_text()[-3000:]
    log = (tmp_path / "log2.txt").read_text()
    assert log.count("scored with") == 0  # the killed run's scores were complete: reused, not recomputed
    assert log.count("training on") == 3  # the interrupted cell resumed, the other two ran once
    done = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "train").glob("*/train_metrics.json")]
    assert sum(1 for m in done if m["resumed_from"]) == 1
    assert (tmp_path / "s" / "results.md").exists()


def test_a_variant_may_change_the_data_but_not_the_test_split(tmp_path, tiny_model_dir, capsys):
    """A data variant (here a larger pool) runs against the same test examples; one that moves the test
    split is refused before any cell trains."""
    from pipeline.core.registry import ConfigError
    from pipeline.flows.recipe import resolve_recipe
    from pipeline.flows.study import check_same_test, variant_plans

    sets = [f"model={tiny_model_dir}", f"cache_dir={tmp_path / 'cache'}", *SMALL,
            "variants=[{name: bigger, data: {n_train: 24}}, {name: other-test, data: {n_test: 6}}]"]
    plan, _ = resolve_recipe("study", sets)
    cells = variant_plans(plan.recipe)
    assert [p.recipe.data.n_train for _, p in cells] == [16, 24, 16]
    check_same_test(cells[:2], plan.recipe)  # a bigger pool keeps the baseline's test split
    with pytest.raises(ConfigError, match=r"variants\[1\]\.data: variant 'other-test' changes the test split"):
        check_same_test(cells, plan.recipe)
    assert main(study_args(tmp_path, tiny_model_dir, "t", "variants=[{name: other-test, data: {n_test: 6}}]")) == 2
    assert "changes the test split" in capsys.readouterr().err
    assert not (tmp_path / "t" / "cells").exists()  # refused before any cell ran


def test_a_noisy_pool_study_counts_the_noise_each_rule_kept(tmp_path, tiny_model_dir):
    """`data.noise` corrupts a share of the training rows; every cell reports how many it kept, by kind, and a
    clean-rows variant (`data: {noise: null}`) runs against the same test split."""
    variants = ("variants=[{name: ppl-low, select: {rule: fraction, column: ppl, fraction: 0.5, order: lowest}}, "
                "{name: clean, data: {noise: null}}]")
    args = study_args(tmp_path, tiny_model_dir, "n", "seeds=[0]", "data.noise={share: 0.5, kinds: [refusal, empty]}",
                      variants)
    assert main(args) == 0
    results = pl.read_parquet(tmp_path / "n" / "results.parquet")
    row = {r["variant"]: r for r in results.iter_rows(named=True)}
    assert row["baseline"]["noise_kept_all"] <= 8 and row["clean"].get("noise_kept_all") is None
    assert row["ppl-low"]["noise_kept_refusal"] + row["ppl-low"]["noise_kept_empty"] == row["ppl-low"]["noise_kept_all"]
    text = (tmp_path / "n" / "results.md").read_text()
    assert "## Noisy training rows kept" in text and "| variant | all | empty | refusal |" in text


def test_a_variant_that_names_its_scorers_drops_the_baselines_scorer_params():
    """`score.params` is keyed by scorer: a variant that changes `score.scorer` starts from its own params, so the
    baseline's params for a scorer it does not run are not an error; a variant that keeps the scorers merges them."""
    from pipeline.flows.recipe import resolve_recipe
    from pipeline.flows.study import variant_plans

    recipe = resolve_recipe("study-noisy")[0].recipe
    plans = dict(variant_plans(recipe))
    assert plans["baseline"].recipe.score.params["clear_confidence"] == {"k": 3, "max_new_tokens": 128}
    assert plans["clean-oracle"].recipe.score.scorer == ["perplexity"]
    assert plans["clean-oracle"].recipe.score.params == {}
    assert plans["ppl-low"].recipe.score.params == plans["baseline"].recipe.score.params


def test_compute_minutes_counts_each_stage_folder_once_by_phase():
    from pipeline.flows.study import compute_minutes

    stages = [{"kind": "data", "folder": "d", "seconds": 6.0, "reused": False},
              {"kind": "scores", "folder": "s", "seconds": 120.0, "reused": False},
              {"kind": "scores", "folder": "s", "seconds": 120.0, "reused": True},  # a second cell reuses them
              {"kind": "selection", "folder": "a", "seconds": 3.0, "reused": False},
              {"kind": "train", "folder": "t1", "seconds": 90.0, "reused": False},
              {"kind": "train", "folder": "t2", "seconds": 30.0, "reused": True},
              {"kind": "eval", "folder": "e", "seconds": None, "reused": True}]  # written before times were kept
    assert compute_minutes(stages) == {"data": 0.1, "scoring": 2.0, "selection": 0.1, "training": 2.0,
                                       "evaluation": 0.0, "total": 4.2, "unrecorded": 1}


def test_results_so_far_are_written_after_every_seed(tmp_path, tiny_model_dir, monkeypatch):
    """A study stopped in its second seed has results.md for the first, marked partial; the finished
    re-run reuses every cell and writes the whole table without the mark."""
    from pipeline.flows import study

    cell = study.study_cell

    def stop_in_seed_one(config, run_dir):
        if run_dir.endswith("seed1"):
            raise RuntimeError("stopped in seed 1")
        return cell(config=config, run_dir=run_dir)

    monkeypatch.setattr(study, "study_cell", stop_in_seed_one)
    args = study_args(tmp_path, tiny_model_dir, "s", "variants=[{name: dft, train: {loss: dft}}]")
    with pytest.raises(RuntimeError, match="stopped in seed 1"):
        main(args)
    run = tmp_path / "s"
    text = (run / "results.md").read_text()
    assert "**partial**: results of seeds [0] of [0, 1]" in text and "**seeds**: [0]" in text
    assert pl.read_parquet(run / "per_example.parquet").get_column("seed").unique().to_list() == [0]
    monkeypatch.setattr(study, "study_cell", cell)
    assert main(args) == 0
    text = (run / "results.md").read_text()
    assert "partial" not in text and "**seeds**: [0, 1]" in text
    assert sorted(pl.read_parquet(run / "per_example.parquet").get_column("seed").unique().to_list()) == [0, 1]


def test_noise_kept_does_not_count_a_corrected_row_as_kept_noise(tmp_path):
    """A corrupted row that a selector (CLEAR) replaced trains on the new response: it is counted under
    `corrected`, not as kept noise; kept corrupted rows count by kind, dropped ones not at all."""
    from pipeline.flows.study import noise_kept
    train = pl.DataFrame({"id": ["a", "b", "c", "d", "e"], "noise": [None, "refusal", "refusal", "swapped", "swapped"]})
    selection = pl.DataFrame({"id": ["a", "b", "c", "d", "e"], "kept": [True, True, True, False, True],
                              "new_response": [None, "fixed", None, None, None]})
    train.write_parquet(tmp_path / "t.parquet")
    selection.write_parquet(tmp_path / "s.parquet")
    assert noise_kept(str(tmp_path / "t.parquet"), str(tmp_path / "s.parquet")) == {
        "all": 2, "refusal": 1, "swapped": 1, "corrected": 1}
    selection.drop("new_response").write_parquet(tmp_path / "s.parquet")
    assert noise_kept(str(tmp_path / "t.parquet"), str(tmp_path / "s.parquet")) == {
        "all": 3, "refusal": 2, "swapped": 1}


def test_the_oracle_must_name_a_variant():
    """`oracle` names the variant whose gain is the room a rule has; a name no variant has is one error."""
    from pipeline.core.registry import ConfigError
    from pipeline.flows.recipe import resolve_recipe
    plan, _ = resolve_recipe("study-noisy", [])
    assert plan.recipe.oracle == "clean-oracle"
    with pytest.raises(ConfigError, match="^oracle: no variant named 'clean'"):
        resolve_recipe("study-noisy", ["oracle=clean"])


def test_seeds_run_apart_merge_into_the_study_that_ran_them_together(tmp_path, tiny_model_dir, capsys):
    """`pipeline merge` of a seed-0 and a seed-1 study gives the table of the study that ran both (same cells,
    same paired bootstrap), and refuses parts that are not one study."""
    variants = "variants=[{name: dft, train: {loss: dft}}]"
    assert main(study_args(tmp_path, tiny_model_dir, "both", variants)) == 0
    assert main(study_args(tmp_path, tiny_model_dir, "s0", variants, "seeds=[0]")) == 0  # cells reused
    assert main(study_args(tmp_path, tiny_model_dir, "s1", variants, "seeds=[1]")) == 0
    (tmp_path / "s1" / "runs.parquet").unlink()  # a study written before runs.parquet: its per-variant means
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "m"), str(tmp_path / "s1"), str(tmp_path / "s0")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m" / "results.md")
    both, merged = (pl.read_parquet(tmp_path / d / "results.parquet") for d in ("both", "m"))
    assert merged.columns == both.columns and merged.height == 2
    for a, b in zip(both.iter_rows(named=True), merged.iter_rows(named=True), strict=True):
        for key, value in a.items():
            assert b[key] == (pytest.approx(value, nan_ok=True) if isinstance(value, float) else value), key
    study = json.loads((tmp_path / "m" / "study.json").read_text())
    assert study["seeds"] == [0, 1] and sorted(study["merged_from"].values()) == [[0], [1]]
    assert "**seeds**: [0, 1]" in (tmp_path / "m" / "results.md").read_text()
    # not one study: a seed twice, other variants, an existing output
    assert main(study_args(tmp_path, tiny_model_dir, "other", "seeds=[1]")) == 0
    for args, message in (
        ([str(tmp_path / "m2"), str(tmp_path / "s0"), str(tmp_path / "both")], "seed 0 is in both"),
        ([str(tmp_path / "m3"), str(tmp_path / "s0"), str(tmp_path / "other")], "variants is ['baseline', 'dft', 'ppl-low']"),
        ([str(tmp_path / "m"), str(tmp_path / "s0"), str(tmp_path / "s1")], "results.parquet exists"),
        ([str(tmp_path / "m4"), str(tmp_path / "s0"), str(tmp_path / "nope")], "nope/results.parquet not found"),
    ):
        capsys.readouterr()
        assert main(["merge", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pipeline: error:") and message in err and "Traceback" not in err, err
