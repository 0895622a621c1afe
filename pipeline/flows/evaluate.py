"""`evaluate`: final-answer accuracy and response NLL of any model on the held-out math test split."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from pipeline.core.io import write_json
from pipeline.flows import stages
from pipeline.flows.common import cache_root, data_seed, ensure_run_dir, publish_artifacts
from pipeline.flows.recipe import resolve_config
from pipeline.models.loading import model_key


@flow(name="evaluate")
def evaluate_flow(config: dict, run_dir: str | None = None) -> dict:
    """Evaluate `model` (an id or a trained folder, e.g. a train run's `model`) on the recipe's test split."""
    config = resolve_config(config)
    run_dir = ensure_run_dir(config, run_dir)
    root = cache_root(config)
    data = stages.run_stage(stages.load_data, config["data"], data_seed(config), root,
                            stages.stage_code("data"))
    model_rev = model_key(config["model"])
    result = stages.run_stage(stages.evaluate, config["model"], model_rev, "model", data["test"], config["eval"], root,
                             stages.stage_code("eval"))
    run = Path(run_dir)
    stages.publish(result["path"], run / "eval" / "model.json")
    stages.publish(Path(result["path"]).with_suffix(".parquet"), run / "eval" / "model.parquet")
    metrics = {"recipe": config["name"], "model": config["model"], "model_rev": model_rev, "eval": result,
               "run_dir": run_dir}
    write_json(run / "metrics.json", metrics)
    publish_artifacts(config["name"], metrics, [])
    return metrics
