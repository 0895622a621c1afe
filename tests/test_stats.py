"""Paired bootstrap statistics (pipeline.evaluation.stats) and the study report writer (pipeline.reports.study)."""

from __future__ import annotations

import math
import time

import numpy as np
import polars as pl
import pytest

from pipeline.evaluation.stats import compare, corpus_metrics, paired_nll_difference
from pipeline.reports.study import study_report, write_results


def _frame(nll: dict[str, np.ndarray], tok: np.ndarray, n_gen: int = 0,
           correct: dict[str, np.ndarray] | None = None) -> pl.DataFrame:
    """Per-example rows from per-token NLL arrays [seed, example] per variant (nll_sum = tok * nll)."""
    parts = []
    for v, per_token in nll.items():
        n_seeds, n = per_token.shape
        for s in range(n_seeds):
            acc = correct[v][s] if correct else np.zeros(n, dtype=bool)
            parts.append(pl.DataFrame({
                "variant": v, "seed": s, "id": [f"ex{i:04d}" for i in range(n)],
                "nll_sum": tok * per_token[s], "n_tokens": tok.astype(np.int64), "n_bytes": (4 * tok).astype(np.int64),
                "correct": pl.Series([bool(acc[i]) if i < n_gen else None for i in range(n)], dtype=pl.Boolean),
            }))
    return pl.concat(parts)


def _row(table: pl.DataFrame, variant: str) -> dict:
    return table.filter(pl.col("variant") == variant).row(0, named=True)


def test_corpus_metrics_are_ratios_of_sums():
    t = pl.DataFrame({"id": ["a", "b", "c"], "nll_sum": [2.0, 4.0, 6.0], "n_tokens": [1, 3, 4], "n_bytes": [4, 4, 4],
                      "generated": [True, True, False], "correct": [True, False, None]})
    m = corpus_metrics(t)
    assert m["nll"] == pytest.approx(12 / 8)
    assert m["bpb"] == pytest.approx(12 / (math.log(2) * 12))
    assert m["accuracy"] == 0.5 and m["n_generated"] == 2 and m["n_examples"] == 3
    assert corpus_metrics(t.drop("correct", "generated"))["accuracy"] is None


def test_identical_variants_differ_by_zero():
    rng = np.random.default_rng(1)
    tok = rng.integers(5, 50, 40)
    base = 2 + rng.normal(0, 0.5, (3, 40))
    acc = rng.random((3, 40)) < 0.4
    df = _frame({"base": base, "same": base.copy()}, tok, n_gen=20, correct={"base": acc, "same": acc})
    out = compare(df, "base", n_boot=300)
    for v in ("base", "same"):
        r = _row(out, v)
        for m in ("nll", "bpb", "accuracy"):
            assert r[f"d_{m}"] == 0 and r[f"d_{m}_lo"] <= 0 <= r[f"d_{m}_hi"]
            assert r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"]
    b = _row(out, "base")
    assert b["d_nll_lo"] == b["d_nll_hi"] == 0  # the baseline against itself: zero width
    assert (b["n_seeds"], b["n_examples"], b["n_generated"]) == (3, 40, 20)
    assert out.get_column("variant").to_list() == ["base", "same"]


def test_a_shifted_variant_is_detected_and_covered():
    rng = np.random.default_rng(2)
    tok = rng.integers(10, 80, 200)
    base = 2 + rng.normal(0, 0.6, 200)[None, :] + rng.normal(0, 0.1, (4, 200))
    shift = 0.05
    better = base - shift + rng.normal(0, 0.05, (4, 200))
    r = _row(compare(_frame({"base": base, "better": better}, tok), "base", n_boot=1000), "better")
    assert r["d_nll"] == pytest.approx(-shift, abs=0.01)
    assert r["d_nll_hi"] < 0 and r["d_nll_lo"] <= -shift <= r["d_nll_hi"]
    assert r["d_bpb"] == pytest.approx(-shift / (4 * math.log(2)), abs=0.01)  # 4 bytes per token
    assert r["d_bpb_hi"] < 0
    assert r["d_accuracy"] is None and r["accuracy"] is None  # nothing generated


