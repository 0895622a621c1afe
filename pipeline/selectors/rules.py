"""Score rules: keep-all, threshold, quantile band, fraction and top-k, as polars expressions.

Rows whose score is missing or NaN are dropped with the reason `missing score`. Ranks break ties
by id, so budgets are exact and the result is deterministic.
"""

from __future__ import annotations

import math
from typing import Literal

import polars as pl

from pipeline.core.registry import ConfigError
from pipeline.selectors import register_selector
from pipeline.selectors.base import SelectContext, Selector

Order = Literal["lowest", "highest"]


def _valid(column: str) -> pl.Expr:
    return pl.col(column).is_not_null() & pl.col(column).is_not_nan()


def _result(scores: pl.DataFrame, column: str, keep: pl.Expr, rule: str, dropped: str | None = None) -> pl.DataFrame:
    """Selection rows with reasons that name the rule and the example's score: `kept: <rule>; col=v` and
    `dropped: <dropped>; col=v` (default `not <rule>`), so a dropped row never reads as if it were kept."""
    score_txt = pl.col(column).round(4).cast(pl.String)
    return scores.select(
        "id",
        pl.when(_valid(column)).then(keep).otherwise(False).alias("kept"),
        pl.lit(1.0).alias("weight"),
        pl.when(~_valid(column))
        .then(pl.lit("missing score"))
        .when(keep)
        .then(pl.lit(f"kept: {rule}; {column}=") + score_txt)
        .otherwise(pl.lit(f"dropped: {dropped or 'not ' + rule}; {column}=") + score_txt)
        .alias("reason"),
    )


def _check_order(order: str) -> None:
    """Reject an order other than 'lowest'/'highest' (also when a selector is built without checks)."""
    if order not in {"lowest", "highest"}:
        raise ConfigError("order", f"must be 'lowest' or 'highest', not {order!r}")


def _rank(scores: pl.DataFrame, column: str, order: str) -> pl.Expr:
    """0-based rank of each valid row: 'lowest' ranks small scores first; ties broken by id."""
    _check_order(order)
    value = pl.col(column).cast(pl.Float64)
    # Invalid rows rank last so they never take a place in the budget.
    key = pl.when(_valid(column)).then(-value if order == "highest" else value).otherwise(float("inf"))
    return pl.struct(key.alias("k"), pl.col("id")).rank("ordinal") - 1


@register_selector("all")
class KeepAll(Selector):
    """Keep every example (the baseline)."""

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        return scores.select("id", pl.lit(True).alias("kept"), pl.lit(1.0).alias("weight"),
                             pl.lit("kept: all").alias("reason"))


@register_selector("threshold")
class Threshold(Selector):
    """Keep rows with min <= score <= max (either bound optional)."""

    def __init__(self, column: str, min: float | None = None, max: float | None = None):  # noqa: A002
        self.column, self.min, self.max = column, min, max

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        keep = pl.lit(True)
        if self.min is not None:
            keep = keep & (pl.col(self.column) >= self.min)
        if self.max is not None:
            keep = keep & (pl.col(self.column) <= self.max)
        return _result(scores, self.column, keep, f"threshold [{self.min}, {self.max}]")


@register_selector("quantile")
class Quantile(Selector):
    """Keep rows whose rank among valid scores lies in the [lo, hi) quantile band (exact counts)."""

    def __init__(self, column: str, keep: tuple[float, float] = (0.0, 1.0)):
        lo, hi = float(keep[0]), float(keep[1])
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError("keep", f"quantile keep must satisfy 0 <= lo <= hi <= 1, got {keep}")
        self.column, self.keep = column, (lo, hi)

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        lo, hi = self.keep
        n = int(scores.select(_valid(self.column).sum()).item())
        start, stop = math.floor(lo * n + 1e-9), math.floor(hi * n + 1e-9)
        rank = _rank(scores, self.column, "lowest")
        return _result(scores, self.column, (rank >= start) & (rank < stop), f"quantile [{lo}, {hi}]",
                       f"outside quantile [{lo}, {hi}]")


@register_selector("fraction")
class Fraction(Selector):
    """Keep round(fraction * n) rows with the lowest (or highest) score."""

    def __init__(self, column: str, fraction: float = 0.5, order: Order = "lowest"):
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError("fraction", f"must be in [0, 1], got {fraction}")
        _check_order(order)
        self.column, self.fraction, self.order = column, fraction, order

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        n = int(scores.select(_valid(self.column).sum()).item())
        k = round(self.fraction * n)
        return _result(scores, self.column, _rank(scores, self.column, self.order) < k,
                       f"{self.order} {self.fraction:g} by {self.column}",
                       f"not in the {self.order} {self.fraction:g} by {self.column}")


@register_selector("top_k")
class TopK(Selector):
    """Keep the k rows with the highest (or lowest) score."""

    def __init__(self, column: str, k: int, order: Order = "highest"):
        _check_order(order)
        if k < 0:
            raise ConfigError("k", f"must be >= 0 (rows to keep), got {k}")
        self.column, self.k, self.order = column, k, order

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        return _result(scores, self.column, _rank(scores, self.column, self.order) < int(self.k),
                       f"top {self.k} ({self.order}) by {self.column}", f"not in the top {self.k} ({self.order}) by {self.column}")


@register_selector("random")
class RandomSubset(Selector):
    """Keep a uniformly random subset of exactly round(fraction * n) (or k) rows, seeded by the run's seed:
    the baseline every selection method is compared with at the same budget."""

    def __init__(self, fraction: float | None = None, k: int | None = None):
        if (fraction is None) == (k is None):
            raise ConfigError("fraction", "give exactly one of fraction or k")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ConfigError("fraction", f"must be in [0, 1], got {fraction}")
        if k is not None and k < 0:
            raise ConfigError("k", f"must be >= 0, got {k}")
        self.fraction, self.k = fraction, k

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        import numpy as np

        n = scores.height
        budget = min(n, self.k if self.k is not None else round(self.fraction * n))
        chosen = np.zeros(n, dtype=bool)
        chosen[np.random.default_rng(ctx.seed).permutation(n)[:budget]] = True
        rule = f"random {budget} of {n} (seed {ctx.seed})"
        return scores.select("id").with_columns(
            pl.Series("kept", chosen), pl.lit(1.0).alias("weight"),
            pl.when(pl.Series(chosen)).then(pl.lit(f"kept: {rule}")).otherwise(pl.lit(f"dropped: not drawn, {rule}"))
            .alias("reason"))
