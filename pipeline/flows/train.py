"""`train`: fine-tune on a selected subset (a data card folder or a parquet of examples) with any loss."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from pipeline.core.io import write_json
from pipeline.flows.common import ensure_run_dir, publish_artifacts
from pipeline.flows.recipe import resolve
from pipeline.stages import LoadSubset, ModelRef, publish, run_stage, wiring


@flow(name="train", validate_parameters=False)
def train_flow(config, run_dir: str | None = None) -> dict:
    """Train `model` on `data.subset` (its `weight` column, if any, reaches the loss); cached and resumable."""
    plan = resolve(config)
    r = plan.recipe
    run_dir = ensure_run_dir(r, run_dir)
    subset = run_stage(LoadSubset.of(r.data.subset), plan.cache_root)
    t0 = time.perf_counter()
    trained = wiring.train(plan, subset.train, subset.selection, ModelRef.of(r.model))
    publish(trained.model_dir, Path(run_dir) / "model")
    metrics = {
        "recipe": r.name,
        "subset": {"path": r.data.subset, "rows": subset.train.rows, "fingerprint": subset.train.fingerprint},
        "train": {"loss": r.train.loss, **{k: getattr(trained, k, None)
                                           for k in ("train_loss", "steps", "runtime_s", "resumed_from")}},
        "model_dir": str(Path(run_dir) / "model"),
        "seconds": {"train": round(time.perf_counter() - t0, 1)},
        "run_dir": run_dir,
    }
    write_json(Path(run_dir) / "metrics.json", metrics)
    publish_artifacts(r.name, metrics, [{"stage": "train", "read": subset.train.rows, "kept": subset.train.rows,
                                         "dropped": 0}])
    return metrics
