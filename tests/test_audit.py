"""The audit: AUROC of each score per canary kind, with CIs and direction, and the `audit` flow end to end."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.cli import main
from pipeline.evaluation.audit import (
    SELECTION_ROW,
    audit_table,
    bootstrap_auroc,
    rank_auroc,
    recall_at_budget,
)


def test_rank_auroc_is_the_probability_a_positive_outranks_a_negative():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 70).round(1)  # rounding makes ties
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert rank_auroc(pos, neg) == pytest.approx(pairs)
    assert rank_auroc(pos, neg) == pytest.approx(roc_auc_score(np.r_[np.ones(40), np.zeros(70)], np.r_[pos, neg]))
    batch = rank_auroc(np.stack([pos, neg[:40]]), np.stack([neg, np.r_[pos, pos][:70]]))
    assert batch[0] == pytest.approx(pairs) and batch[1] < 0.5  # row-wise, for the bootstrap


def test_bootstrap_interval_covers_the_truth_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    true = 0.76  # AUROC of N(1,1) vs N(0,1): Phi(1 / sqrt(2))
    widths = []
    for n in (30, 300):
        y = np.r_[np.ones(n), np.zeros(n)].astype(int)
        x = np.r_[rng.normal(1, 1, n), rng.normal(0, 1, n)]
        lo, hi = bootstrap_auroc(y, x, "high", 500, seed=0)
        assert lo < true < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_recall_at_budget_counts_the_kind_among_the_most_flagged_rows():
    x = np.array([9.0, 1.0, 8.0, 2.0, 7.0, 3.0])
    kind = np.array([True, False, True, False, False, False])
    assert recall_at_budget(x, kind, "high", budget=0.5) == 1.0  # drops 9, 8, 7: both canaries
    assert recall_at_budget(x, kind, "low", budget=0.5) == 0.0  # drops 1, 2, 3: neither


def test_audit_table_finds_the_column_and_direction_that_flag_each_kind():
    rng = np.random.default_rng(2)
    n_clean, n_each = 200, 30
    ids = [f"r{i}" for i in range(n_clean + 2 * n_each)]
    kinds = [None] * n_clean + ["refusal"] * n_each + ["swapped"] * n_each
    # `ppl` is high for refusals and plain noise for swapped rows; `ifd` is LOW for swapped ones
    ppl = np.r_[rng.normal(0, 1, n_clean), rng.normal(3, 1, n_each), rng.normal(0, 1, n_each)]
    ifd = np.r_[rng.normal(0, 1, n_clean), rng.normal(0, 1, n_each), rng.normal(-3, 1, n_each)]
    scores = pl.DataFrame({"id": ids, "ppl": ppl, "ifd": ifd, "embedding": [[0.0]] * len(ids)})
    labels = pl.DataFrame({"id": ids, "canary": kinds}, schema={"id": pl.String, "canary": pl.String})
    selection = pl.DataFrame({"id": ids, "kept": list(ppl < np.median(ppl))})
    table = audit_table(scores, labels, budget=0.5, n_boot=300, selection=selection)
    row = {(r["column"], r["kind"]): r for r in table.iter_rows(named=True)}
    assert set(table.get_column("column")) == {"ppl", "ifd", SELECTION_ROW}  # list columns are not scores
    assert row["ppl", "refusal"]["direction"] == "high" and row["ppl", "refusal"]["lo"] > 0.9
    assert row["ifd", "swapped"]["direction"] == "low" and row["ifd", "swapped"]["lo"] > 0.9
    assert row["ppl", "swapped"]["lo"] < 0.6  # noise for this kind: its interval reaches chance
    assert row["ppl", "refusal"]["recall_at_budget"] > 0.9 and row["ppl", "refusal"]["n"] == n_each
    assert row[SELECTION_ROW, "refusal"]["recall_at_budget"] > 0.9  # the selection dropped high-ppl rows
    assert row[SELECTION_ROW, "swapped"]["recall_at_budget"] < 0.8


def test_audit_flow_end_to_end(tmp_path, tiny_model_dir, capsys):
    """`pipeline run audit`: canaries from the pool's rows, scored and selected like the pool; no card written."""
    run = tmp_path / "run"
    args = ["run", "audit", "--run-dir", str(run), "--set", f"model={tiny_model_dir}", "--set",
            f"cards_dir={tmp_path / 'cards'}", "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "data.n_train=32",
            "--set", "score.max_length=128", "--set", "audit.share=0.5", "--set", "audit.n_boot=200"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "refusal" in out and "AUROC" in out
    table = pl.read_parquet(run / "audit.parquet")
    labels = pl.read_parquet(run / "canaries.parquet")
    assert labels.get_column("canary").drop_nulls().len() == 16  # half the pool's 32 rows, 2 of each of 8 kinds
    assert {"ppl", "ifd", SELECTION_ROW} <= set(table.get_column("column"))
    assert table.filter(pl.col("column") == "ppl").height == 8 and (run / "audit.png").stat().st_size > 0
    assert "## By defect" in (run / "results.md").read_text()
    assert not (tmp_path / "cards").exists()  # canaries never reach a card
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["by_kind"]) == 8
    assert main(["inspect", str(run), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["rows"]) == table.height and shown["meta"]["canaries"] == 16


@pytest.mark.parametrize("override, key", [("audit.share=1.5", "audit.share"), ("audit.kinds=[typo]", "audit.kinds[0]"),
                                           ("audit.kinds=[]", "audit.kinds")])
def test_bad_audit_settings_end_in_one_error_line(override, key, capsys):
    assert main(["recipes", "--show", "audit", "--set", override]) == 2
    assert capsys.readouterr().err.startswith(f"pipeline: error: {key}")
