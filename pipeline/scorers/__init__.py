"""Scorers give every example (or token) a number from a model.

A scorer is a function `scorer(examples: pl.DataFrame, ctx: ScoreContext, **params) -> pl.DataFrame`
returning one row per example id with its score columns. Register new ones with
`@register_scorer("name")` or the `pipeline.scorers` entry-point group.
"""

from __future__ import annotations

from pipeline.core.registry import Registry
from pipeline.scorers.base import ScoreContext

SCORERS = Registry("scorer", "pipeline.scorers")
register_scorer = SCORERS.register
get_scorer = SCORERS.get

# Each module registers itself on import.
from pipeline.scorers import clear as _clear  # noqa: E402,F401
from pipeline.scorers import embedding as _embedding  # noqa: E402,F401
from pipeline.scorers import information_gain as _information_gain  # noqa: E402,F401
from pipeline.scorers import learnability as _learnability  # noqa: E402,F401
from pipeline.scorers import perplexity as _perplexity  # noqa: E402,F401
from pipeline.scorers import token_loss as _token_loss  # noqa: E402,F401

__all__ = ["SCORERS", "ScoreContext", "get_scorer", "register_scorer"]
