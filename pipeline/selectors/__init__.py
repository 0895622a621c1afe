"""Selectors turn a score table into a selection: for every input id, kept or dropped, why, and a weight.

A selector is `selector(scores: pl.DataFrame, *, seed: int, **params) -> pl.DataFrame` with columns
`id, kept, weight, reason`. `run_selector` checks that every input id is accounted for exactly once
(kept + dropped = read), so no selector can silently lose a row. Per-row rules can be written as
plain predicates with `row_filter` (datatrove style: return a bool or `(bool, reason)`).
Selectors that need more than the scores (examples, a loss function, a model) declare a `context`
parameter and receive a `SelectContext`; `compose` chains selectors. See docs/selectors.md.
"""

from __future__ import annotations

from pipeline.core.registry import Registry
from pipeline.selectors.base import SELECTION_SCHEMA, SelectContext, row_filter, run_selector

SELECTORS = Registry("selector", "pipeline.selectors")
register_selector = SELECTORS.register
get_selector = SELECTORS.get

from pipeline.selectors import clear as _clear  # noqa: E402,F401  (registers itself)
from pipeline.selectors import datamix as _datamix  # noqa: E402,F401  (registers itself)
from pipeline.selectors import rules as _rules  # noqa: E402,F401  (registers itself)
from pipeline.selectors import sensitivity as _sensitivity  # noqa: E402,F401  (registers itself)
from pipeline.selectors.compose import compose  # noqa: E402
from pipeline.selectors.sensitivity import estimate_lambda, sensitivity_sampling  # noqa: E402

__all__ = [
    "SELECTION_SCHEMA",
    "SELECTORS",
    "SelectContext",
    "compose",
    "estimate_lambda",
    "get_selector",
    "register_selector",
    "row_filter",
    "run_selector",
    "sensitivity_sampling",
]