def test_recovered_accuracy_share_when_some_replicates_have_no_oracle_gain():
    """Accuracy is a count: the oracle (4 more problems right) gains exactly 0 in some replicates, yet its CI
    excludes 0; the share of a variant that gets 2 of those 4 right stays a number in [0, 1], not `-`."""
    n = 160
    tok = np.full(n, 20)
    nll = {v: np.full((1, n), 1.0) for v in ("base", "oracle", "half")}
    base = np.zeros((1, n), dtype=bool)
    base[0, :60] = True
    oracle, half = base.copy(), base.copy()
    oracle[0, 60:64] = True
    half[0, 60:62] = True
    out = compare(_frame(nll, tok, n_gen=n, correct={"base": base, "oracle": oracle, "half": half}), "base",
                  n_boot=2000, oracle="oracle")
    gap = _row(out, "oracle")
    assert gap["d_accuracy_lo"] > 0
    r = _row(out, "half")
    assert r["recovered_accuracy"] == pytest.approx(0.5)
    assert 0 <= r["recovered_accuracy_lo"] < 0.5 < r["recovered_accuracy_hi"] <= 1


def test_recovered_share_of_the_oracles_gain():
    """A variant a third of the way from the baseline to the oracle recovers about 1/3 of its gain, recomputed
    independently from the corpus NLLs, with a CI that covers it; the baseline recovers 0, the oracle 1; an
    oracle no better than the baseline makes the share undefined (NaN), never a huge ratio."""
    rng = np.random.default_rng(3)
    tok = rng.integers(10, 80, 300)
    base = 2 + rng.normal(0, 0.6, 300)[None, :] + rng.normal(0, 0.05, (3, 300))
    oracle = base - 0.3 + rng.normal(0, 0.05, (3, 300))
    third = base - 0.1 + rng.normal(0, 0.05, (3, 300))
    out = compare(_frame({"base": base, "oracle": oracle, "third": third}, tok), "base", n_boot=800, oracle="oracle")

    def corpus(x):  # token-weighted NLL per seed, mean over seeds
        return float(np.mean((x * tok).sum(1) / tok.sum()))
    want = (corpus(third) - corpus(base)) / (corpus(oracle) - corpus(base))
    r = _row(out, "third")
    assert r["recovered_nll"] == pytest.approx(want, rel=1e-9) and 0.25 < want < 0.42
    assert r["recovered_nll_lo"] < want < r["recovered_nll_hi"] < 1
    assert _row(out, "base")["recovered_nll"] == 0 and _row(out, "oracle")["recovered_nll"] == pytest.approx(1)
    same = compare(_frame({"base": base, "oracle": base + rng.normal(0, 0.05, (3, 300)), "third": third}, tok),
                   "base", n_boot=300, oracle="oracle")
    assert math.isnan(_row(same, "third")["recovered_nll"])
    assert "recovered_nll" not in compare(_frame({"base": base, "third": third}, tok), "base", n_boot=50).columns
    with pytest.raises(ValueError, match="oracle variant 'clean' not in per_example"):
        compare(_frame({"base": base, "third": third}, tok), "base", n_boot=50, oracle="clean")


def test_ci_covers_the_true_difference_about_95_percent():
    """Examples and training seeds random, the effect varying per example: the truth is the population mean.

    Crossed resampling counts the seed x example noise twice (conservative: 99% with it dominant) and
    few seeds understate run-level seed effects (86% with 4 seeds when they dominate); this mix is in between."""
    rng = np.random.default_rng(3)
    n_sim, n_seeds, n, true_d = 200, 4, 120, -0.05
    covered = 0
    for k in range(n_sim):
        tok = rng.integers(5, 60, n)
        difficulty = rng.normal(2, 0.4, n)
        effect = rng.normal(true_d, 0.2, n)
        base = difficulty + rng.normal(0, 0.005, (n_seeds, 1)) + rng.normal(0, 0.1, (n_seeds, n))
        var = difficulty + effect + rng.normal(0, 0.005, (n_seeds, 1)) + rng.normal(0, 0.1, (n_seeds, n))
        r = _row(compare(_frame({"b": base, "v": var}, tok), "b", n_boot=300, seed=k), "v")
        covered += r["d_nll_lo"] <= true_d <= r["d_nll_hi"]
    assert 0.89 <= covered / n_sim <= 0.995, covered


def test_pairing_narrows_the_interval_for_correlated_noise():
    rng = np.random.default_rng(4)
    tok = rng.integers(10, 80, 150)
    difficulty = rng.normal(2, 0.8, 150)  # shared by both variants: cancels in the paired difference
    base = difficulty + rng.normal(0, 0.02, (3, 150))
    var = difficulty - 0.02 + rng.normal(0, 0.02, (3, 150))
    out = compare(_frame({"b": base, "v": var}, tok), "b", n_boot=500)
    b, v = _row(out, "b"), _row(out, "v")
    paired = v["d_nll_hi"] - v["d_nll_lo"]
    unpaired = math.hypot(b["nll_hi"] - b["nll_lo"], v["nll_hi"] - v["nll_lo"])
    assert paired < 0.2 * unpaired
    assert v["d_nll_hi"] < 0  # the paired CI detects the 0.02 improvement ...
    assert v["nll_hi"] > b["nll_lo"]  # ... that the two separate CIs, overlapping, cannot


