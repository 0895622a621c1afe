"""Stage caching across runs, the curation-only recipe, and scheduling."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline.cli import main


def curate_args(tmp_path, tiny_model_dir, run: str, *extra: str) -> list[str]:
    args = ["run", "curate-math", "--run-dir", str(tmp_path / run), "--set", f"model={tiny_model_dir}",
            "--set", f"cards_dir={tmp_path / 'cards'}", "--set", f"cache_dir={tmp_path / 'cache'}",
            "--set", "data.n_train=12", "--set", "score.max_length=128"]
    for e in extra:
        args += ["--set", e]
    return args


def test_changed_selector_reuses_scores(tmp_path, tiny_model_dir, capsys):
    assert main(curate_args(tmp_path, tiny_model_dir, "a")) == 0
    first = capsys.readouterr().out
    assert "scored with perplexity" in first
    scores_a = Path(tmp_path / "a" / "scores.parquet")
    inode = scores_a.stat().st_ino

    # Same config in a new run dir: everything comes from the cache.
    assert main(curate_args(tmp_path, tiny_model_dir, "b")) == 0
    assert "scored with" not in capsys.readouterr().out
    assert (tmp_path / "b" / "scores.parquet").stat().st_ino == inode

    # Another selector: scores reused, selection recomputed.
    assert main(curate_args(tmp_path, tiny_model_dir, "c", "select.keep=[0.0, 0.5]")) == 0
    assert "scored with" not in capsys.readouterr().out
    assert (tmp_path / "c" / "scores.parquet").stat().st_ino == inode
    kept_a = pl.read_parquet(tmp_path / "a" / "selection.parquet")["kept"].sum()
    kept_c = pl.read_parquet(tmp_path / "c" / "selection.parquet")["kept"].sum()
    assert (kept_a, kept_c) == (9, 6)  # ranks [floor(1.2), floor(10.8)) and [0, 6) of 12

    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["selection"] == {"read": 12, "kept": 6, "dropped": 6}
    card = json.loads((Path(metrics["data_card"]) / "card.json").read_text())
    assert card["stages"][0] == {"stage": "0:quantile", "read": 12, "kept": 6, "dropped": 6}


def test_serve_builds_a_cron_deployment(capsys):
    assert main(["serve", "curate-math", "--cron", "0 2 * * *", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"deployment": "curate-math", "flow": "curate", "schedules": ["0 2 * * *"]}
