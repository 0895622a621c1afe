"""The `ifd` rule (Cherry LLM, Li et al., arXiv 2308.12032): drop misaligned rows, keep the highest IFD.

As the reference selection code (`data_by_IFD.py`) does: a row whose IFD is above `max_ifd` (1.0:
the instruction does not help the model produce the answer, so the pair is misaligned) is dropped
first; of the rest, the `fraction` with the highest IFD are kept (the reference's `sample_rate`, a
share of the aligned rows). Without the first step the highest-IFD rows of a noisy pool are mostly
responses that belong to other prompts and refusals (`pipeline run audit` shows it on your data).
"""

from __future__ import annotations

import math

import polars as pl

from pipeline.core.registry import ConfigError
from pipeline.selectors import register_selector
from pipeline.selectors.base import SelectContext, Selector


@register_selector("ifd")
class IFDRule(Selector):
    """Drop IFD > `max_ifd` (misaligned) and missing scores; keep the top `fraction` of the rest by IFD."""

    def __init__(self, column: str = "ifd", fraction: float = 0.5, max_ifd: float = 1.0):
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError("fraction", f"must be in [0, 1], got {fraction}")
        if not max_ifd > 0:
            raise ConfigError("max_ifd", f"must be > 0, got {max_ifd}")
        self.column, self.fraction, self.max_ifd = column, fraction, max_ifd

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        value = pl.col(self.column)
        valid = value.is_not_null() & value.is_not_nan()
        aligned = scores.filter(valid & (value <= self.max_ifd))
        k = math.floor(self.fraction * aligned.height + 1e-9)  # the reference's int(len * sample_rate)
        top = set(aligned.sort([self.column, "id"], descending=[True, False]).head(k).get_column("id").to_list())
        txt = value.round(4).cast(pl.String)
        kept = pl.col("id").is_in(list(top))
        return scores.select(
            "id", kept.alias("kept"), pl.lit(1.0).alias("weight"),
            pl.when(~valid).then(pl.lit("missing score"))
            .when(value > self.max_ifd).then(pl.lit(f"dropped: misaligned, {self.column}=") + txt
                                             + pl.lit(f" > {self.max_ifd:g} (the prompt does not help)"))
            .when(kept).then(pl.lit(f"kept: top {self.fraction:g} of aligned rows by {self.column}; "
                                    f"{self.column}=") + txt)
            .otherwise(pl.lit(f"dropped: not in the top {self.fraction:g} of aligned rows by {self.column}; "
                              f"{self.column}=") + txt)
            .alias("reason"))
