"""`sft-math`: curate (load -> score -> select -> card) -> evaluate base -> train -> evaluate tuned."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from pipeline.core.io import write_json
from pipeline.flows import stages
from pipeline.flows.common import cache_root, ensure_run_dir, publish_artifacts
from pipeline.flows.curate import curate_stages, stage_counts
from pipeline.flows.recipe import resolve_config
from pipeline.models.loading import model_key


@flow(name="sft-math")
def sft_math_flow(config: dict, run_dir: str | None = None) -> dict:
    """Run the whole recipe; returns the metrics also written to run_dir/metrics.json."""
    config = resolve_config(config)
    run_dir = ensure_run_dir(config, run_dir)
    seed, root = int(config.get("seed", 0)), cache_root(config)
    t0 = time.perf_counter()
    cur = curate_stages(config, run_dir)
    seconds = {"curate": round(time.perf_counter() - t0, 1)}
    test = cur["data"]["test"]

    t0 = time.perf_counter()
    base = stages.run_stage(stages.evaluate, config["model"], cur["model_rev"], "base", test, config["eval"], root,
                             stages.stage_code("eval"))
    seconds["eval_base"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    trained = stages.run_stage(stages.train_model, cur["data"]["train"], cur["selection"], config["model"],
                               cur["model_rev"], config["train"], seed, root, stages.stage_code("train", config["train"]),
                               cur["scores"])
    seconds["train"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    tuned_rev = model_key(trained["model_dir"])
    tuned = stages.run_stage(stages.evaluate, trained["model_dir"], tuned_rev, "tuned", test, config["eval"], root,
                             stages.stage_code("eval"))
    run = Path(run_dir)
    stages.publish(trained["model_dir"], run / "model")
    for label, m in (("base", base), ("tuned", tuned)):
        stages.publish(m["path"], run / "eval" / f"{label}.json")
        stages.publish(Path(m["path"]).with_suffix(".parquet"), run / "eval" / f"{label}.parquet")
    seconds["eval_tuned"] = round(time.perf_counter() - t0, 1)

    sel = cur["selection"]
    metrics = {
        "recipe": config["name"],
        "base": base,
        "tuned": tuned,
        "delta": nll_delta(base, tuned, seed),
        "selection": {k: sel[k] for k in ("read", "kept", "dropped")},
        "train": {"loss": config["train"]["loss"],
                  **{k: trained.get(k) for k in ("train_loss", "steps", "runtime_s", "model_dir", "resumed_from",
                                                 "loss_history", "igf_skipped")}},
        "seconds": seconds,
        "data_card": cur["card"],
        "cache_keys": {**cur["cache_keys"], "tuned_model": tuned_rev},
        "run_dir": run_dir,
    }
    write_json(Path(run_dir) / "metrics.json", metrics)
    publish_artifacts(config["name"], metrics, stage_counts(sel))
    return metrics


def nll_delta(base: dict, tuned: dict, seed: int) -> dict:
    """Tuned minus base accuracy, response NLL and bits per byte with paired 95% bootstrap CIs over
    the test examples: whether the fine-tune helped beyond test-set noise."""
    import polars as pl

    from pipeline.evaluation.stats import paired_nll_difference

    diff = paired_nll_difference(pl.read_parquet(Path(base["path"]).with_suffix(".parquet")),
                                 pl.read_parquet(Path(tuned["path"]).with_suffix(".parquet")), seed=seed)
    return {"accuracy": tuned["accuracy"] - base["accuracy"], "nll": diff["d_nll"],
            "nll_ci": [diff["d_nll_lo"], diff["d_nll_hi"]], "bits_per_byte": diff["d_bpb"],
            "bits_per_byte_ci": [diff["d_bpb_lo"], diff["d_bpb_hi"]], "n_examples": diff["n_examples"],
            "accuracy_ci": [diff["d_accuracy_lo"], diff["d_accuracy_hi"]], "n_generated": diff["n_generated"]}
