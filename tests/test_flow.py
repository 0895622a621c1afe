"""One small end-to-end run of the sft-math flow (tiny random model, real data, real Prefect/TRL)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import polars as pl

from pipeline.cli import main

SMALL = [
    "data.n_train=16", "data.n_val=4", "data.n_test=6",
    "score.max_length=256", "train.max_steps=2", "train.batch_size=4", "train.max_length=256",
    "eval.n_generate=2", "eval.max_new_tokens=8", "eval.max_length=256",
]


def test_sft_math_end_to_end(tmp_path, tiny_model_dir, capsys):
    run_dir = tmp_path / "run"
    args = ["run", "sft-math", "--run-dir", str(run_dir), "--set", f"model={tiny_model_dir}",
            "--set", f"cards_dir={tmp_path / 'cards'}", "--set", f"cache_dir={tmp_path / 'cache'}"]
    for s in SMALL:
        args += ["--set", s]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "base  accuracy" in out and "tuned accuracy" in out and "data card:" in out

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["selection"] == {"read": 16, "kept": 8, "dropped": 8}
    assert metrics["train"]["steps"] == 2
    for side in ("base", "tuned"):
        assert 0.0 <= metrics[side]["accuracy"] <= 1.0 and metrics[side]["nll"] > 0
    delta = metrics["delta"]  # paired differences with their CIs, also printed
    assert delta["n_generated"] == 2 and delta["n_examples"] == 6
    for key in ("nll", "accuracy"):
        lo, hi = delta[f"{key}_ci"]
        assert lo <= delta[key] <= hi
    assert "tuned - base response NLL" in out and "tuned - base accuracy" in out

    selection = pl.read_parquet(run_dir / "selection.parquet")
    scores = pl.read_parquet(run_dir / "scores.parquet")
    assert selection.height == scores.height == 16
    kept_ppl = scores.join(selection, on="id", how="inner").filter(pl.col("kept"))["ppl"]
    dropped_ppl = scores.join(selection, on="id", how="inner").filter(~pl.col("kept"))["ppl"]
    assert kept_ppl.max() <= dropped_ppl.min()  # 'lowest' fraction by perplexity

    card_dir = Path(metrics["data_card"])
    card = json.loads((card_dir / "card.json").read_text())
    assert card["counts"] == {"read": 16, "kept": 8, "dropped": 8, "quarantined": 0}
    assert {d: c["read"] for d, c in card["domains"].items()} == {"gsm_symbolic": 8, "chain_sum": 8}  # the mixture
    assert card["run"]["cache_keys"]["selection"] and card["run"]["config"]["select"]["rule"] == "fraction"
    assert (card_dir / "hist_ppl.png").stat().st_size > 1000
    subset = datasets.load_dataset(str(card_dir), split="train")  # the card's YAML `configs` point at the subset
    assert subset.num_rows == 8

    # Re-running in the same run dir resumes: every stage's output exists, nothing is recomputed.
    before = (run_dir / "scores.parquet").stat().st_mtime_ns
    assert main(args) == 0
    assert (run_dir / "scores.parquet").stat().st_mtime_ns == before

    capsys.readouterr()
    assert main(["inspect", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"read": 16, "kept": 8, "dropped": 8}
    assert len(report["kept_examples"]) == 3 and report["kept_examples"][0]["reason"].startswith("kept:")

    # The card regenerates its subset exactly: every curation stage recomputed in a fresh cache.
    assert main(["regenerate", str(card_dir), "--out", str(tmp_path / "regen")]) == 0
    assert not (tmp_path / "cache" / "scores").samefile(tmp_path / "regen" / "cache" / "scores")
    (regenerated,) = (tmp_path / "regen" / "cards").iterdir()
    assert regenerated.name == card_dir.name
    assert pl.read_parquet(regenerated / "subset.parquet").equals(pl.read_parquet(card_dir / "subset.parquet"))
