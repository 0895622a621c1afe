"""sft-math runs with any loss by `--set train.loss=...`, and a training killed with SIGKILL resumes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from tests.test_flow import SMALL


def _args(tmp_path, tiny_model_dir, run: str, *extra: str) -> list[str]:
    args = ["run", "sft-math", "--run-dir", str(tmp_path / run), "--set", f"model={tiny_model_dir}",
            "--set", f"cards_dir={tmp_path / 'cards'}", "--set", f"cache_dir={tmp_path / 'cache'}"]
    for s in [*SMALL, *extra]:
        args += ["--set", s]
    return args


@pytest.mark.parametrize("loss", ["forgetting", "rho1"])
def test_token_label_losses_run_from_the_recipe(tmp_path, tiny_model_dir, loss, capsys):
    """Losses that need per-token labels get them from base vs held-out references (2-fold cross-fit LoRAs)."""
    assert main(_args(tmp_path, tiny_model_dir, "a", f"train.loss={loss}")) == 0
    out = capsys.readouterr().out
    assert "training columns (" in out
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and math.isfinite(metrics["train"]["train_loss"])
    references = list((tmp_path / "cache" / "references").iterdir())
    assert len(references) == 2 and all((r / "model" / "config.json").exists() for r in references)
    trained_on = [set(json.loads((r / "reference.json").read_text())["ids"]) for r in references]
    assert trained_on[0] and trained_on[1] and not trained_on[0] & trained_on[1]  # disjoint halves
    tables = list((tmp_path / "cache" / "scorers" / "token_loss").iterdir())
    assert len(tables) == 3  # base, and each fold scored by the reference trained on the other fold


def test_dft_with_masked_thought_runs_from_the_recipe(tmp_path, tiny_model_dir):
    args = _args(tmp_path, tiny_model_dir, "b", "train.loss=dft", "train.masked_thought.enabled=true")
    assert main(args) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and metrics["train"]["loss"] == "dft"


def _cli(args: list[str], env: dict, log: Path) -> int:
    """Run the CLI in its own process group; afterwards kill what is left of the group (Prefect's
    temporary server outlives a SIGKILLed parent) so that nothing holds the test up."""
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def test_training_killed_with_sigkill_resumes_with_same_metrics(tmp_path, tiny_model_dir):
    """kill -9 right after checkpoint 2 of 4; the re-run resumes from it and matches an uninterrupted run."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    extra = ("train.max_steps=4", "train.batch_size=2", "train.save_steps=1")
    log = tmp_path / "log.txt"
    crashed = _cli(_args(tmp_path, tiny_model_dir, "killed", *extra), {**env, "SFT_PIPELINE_CRASH": "train:2"}, log)
    assert crashed == -signal.SIGKILL, log.read_text()[-3000:]
    checkpoints = list((tmp_path / "cache" / "train").glob("*/checkpoints/checkpoint-*"))
    assert sorted(p.name for p in checkpoints) == ["checkpoint-1", "checkpoint-2"]

    assert _cli(_args(tmp_path, tiny_model_dir, "killed", *extra), env, log) == 0, log.read_text()[-3000:]
    assert "training on" in log.read_text()  # the re-run trained (from the checkpoint), not a cached result
    clean = _args(tmp_path, tiny_model_dir, "clean", *extra, "cache_dir=" + str(tmp_path / "cache2"))
    assert _cli(clean, env, log) == 0, log.read_text()[-3000:]

    a = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    b = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert a["train"]["resumed_from"].endswith("checkpoint-2") and b["train"]["resumed_from"] is None
    assert a["train"]["steps"] == b["train"]["steps"] == 4
    assert a["tuned"]["nll"] == pytest.approx(b["tuned"]["nll"], abs=1e-5)
    # the restored trainer state carries steps 1-2; steps 3-4 ran after the resume
    assert [h["loss"] for h in a["train"]["loss_history"]] == pytest.approx(
        [h["loss"] for h in b["train"]["loss_history"]], abs=1e-5)
    assert pl.read_parquet(tmp_path / "killed" / "selection.parquet").equals(
        pl.read_parquet(tmp_path / "clean" / "selection.parquet"))


def test_sensitivity_selector_from_set(tmp_path, tiny_model_dir):
    """The README's sensitivity example: two scorers, then importance weights that reach training."""
    args = _args(tmp_path, tiny_model_dir, "c", "score.scorer=[perplexity, embedding]",
                 "select={rule: sensitivity, m: 8, k: 4, loss: nll}")
    assert main(args) == 0
    selection = pl.read_parquet(tmp_path / "c" / "selection.parquet")
    kept = selection.filter(pl.col("kept"))
    assert selection.height == 16 and kept["draws"].sum() == 8
    assert (kept["weight"] > 0).all() and (selection.filter(~pl.col("kept"))["weight"] == 0).all()


