"""`curate`: load -> score -> select -> data card. Used alone (`curate-math`) or inside `sft-math`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from pipeline.core.io import write_json
from pipeline.flows import stages
from pipeline.flows.common import cache_root, data_seed, ensure_run_dir, publish_artifacts
from pipeline.flows.recipe import resolve_config
from pipeline.models.loading import model_key
from pipeline.training.reference import reference_settings


def curate_stages(config: dict, run_dir: str) -> dict[str, Any]:
    """Run the curation stages and return paths, counts and cache keys (no flow wrapper)."""
    seed, root = int(config.get("seed", 0)), cache_root(config)
    model_rev = model_key(config["model"])
    ref_cfg = reference_settings(config["train"])  # references train like the recipe says (LoRA included)
    data = stages.run_stage(stages.load_data, config["data"], data_seed(config), root,
                            stages.stage_code("data"))
    scores = stages.run_stage(stages.score, data["train"], config["model"], model_rev, config["score"], seed, root,
                              stages.stage_code("score", config["score"]), ref_cfg)
    selection = stages.run_stage(stages.select, scores, data["train"], config["model"], model_rev,
                                 config["select"], seed, root, stages.stage_code("select", config["select"]), ref_cfg,
                                 config["score"]["max_length"])
    run = Path(run_dir)
    for name in ("train", "validation", "test"):
        stages.publish(data[name]["path"], run / "data" / f"{name}.parquet")
    if data.get("quarantine"):  # records of the user's source that could not be read, with reasons
        stages.publish(data["quarantine"], run / "quarantine.parquet")
    stages.publish(scores["path"], run / "scores.parquet")
    stages.publish(selection["path"], run / "selection.parquet")
    keys = {"data": data["train"]["fingerprint"], "scores": scores["key"], "selection": selection["hash"],
            "model": model_rev}
    card = stages.card(config, data, scores, selection, run_dir, keys)
    return {"data": data, "scores": scores, "selection": selection, "card": card, "model_rev": model_rev,
            "cache_keys": keys}


def stage_counts(selection: dict) -> list[dict[str, Any]]:
    """Read/kept/dropped of each selection stage, for the artifact table."""
    return [{k: st[k] for k in ("stage", "read", "kept", "dropped")} for st in selection["stages"]]


@flow(name="curate")
def curate_flow(config: dict, run_dir: str | None = None) -> dict:
    """Score and select a subset and write its data card; returns the summary in run_dir/metrics.json."""
    config = resolve_config(config)
    run_dir = ensure_run_dir(config, run_dir)
    out = curate_stages(config, run_dir)
    sel = out["selection"]
    metrics = {"recipe": config["name"], "selection": {k: sel[k] for k in ("read", "kept", "dropped")},
               "data_card": out["card"], "cache_keys": out["cache_keys"], "run_dir": run_dir}
    write_json(Path(run_dir) / "metrics.json", metrics)
    publish_artifacts(config["name"], metrics, stage_counts(sel))
    return metrics
