"""Scorers give every example (or token) a number from a model.

A scorer is a `Scorer` subclass (`pipeline.scorers.base`): its parameters are the typed keyword
arguments of `__init__`, and `score(examples, ctx)` returns one row per example id with its score
columns. Register new ones with `@register_scorer("name")` on the class, or through the
`pipeline.scorers` entry-point group; `get_scorer(name, **params)` returns a checked instance.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from pipeline.core.registry import Registry
from pipeline.scorers.base import ScoreContext, Scorer

SCORERS = Registry("scorer", "pipeline.scorers")
S = TypeVar("S", bound=type[Scorer])


def _check_scorer_class(obj: Any, name: str) -> type[Scorer]:
    """`obj` itself when it is a concrete `Scorer` subclass, else a TypeError saying what a scorer is."""
    if not (isinstance(obj, type) and issubclass(obj, Scorer)):
        raise TypeError(f"scorer {name!r} must be a subclass of pipeline.scorers.Scorer with a "
                        f"`score(self, examples, ctx)` method, got {obj!r}")
    if inspect.isabstract(obj):
        raise TypeError(f"scorer {name!r} ({obj.__name__}) does not implement `score(self, examples, ctx)`")
    return obj


def register_scorer(name: str) -> Callable[[S], S]:
    """Class decorator: `@register_scorer("name")` on a `Scorer` subclass names and registers it."""

    def deco(cls: S) -> S:
        _check_scorer_class(cls, name)
        return SCORERS.register(name)(cls)

    return deco


def get_scorer(name: str, **params: Any) -> Scorer:
    """An instance of the scorer `name` (registered, entry point or `module:attr`) with checked `params`.

    Wrong parameters raise `pipeline.core.registry.ConfigError` naming `score.params.<key>`.
    """
    cls = _check_scorer_class(SCORERS.get(name), name)
    return cls.create(params, where="score.params")


# Each module registers itself on import.
from pipeline.scorers import clear as _clear  # noqa: E402,F401
from pipeline.scorers import embedding as _embedding  # noqa: E402,F401
from pipeline.scorers import ifd as _ifd  # noqa: E402,F401
from pipeline.scorers import information_gain as _information_gain  # noqa: E402,F401
from pipeline.scorers import learnability as _learnability  # noqa: E402,F401
from pipeline.scorers import perplexity as _perplexity  # noqa: E402,F401
from pipeline.scorers import token_loss as _token_loss  # noqa: E402,F401

__all__ = ["SCORERS", "ScoreContext", "Scorer", "get_scorer", "register_scorer"]
