"""Scorers give every example (or token) a number from a model.

A scorer is a `Scorer` subclass (`pipeline.scorers.base`): its parameters are the typed keyword
arguments of `__init__`, and `score(examples, ctx)` returns one row per example id with its score
columns. Register new ones with `@register_scorer("name")` on the class, or through the
`pipeline.scorers` entry-point group; `get_scorer(name, **params)` returns a checked instance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pipeline.core.registry import Registry
from pipeline.scorers.base import ScoreContext, Scorer

SCORERS = Registry("scorer", "pipeline.scorers", base=Scorer, hint="with a `score(self, examples, ctx)` method")
S = TypeVar("S", bound=type[Scorer])


def register_scorer(name: str) -> Callable[[S], S]:
    """Class decorator: `@register_scorer("name")` on a `Scorer` subclass names and registers it."""
    return SCORERS.register(name)


def get_scorer(name: str, **params: Any) -> Scorer:
    """An instance of the scorer `name` (registered, entry point or `module:attr`) with checked `params`.

    Wrong parameters raise `pipeline.core.registry.ConfigError` naming `score.params.<key>`.
    """
    return SCORERS.build(name, params, "score.params", name_key="score.scorer")


# Each module registers itself on import.
from pipeline.scorers import clear as _clear  # noqa: E402,F401
from pipeline.scorers import embedding as _embedding  # noqa: E402,F401
from pipeline.scorers import ifd as _ifd  # noqa: E402,F401
from pipeline.scorers import information_gain as _information_gain  # noqa: E402,F401
from pipeline.scorers import learnability as _learnability  # noqa: E402,F401
from pipeline.scorers import less as _less  # noqa: E402,F401
from pipeline.scorers import perplexity as _perplexity  # noqa: E402,F401
from pipeline.scorers import token_loss as _token_loss  # noqa: E402,F401

__all__ = ["SCORERS", "ScoreContext", "Scorer", "get_scorer", "register_scorer"]
