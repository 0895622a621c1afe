"""`train`: fine-tune on a selected subset (a data card folder or a parquet of examples) with any loss."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from pipeline.core.hashing import file_hash
from pipeline.core.io import write_json
from pipeline.flows import stages
from pipeline.flows.common import cache_root, ensure_run_dir, publish_artifacts
from pipeline.flows.recipe import resolve_config
from pipeline.models.loading import model_key


@flow(name="train")
def train_flow(config: dict, run_dir: str | None = None) -> dict:
    """Train `model` on `data.subset` (its `weight` column, if any, reaches the loss); cached and resumable."""
    config = resolve_config(config)
    run_dir = ensure_run_dir(config, run_dir)
    seed, root = int(config.get("seed", 0)), cache_root(config)
    subset = (config.get("data") or {}).get("subset")
    if not subset:
        raise ValueError("the train flow needs data.subset: a data card folder or a parquet file of examples "
                         "(e.g. --set data.subset=data_cards/<name>)")
    model_rev = model_key(config["model"])
    path = stages.subset_file(str(subset))
    data = stages.run_stage(stages.load_subset, str(path), file_hash(path), root)
    t0 = time.perf_counter()
    trained = stages.run_stage(stages.train_model, data["train"], data["selection"], config["model"], model_rev,
                               config["train"], seed, root, stages.stage_code("train", config["train"]))
    stages.publish(trained["model_dir"], Path(run_dir) / "model")
    metrics = {
        "recipe": config["name"],
        "subset": {"path": str(subset), "rows": data["train"]["rows"], "fingerprint": data["train"]["fingerprint"]},
        "train": {"loss": config["train"].get("loss", "ce"),
                  **{k: trained.get(k) for k in ("train_loss", "steps", "runtime_s", "resumed_from")}},
        "model_dir": str(Path(run_dir) / "model"),
        "seconds": {"train": round(time.perf_counter() - t0, 1)},
        "run_dir": run_dir,
    }
    write_json(Path(run_dir) / "metrics.json", metrics)
    publish_artifacts(config["name"], metrics, [{"stage": "train", "read": data["train"]["rows"],
                                                 "kept": data["train"]["rows"], "dropped": 0}])
    return metrics
