"""Stage caching across runs, the curation-only recipe, and scheduling."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

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
    scores_a = pl.read_parquet(tmp_path / "a" / "scores.parquet")

    # Same config in a new run dir: everything comes from the cache.
    assert main(curate_args(tmp_path, tiny_model_dir, "b")) == 0
    assert "scored with" not in capsys.readouterr().out
    assert pl.read_parquet(tmp_path / "b" / "scores.parquet").equals(scores_a)

    # Another selector: scores reused, selection recomputed.
    assert main(curate_args(tmp_path, tiny_model_dir, "c", "select.keep=[0.0, 0.5]")) == 0
    assert "scored with" not in capsys.readouterr().out
    assert pl.read_parquet(tmp_path / "c" / "scores.parquet").equals(scores_a)
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


USER_LOSS = '''
from pipeline.losses.base import LossContext, TokenLoss


class Scaled(TokenLoss):
    """Cross-entropy times a constant: editing the constant must retrain."""

    def per_token(self, nll, ctx: LossContext):
        return {scale} * nll / ctx.counts["tokens"]
'''


def test_editing_a_user_loss_file_retrains_and_nothing_else_does(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Cache keys cover the code: a `module:attr` loss edited between two runs retrains; an unedited run reuses."""
    from pipeline.data import load_math

    monkeypatch.chdir(tmp_path)
    (tmp_path / "edited_loss_mod.py").write_text(USER_LOSS.format(scale=1.0))
    subset = tmp_path / "subset.parquet"
    load_math("gsm_symbolic", n_train=4, n_val=1, n_test=1, seed=0)["train"].write_parquet(subset)

    def run(name: str) -> dict:
        args = ["run", "train-subset", "--run-dir", str(tmp_path / name)]
        for s in (f"model={tiny_model_dir}", f"cache_dir={tmp_path / 'cache'}", f"data.subset={subset}",
                  "train.loss=edited_loss_mod:Scaled", "train.max_steps=1", "train.batch_size=4",
                  "train.max_length=128"):
            args += ["--set", s]
        assert main(args) == 0
        return json.loads((tmp_path / name / "metrics.json").read_text())

    first = run("a")
    assert "training on 4 examples" in capsys.readouterr().out
    again = run("b")
    assert "training on" not in capsys.readouterr().out  # nothing edited: nothing recomputed
    assert (tmp_path / "b" / "model").resolve() == (tmp_path / "a" / "model").resolve()
    assert again["train"]["train_loss"] == first["train"]["train_loss"]

    (tmp_path / "edited_loss_mod.py").write_text(USER_LOSS.format(scale=3.0))
    edited = run("c")
    assert "training on 4 examples" in capsys.readouterr().out
    assert (tmp_path / "c" / "model").resolve() != (tmp_path / "a" / "model").resolve()
    assert edited["train"]["train_loss"] == pytest.approx(3.0 * first["train"]["train_loss"], rel=1e-4)