def test_scoring_killed_with_sigkill_resumes_byte_identical(tmp_path, tiny_model_dir):
    """kill -9 after the first of three score shards; the re-run scores only the rest, and the table
    and selection equal those of an uninterrupted run."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    log = tmp_path / "log.txt"

    def curate(run: str, cache: str) -> list[str]:
        args = ["run", "curate-math", "--run-dir", str(tmp_path / run), "--set", f"model={tiny_model_dir}",
                "--set", f"cache_dir={tmp_path / cache}", "--set", f"cards_dir={tmp_path / 'cards'}"]
        for s in ("data.n_train=12", "data.n_val=2", "data.n_test=2", "score.max_length=128", "score.shard_size=4"):
            args += ["--set", s]
        return args

    assert _cli(curate("killed", "cache"), {**env, "SFT_PIPELINE_CRASH": "score:1"}, log) == -signal.SIGKILL
    (entry,) = (tmp_path / "cache" / "scorers" / "perplexity").iterdir()
    (first,) = (entry / "shards").glob("*.parquet")
    assert not (entry / "scores.parquet").exists()
    written = first.stat().st_mtime_ns
    assert _cli(curate("killed", "cache"), env, log) == 0, log.read_text()[-3000:]
    assert first.stat().st_mtime_ns == written  # the finished shard was kept, not recomputed
    assert _cli(curate("clean", "cache2"), env, log) == 0, log.read_text()[-3000:]
    for name in ("scores.parquet", "selection.parquet"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


def test_sensitivity_weights_reach_the_trainer(tmp_path, tiny_model_dir, monkeypatch):
    """The `example_weight` TokenLossSFTTrainer.compute_loss receives is the selection's weight of each kept id
    (normalized to mean 1 by default), row for row."""
    from pipeline.training import train as train_module
    from pipeline.training.trainer import TokenLossSFTTrainer

    built: dict = {}
    seen: list[tuple[list[int], float]] = []
    build, compute = train_module.build_dataset, TokenLossSFTTrainer.compute_loss

    def spy_build(tokenizer, examples, max_length, weights=None, token_columns=None):
        ds = build(tokenizer, examples, max_length, weights, token_columns)
        built.update(ids=examples.get_column("id").to_list(), input_ids=ds["input_ids"])
        return ds

    def spy_compute(self, model, inputs, *args, **kwargs):
        if self.model.training:
            lengths = inputs["attention_mask"].sum(1).tolist()
            for row, n, w in zip(inputs["input_ids"].tolist(), lengths, inputs["example_weight"].tolist(),
                                 strict=True):
                seen.append((row[:n], w))
        return compute(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(train_module, "build_dataset", spy_build)
    monkeypatch.setattr(TokenLossSFTTrainer, "compute_loss", spy_compute)
    args = _args(tmp_path, tiny_model_dir, "w", "score.scorer=[perplexity, embedding]",
                 "select={rule: sensitivity, m: 8, k: 4, loss: nll}", "train.batch_size=8", "train.max_steps=1")
    assert main(args) == 0
    kept = pl.read_parquet(tmp_path / "w" / "selection.parquet").filter(pl.col("kept"))
    expected = dict(zip(kept["id"].to_list(), kept["weight"].to_list(), strict=True))
    assert kept["weight"].mean() == pytest.approx(1.0) and kept["weight"].n_unique() > 1  # normalized, not uniform
    row_id = {tuple(ids): i for i, ids in zip(built["ids"], built["input_ids"], strict=True)}
    received = {row_id[tuple(ids)]: w for ids, w in seen}
    assert set(received) == set(expected)  # one batch of 8 covers every kept row
    for i, w in received.items():
        assert w == pytest.approx(expected[i], rel=1e-6)


def test_igf_filter_reaches_training_from_the_recipe(tmp_path, tiny_model_dir):
    """sft-math scores with information_gain; train.igf_filter fills each step with examples above its threshold
    (here the mean of the predictions), passing over the others; a threshold nothing passes falls back, counted."""
    extra = ["score.scorer=[perplexity, information_gain]",
             "score.params={information_gain: {sample_size: 6, objective_size: 3, holdout: 0.0, folds: 2}}",
             "train.igf_filter={threshold: 0.0, then: 0.0, units: std}", "train.batch_size=4"]
    assert main(_args(tmp_path, tiny_model_dir, "igf", *extra)) == 0
    metrics = json.loads((tmp_path / "igf" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2
    assert metrics["train"]["igf_skipped"] >= 1 and metrics["train"]["igf_fallback_steps"] == 0
    assert main(_args(tmp_path, tiny_model_dir, "igf2", *extra[:2], "train.igf_filter={threshold: 100.0}",
                      "train.batch_size=4")) == 0
    assert json.loads((tmp_path / "igf2" / "metrics.json").read_text())["train"]["igf_fallback_steps"] == 2
