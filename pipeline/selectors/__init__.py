"""Selectors turn a score table into a selection: for every input id, kept or dropped, why, and a weight.

A selector is a class (datatrove style, like the losses): its parameters are the keyword arguments
of `__init__`, and `select(scores, ctx) -> pl.DataFrame` returns `id, kept, weight, reason`.
`get_selector(name, **params)` checks the parameters (a `ConfigError` names `select.<key>`) and
returns an instance; `run_selector` checks that every input id is accounted for exactly once
(kept + dropped = read), so no selector can silently lose a row. Per-row rules subclass `RowFilter`
(or decorate a predicate with `row_filter`). `SelectContext` carries the seed and whatever else a
selector needs (examples, a loss function, a model); `compose` chains selectors. See docs/selectors.md.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.registry import Registry
from pipeline.selectors.base import (
    SELECTION_SCHEMA,
    RowFilter,
    SelectContext,
    Selector,
    row_filter,
    run_selector,
)

SELECTORS = Registry("selector", "pipeline.selectors", base=Selector,
                     hint="(`class X(Selector)` with select(scores, ctx), or a RowFilter with keep(row))")


def register_selector(name: str):
    """Class decorator: `@register_selector("name")` names a `Selector` subclass and registers it."""
    return SELECTORS.register(name)


def selector_class(rule: str, where: str = "select") -> type[Selector]:
    """The selector class registered (or importable) as `rule`; a `ConfigError` naming `where.rule` if none."""
    return SELECTORS.cls(rule, f"{where}.rule")


def build_selector(rule: str, params: dict[str, Any] | None = None, where: str = "select") -> Selector:
    """A checked instance of `rule`: errors (unknown key, wrong type, bad value) name `where.<key>`."""
    return SELECTORS.build(rule, params, where, name_key=f"{where}.rule")


def get_selector(name: str, **params: Any) -> Selector:
    """An instance of the selector `name` with `params`, checked like a recipe's `select` section."""
    return build_selector(name, params, where="select")


from pipeline.selectors import clear as _clear  # noqa: E402,F401  (registers itself)
from pipeline.selectors import datamix as _datamix  # noqa: E402,F401  (registers itself)
from pipeline.selectors import decontaminate as _decontaminate  # noqa: E402,F401  (registers itself)
from pipeline.selectors import dedup as _dedup  # noqa: E402,F401  (registers itself)
from pipeline.selectors import ifd as _ifd  # noqa: E402,F401  (registers itself)
from pipeline.selectors import rules as _rules  # noqa: E402,F401  (registers itself)
from pipeline.selectors import sensitivity as _sensitivity  # noqa: E402,F401  (registers itself)
from pipeline.selectors.compose import compose  # noqa: E402
from pipeline.selectors.sensitivity import estimate_lambda, sensitivity_sampling  # noqa: E402

__all__ = [
    "SELECTION_SCHEMA",
    "SELECTORS",
    "RowFilter",
    "SelectContext",
    "Selector",
    "build_selector",
    "compose",
    "estimate_lambda",
    "get_selector",
    "register_selector",
    "row_filter",
    "run_selector",
    "selector_class",
    "sensitivity_sampling",
]