def test_accuracy_difference_uses_the_generated_rows():
    tok = np.full(30, 10)
    nll = np.full((2, 30), 2.0)
    base_acc = np.zeros((2, 30), dtype=bool)
    base_acc[:, :5] = True  # 5/20 generated correct
    var_acc = np.zeros((2, 30), dtype=bool)
    var_acc[:, :15] = True  # 15/20
    out = compare(_frame({"b": nll, "v": nll}, tok, n_gen=20, correct={"b": base_acc, "v": var_acc}), "b", n_boot=400)
    v = _row(out, "v")
    assert v["accuracy"] == pytest.approx(0.75) and v["d_accuracy"] == pytest.approx(0.5)
    assert 0 < v["d_accuracy_lo"] <= 0.5 <= v["d_accuracy_hi"]
    assert v["n_generated"] == 20


def test_fixed_seed_is_deterministic():
    rng = np.random.default_rng(5)
    tok = rng.integers(5, 50, 30)
    df = _frame({"b": 2 + rng.normal(0, 0.3, (2, 30)), "v": 2 + rng.normal(0, 0.3, (2, 30))}, tok)
    assert compare(df, "b", n_boot=200, seed=7).equals(compare(df, "b", n_boot=200, seed=7))
    assert not compare(df, "b", n_boot=200, seed=7).equals(compare(df, "b", n_boot=200, seed=8))
    assert compare(df.reverse(), "b", n_boot=200, seed=7).equals(compare(df, "b", n_boot=200, seed=7))


def test_incomplete_or_unpaired_tables_are_refused():
    rng = np.random.default_rng(6)
    tok = rng.integers(5, 50, 10)
    df = _frame({"b": 2 + rng.normal(0, 0.3, (2, 10)), "v": 2 + rng.normal(0, 0.3, (2, 10))}, tok, n_gen=5)
    with pytest.raises(ValueError, match="baseline variant 'x'"):
        compare(df, "x")
    with pytest.raises(ValueError, match="lacks columns \\['n_bytes'\\]"):
        compare(df.drop("n_bytes"), "b")
    with pytest.raises(ValueError, match="variant 'v' seed 1 .*missing 1 \\['ex0003'\\]"):
        compare(df.filter(~((pl.col("variant") == "v") & (pl.col("seed") == 1) & (pl.col("id") == "ex0003"))), "b")
    with pytest.raises(ValueError, match="variant 'v' has seeds \\[0\\].*missing \\[1\\]"):
        compare(df.filter(~((pl.col("variant") == "v") & (pl.col("seed") == 1))), "b")
    with pytest.raises(ValueError, match="duplicated"):
        compare(pl.concat([df, df.head(1)]), "b")
    odd = df.with_columns(pl.when((pl.col("variant") == "v") & (pl.col("id") == "ex0007"))
                          .then(pl.lit(True)).otherwise(pl.col("correct")).alias("correct"))
    with pytest.raises(ValueError, match="same generated ids.*ex0007"):
        compare(odd, "b")


def test_paired_nll_difference_for_one_seed():
    rng = np.random.default_rng(8)
    n = 100
    tok = rng.integers(10, 60, n)
    ids = [f"q{i}" for i in range(n)]
    per_token = 2 + rng.normal(0, 0.5, n)
    base = pl.DataFrame({"id": ids, "nll_sum": tok * per_token, "n_tokens": tok, "n_bytes": 3 * tok})
    tuned = base.with_columns(pl.col("nll_sum") - 0.1 * pl.col("n_tokens") + pl.Series(rng.normal(0, 0.1, n)))
    out = paired_nll_difference(base, tuned, n_boot=500)
    assert out["d_nll"] == pytest.approx(-0.1, abs=0.02) and out["d_nll_hi"] < 0
    assert out["tuned_nll"] - out["base_nll"] == pytest.approx(out["d_nll"])
    assert out["d_bpb"] == pytest.approx(out["d_nll"] / (3 * math.log(2)))
    assert out["d_bpb_hi"] < 0 and out["n_examples"] == n and out["d_accuracy"] is None
    with pytest.raises(ValueError, match="not paired.*missing 1"):
        paired_nll_difference(base, tuned.tail(n - 1))


