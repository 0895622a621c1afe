"""Run a scorer over an example table and store its score table as parquet keyed by `id`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pipeline.io import write_parquet
from pipeline.scorers import ScoreContext, get_scorer


def compute_scores(
    examples: pl.DataFrame, scorer: str, ctx: ScoreContext, out_path: str | Path, params: dict[str, Any] | None = None
) -> Path:
    """Score `examples` with the registered `scorer` and write the table atomically to `out_path`."""
    table = get_scorer(scorer)(examples, ctx, **(params or {}))
    if table.height != examples.height or "id" not in table.columns:
        raise ValueError(f"scorer {scorer!r} must return one row per example with an 'id' column")
    return write_parquet(out_path, table)
