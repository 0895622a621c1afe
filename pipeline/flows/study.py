"""`study`: does a curation rule or a loss help? Variants x seeds at equal compute, with paired CIs.

The recipe's shared sections (data, score, select, train, eval) are the baseline: by default a
random subset (`select: {rule: random, fraction: 0.5}`) trained with plain cross-entropy, the
comparison every selection paper uses. Each variant is a `name` plus overrides of any of those
sections (`{name: dft, train: {loss: dft}}`, `{name: ppl-low, select: {rule: fraction, ...}}`);
`select` is replaced whole, the other sections are merged key by key. Every variant runs for every
seed (selection and training seeds; all cells share one test split, `data_seed`), trains the same
number of steps at the same batch size (compute keys cannot be overridden), and is evaluated on the
same test examples, so differences are paired. Each (variant, seed) cell is a Prefect subflow whose
stages live in the shared content-addressed cache: a killed study re-run finishes the rest only.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import polars as pl
import torch
from prefect import flow

from pipeline.core.io import write_json
from pipeline.flows import stages
from pipeline.flows.common import cache_root, ensure_run_dir, publish_artifacts
from pipeline.flows.curate import curate_stages
from pipeline.flows.recipe import BASELINE, resolve_config, variant_configs
from pipeline.models.loading import model_key


@flow(name="study-cell")
def study_cell(config: dict, run_dir: str) -> dict:
    """One variant at one seed: curate, train, evaluate the tuned model; every stage cached."""
    root, seed = cache_root(config), int(config["seed"])
    t0 = time.perf_counter()
    cur = curate_stages(config, run_dir)
    trained = stages.run_stage(stages.train_model, cur["data"]["train"], cur["selection"], config["model"],
                               cur["model_rev"], config["train"], seed, root,
                               stages.stage_code("train", config["train"]), cur["scores"])
    tuned = stages.run_stage(stages.evaluate, trained["model_dir"], model_key(trained["model_dir"]), "tuned",
                             cur["data"]["test"], config["eval"], root, stages.stage_code("eval"))
    return {"eval_table": str(Path(tuned["path"]).with_suffix(".parquet")), "kept": cur["selection"]["kept"],
            "steps": trained["steps"], "train_tokens": trained.get("train_tokens"),
            "train_seconds": trained.get("runtime_s"), "seconds": round(time.perf_counter() - t0, 1),
            "nll": tuned["nll"], "accuracy": tuned["accuracy"], "data_card": cur["card"]}


@flow(name="study")
def study_flow(config: dict, run_dir: str | None = None) -> dict:
    """Every variant x seed, then per-variant NLL, bits per byte and accuracy with paired 95% CIs."""
    from pipeline.evaluation.stats import corpus_metrics  # noqa: F401 - fail early if stats are missing
    from pipeline.reports.study import write_results

    config = resolve_config(config)
    run_dir = ensure_run_dir(config, run_dir)
    seeds = config.get("seeds") or [config["seed"]]
    data_seed = config["seed"] if config.get("data_seed") is None else config["data_seed"]
    cells = variant_configs({**config, "data_seed": data_seed})
    t0 = time.perf_counter()
    tables, runs = [], []
    for seed in seeds:
        for name, cfg in cells:
            cell_dir = Path(run_dir) / "cells" / f"{name}-seed{seed}"
            stages.log(f"study cell {name} seed {seed}")
            out = study_cell(config={**cfg, "seed": seed}, run_dir=str(cell_dir))
            tables.append(pl.read_parquet(out["eval_table"]).select(
                pl.lit(name).alias("variant"), pl.lit(seed).alias("seed"), "id", "nll_sum", "n_tokens", "n_bytes",
                pl.when(pl.col("generated")).then(pl.col("correct")).alias("correct")))
            runs.append({"variant": name, "seed": seed, **{k: out[k] for k in ("steps", "train_tokens", "kept")},
                         "train_seconds": out["train_seconds"]})
    meta = {"recipe": config["name"], "command": "pipeline " + " ".join(sys.argv[1:]), "seeds": seeds,
            "test_size": config["data"]["n_test"], "variants": [name for name, _ in cells],
            "train_steps": config["train"]["max_steps"], "batch_size": config["train"]["batch_size"],
            "model": config["model"], "machine": f"{platform.machine()} {os.cpu_count()} CPUs"
                                                 + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
            "date": time.strftime("%Y-%m-%d %H:%M"), "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1)}
    written = write_results(Path(run_dir), pl.concat(tables), pl.DataFrame(runs), BASELINE, meta)
    write_json(Path(run_dir) / "study.json", meta)
    metrics = {"recipe": config["name"], "study": written["rows"], "run_dir": run_dir,
               "results": str(Path(run_dir) / "results.md")}
    write_json(Path(run_dir) / "metrics.json", metrics)
    publish_artifacts(config["name"], {"run_dir": run_dir}, written["rows"])
    return metrics