def test_compare_is_fast_at_study_scale():
    rng = np.random.default_rng(9)
    tok = rng.integers(20, 200, 500)
    nll = {f"v{k}": 2 + rng.normal(0, 0.3, (5, 500)) for k in range(10)}
    correct = {v: rng.random((5, 500)) < 0.3 for v in nll}
    df = _frame(nll, tok, n_gen=100, correct=correct)
    start = time.perf_counter()
    out = compare(df, "v0", n_boot=2000)
    assert time.perf_counter() - start < 5  # about a second at most on a shared 2-core machine
    assert out.height == 10


def _study(tmp_path, oracle=None):
    rng = np.random.default_rng(10)
    tok = rng.integers(10, 60, 20)
    base = 2 + rng.normal(0, 0.5, (2, 20))
    nll = {"full": base, "ifd-top": base - 0.1 + rng.normal(0, 0.02, (2, 20)), "random": base + rng.normal(0, 0.02, (2, 20))}
    correct = {v: rng.random((2, 20)) < 0.5 for v in nll}
    per_example = _frame(nll, tok, n_gen=10, correct=correct)
    runs = pl.DataFrame({"variant": [v for v in nll for _ in range(2)], "seed": [0, 1] * 3,
                         "steps": [100] * 6, "train_tokens": [250_000] * 6, "train_seconds": [61.0, 59.0] * 3,
                         "selector": [v for v in nll for _ in range(2)]})
    meta = {"command": "pipeline run study recipe.yaml", "machine": "test-box", "seeds": [0, 1], "test_size": 20,
            "date": "2025-01-01"}
    return write_results(tmp_path / "study", per_example, runs, "full", meta, n_boot=300, oracle=oracle), per_example


def test_results_with_an_oracle_say_the_share_of_its_gain_each_variant_recovers(tmp_path):
    res, _ = _study(tmp_path, oracle="ifd-top")
    md = open(res["paths"]["markdown"], encoding="utf-8").read()
    assert "## Share of the oracle's gain recovered (95% CI)" in md
    row = _row(pl.read_parquet(res["paths"]["results"]), "random")
    line = [x for x in md.splitlines() if x.startswith("| random |")][-1]  # the share table comes after
    assert line.startswith(f"| random | {row['recovered_nll']:.2f} [{row['recovered_nll_lo']:.2f}, ")
    assert line.endswith("| - |")  # accuracy: the oracle's own gain is not distinguishable from 0 here
    assert study_report(tmp_path / "study")["oracle"] == "ifd-top"


def test_write_results_writes_table_markdown_and_figure(tmp_path):
    res, per_example = _study(tmp_path)
    paths = res["paths"]
    table = pl.read_parquet(paths["results"])
    assert table.get_column("variant").to_list() == ["full", "ifd-top", "random"]
    assert {"d_nll", "d_nll_lo", "d_nll_hi", "bpb_lo", "accuracy_hi", "steps", "train_tokens", "train_seconds", "n_runs"} <= set(table.columns)
    assert _row(table, "ifd-top")["train_seconds"] == 60.0 and _row(table, "ifd-top")["selector"] == "ifd-top"
    assert pl.read_parquet(paths["per_example"]).equals(per_example)
    md = open(paths["markdown"], encoding="utf-8").read()
    for v in ("full (baseline)", "ifd-top", "random", "pipeline run study recipe.yaml", "test-box", "2025-01-01"):
        assert v in md
    assert "`full` is the baseline." in md
    assert "`ifd-top`: on NLL it beats the baseline" in md
    assert "`random`: on NLL it" in md and "on accuracy it" in md
    with open(paths["figure"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert res["rows"] == table.to_dicts()


def test_study_report_round_trips(tmp_path):
    res, _ = _study(tmp_path)
    folder = tmp_path / "study"
    report = study_report(folder)
    assert report["rows"] == res["rows"] and report["baseline"] == "full" and report["level"] == 0.95
    assert report["meta"]["command"] == "pipeline run study recipe.yaml"
    (folder / "study.json").write_text('{"variants": ["full", "ifd-top", "random"], "machine": "other"}')
    report = study_report(folder)
    assert report["meta"]["variants"] == ["full", "ifd-top", "random"] and report["meta"]["machine"] == "other"
    with pytest.raises(FileNotFoundError):
        study_report(tmp_path / "nothing")
