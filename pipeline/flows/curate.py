"""`curate`: load -> score -> select -> data card. Used alone (`curate-math`) or inside `sft-math`."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from pipeline.core.io import write_json
from pipeline.flows.common import ensure_run_dir, publish_artifacts
from pipeline.flows.recipe import resolve
from pipeline.stages import wiring


@flow(name="curate", validate_parameters=False)
def curate_flow(config, run_dir: str | None = None) -> dict:
    """Score and select a subset and write its data card; returns the summary in run_dir/metrics.json.

    `config`: a recipe (dict or `Recipe`) or its built plan."""
    plan = resolve(config)
    run_dir = ensure_run_dir(plan.recipe, run_dir)
    cur = wiring.curate(plan, run_dir)
    sel = cur.selection
    metrics = {"recipe": plan.recipe.name, "selection": {"read": sel.read, "kept": sel.kept, "dropped": sel.dropped},
               "data_card": cur.card, "cache_keys": cur.cache_keys, "run_dir": run_dir}
    write_json(Path(run_dir) / "metrics.json", metrics)
    publish_artifacts(plan.recipe.name, metrics, sel.counts())
    return metrics
