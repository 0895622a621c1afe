"""Selection tables and the accounting every selector goes through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

SELECTION_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String,
    "kept": pl.Boolean,
    "weight": pl.Float64,
    "reason": pl.String,
}


def run_selector(fn: Callable[..., pl.DataFrame], scores: pl.DataFrame, seed: int = 0, **params: Any) -> pl.DataFrame:
    """Apply a selector and check its result accounts for each input id exactly once."""
    result = fn(scores, seed=seed, **params)
    missing = set(SELECTION_SCHEMA) - set(result.columns)
    if missing:
        raise ValueError(f"selector {getattr(fn, '__name__', fn)} returned no {sorted(missing)} column(s)")
    result = result.select([pl.col(c).cast(t) for c, t in SELECTION_SCHEMA.items()])
    ids_in = scores.get_column("id")
    if result.height != ids_in.len() or result.get_column("id").n_unique() != result.height:
        raise ValueError(
            f"selector {getattr(fn, '__name__', fn)} returned {result.height} rows for {ids_in.len()} ids: "
            "every input id must appear exactly once"
        )
    if set(result.get_column("id").to_list()) != set(ids_in.to_list()):
        raise ValueError(f"selector {getattr(fn, '__name__', fn)} returned ids that are not its input ids")
    order = pl.DataFrame({"id": ids_in})
    return order.join(result, on="id", how="left", maintain_order="left")


def row_filter(predicate: Callable[[dict], bool | tuple[bool, str]]) -> Callable[..., pl.DataFrame]:
    """Make a selector from a per-row predicate returning `bool` or `(bool, reason)`."""

    def selector(scores: pl.DataFrame, seed: int = 0, **params: Any) -> pl.DataFrame:
        kept, reasons = [], []
        for row in scores.iter_rows(named=True):
            out = predicate(row, **params)
            ok, reason = out if isinstance(out, tuple) else (out, "")
            kept.append(bool(ok))
            reasons.append(reason or ("kept" if ok else f"dropped by {predicate.__name__}"))
        return pl.DataFrame(
            {"id": scores.get_column("id"), "kept": kept, "weight": [1.0] * len(kept), "reason": reasons}
        )

    selector.__name__ = predicate.__name__
    selector.__doc__ = predicate.__doc__
    return selector


def summarize(selection: pl.DataFrame) -> dict[str, Any]:
    """Counts of kept and dropped rows and the most common drop reasons."""
    kept = int(selection.get_column("kept").sum())
    dropped = selection.filter(~pl.col("kept"))
    reasons = dropped.group_by("reason").len().sort("len", descending=True).head(10)
    return {
        "read": selection.height,
        "kept": kept,
        "dropped": selection.height - kept,
        "drop_reasons": dict(zip(reasons.get_column("reason").to_list(), reasons.get_column("len").to_list(), strict=True)),
    }
