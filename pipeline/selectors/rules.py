"""Score rules: threshold, quantile band, fraction and top-k, as polars expressions.

Rows whose score is missing or NaN are dropped with the reason `missing score`. Ranks break ties
by id, so budgets are exact and the result is deterministic.
"""

from __future__ import annotations

import math

import polars as pl

from pipeline.selectors import register_selector


def _valid(column: str) -> pl.Expr:
    return pl.col(column).is_not_null() & pl.col(column).is_not_nan()


def _result(scores: pl.DataFrame, column: str, keep: pl.Expr, rule: str) -> pl.DataFrame:
    """Selection rows with reasons that name the rule and the example's score."""
    score_txt = pl.col(column).round(4).cast(pl.String)
    return scores.select(
        "id",
        pl.when(_valid(column)).then(keep).otherwise(False).alias("kept"),
        pl.lit(1.0).alias("weight"),
        pl.when(~_valid(column))
        .then(pl.lit("missing score"))
        .when(keep)
        .then(pl.lit(f"kept: {rule}; {column}=") + score_txt)
        .otherwise(pl.lit(f"dropped: {rule}; {column}=") + score_txt)
        .alias("reason"),
    )


def _rank(scores: pl.DataFrame, column: str, order: str) -> pl.Expr:
    """0-based rank of each valid row: 'lowest' ranks small scores first; ties broken by id."""
    if order not in {"lowest", "highest"}:
        raise ValueError(f"order must be 'lowest' or 'highest', not {order!r}")
    value = pl.col(column).cast(pl.Float64)
    # Invalid rows rank last so they never take a place in the budget.
    key = pl.when(_valid(column)).then(-value if order == "highest" else value).otherwise(float("inf"))
    return pl.struct(key.alias("k"), pl.col("id")).rank("ordinal") - 1


@register_selector("all")
def keep_all(scores: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """Keep every example (the baseline)."""
    return scores.select("id", pl.lit(True).alias("kept"), pl.lit(1.0).alias("weight"), pl.lit("kept: all").alias("reason"))


@register_selector("threshold")
def threshold(scores: pl.DataFrame, column: str, min: float | None = None, max: float | None = None, seed: int = 0) -> pl.DataFrame:  # noqa: A002
    """Keep rows with min <= score <= max (either bound optional)."""
    keep = pl.lit(True)
    if min is not None:
        keep = keep & (pl.col(column) >= min)
    if max is not None:
        keep = keep & (pl.col(column) <= max)
    return _result(scores, column, keep, f"threshold [{min}, {max}]")


@register_selector("quantile")
def quantile(scores: pl.DataFrame, column: str, keep: list[float] = (0.0, 1.0), seed: int = 0) -> pl.DataFrame:
    """Keep rows whose rank among valid scores lies in the [lo, hi) quantile band (exact counts)."""
    lo, hi = float(keep[0]), float(keep[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"quantile keep must satisfy 0 <= lo <= hi <= 1, got {keep}")
    n = int(scores.select(_valid(column).sum()).item())
    start, stop = math.floor(lo * n + 1e-9), math.floor(hi * n + 1e-9)
    rank = _rank(scores, column, "lowest")
    return _result(scores, column, (rank >= start) & (rank < stop), f"quantile [{lo}, {hi}]")


@register_selector("fraction")
def fraction(scores: pl.DataFrame, column: str, fraction: float = 0.5, order: str = "lowest", seed: int = 0) -> pl.DataFrame:
    """Keep round(fraction * n) rows with the lowest (or highest) score."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n = int(scores.select(_valid(column).sum()).item())
    k = round(fraction * n)
    return _result(scores, column, _rank(scores, column, order) < k, f"{order} {fraction:g} by {column}")


@register_selector("top_k")
def top_k(scores: pl.DataFrame, column: str, k: int, order: str = "highest", seed: int = 0) -> pl.DataFrame:
    """Keep the k rows with the highest (or lowest) score."""
    return _result(scores, column, _rank(scores, column, order) < int(k), f"top {k} ({order}) by {column}")
