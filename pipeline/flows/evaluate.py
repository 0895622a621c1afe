"""`evaluate`: final-answer accuracy and response NLL of any model on the held-out math test split."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from pipeline.core.io import write_json
from pipeline.flows.common import ensure_run_dir, publish_artifacts
from pipeline.flows.recipe import resolve
from pipeline.stages import ModelRef, wiring


@flow(name="evaluate", validate_parameters=False)
def evaluate_flow(config, run_dir: str | None = None) -> dict:
    """Evaluate `model` (an id or a trained folder, e.g. a train run's `model`) on the recipe's test split."""
    plan = resolve(config)
    run_dir = ensure_run_dir(plan.recipe, run_dir)
    data = wiring.load_data(plan)
    model = ModelRef.of(plan.recipe.model)
    result = wiring.evaluate(plan, model, data.test, "model")
    wiring.publish_eval(run_dir, "model", result)
    metrics = {"recipe": plan.recipe.name, "model": model.name, "model_rev": model.key, "eval": result.model_dump(),
               "run_dir": run_dir}
    write_json(Path(run_dir) / "metrics.json", metrics)
    publish_artifacts(plan.recipe.name, metrics, [])
    return metrics
