"""Compose selectors: apply a list of steps in order, each to the rows the previous steps kept.

A step is `{"rule": name, ...params}`; the optional key `weights` says how a kept row's weight combines
with the weight it already had: `"multiply"` (default) or `"replace"`. A row dropped by a stage keeps
that stage's reason and weight and is not read by later stages. Extra columns a stage returns (e.g.
CLEAR's `new_response`) are carried into the final selection. Every stage runs with the same seed.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from pipeline.selectors import get_selector
from pipeline.selectors.base import SelectContext, run_selector

WEIGHT_MODES = ("multiply", "replace")


def compose(scores: pl.DataFrame, steps: list[dict[str, Any]], seed: int = 0,
            context: SelectContext | None = None) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Final selection (one row per input id, input order) and per-stage read/kept/dropped counts."""
    if not steps:
        steps = [{"rule": "all"}]
    current = scores.select("id").with_columns(pl.lit(True).alias("kept"), pl.lit(1.0).alias("weight"),
                                               pl.lit("kept: no stage").alias("reason"))
    stages: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        params = {k: v for k, v in step.items() if k not in {"rule", "weights"}}
        mode = step.get("weights", "multiply")
        if mode not in WEIGHT_MODES:
            raise ValueError(f"step {i}: weights must be one of {WEIGHT_MODES}, not {mode!r}")
        alive = current.filter(pl.col("kept")).select("id")
        stage_in = alive.join(scores, on="id", how="left", maintain_order="left")
        out = run_selector(get_selector(step["rule"]), stage_in, seed=seed, context=context, **params)
        prev = current.select("id", pl.col("weight").alias("_prev"))
        out = out.join(prev, on="id", how="left", maintain_order="left").with_columns(
            pl.when(pl.col("kept") & pl.lit(mode == "multiply")).then(pl.col("weight") * pl.col("_prev"))
            .otherwise(pl.col("weight")).alias("weight")
        ).drop("_prev")
        current = _update(current, out)
        kept = int(out.get_column("kept").sum())
        stages.append({"stage": f"{i}:{step['rule']}", "rule": step["rule"], "params": params,
                       "read": out.height, "kept": kept, "dropped": out.height - kept})
    return current, stages


def _update(current: pl.DataFrame, out: pl.DataFrame) -> pl.DataFrame:
    """Replace the rows a stage read by its output; rows dropped earlier stay as they were."""
    untouched = current.join(out.select("id"), on="id", how="anti")
    merged = pl.concat([untouched, out], how="diagonal_relaxed")
    order = current.select("id")
    return order.join(merged, on="id", how="left", maintain_order="left")
