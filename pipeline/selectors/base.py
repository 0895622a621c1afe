"""Selection tables, the selector base classes, and the accounting every selector goes through.

A selector is a small class (datatrove style): its parameters are the keyword arguments of its
`__init__` (typed, with defaults, checked by `Part.check_params` before anything runs), and it
implements one method, `select(scores, ctx) -> selection`. Per-row rules subclass `RowFilter` and
implement `keep(row) -> bool | (bool, reason)`; the base class writes the table and the reasons.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipeline.core.config import DEFAULT_MAX_LENGTH
from pipeline.core.registry import Part

SELECTION_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String,
    "kept": pl.Boolean,
    "weight": pl.Float64,
    "reason": pl.String,
}
# Part of the selection contract: a selector may rewrite a kept row's response (CLEAR's correction)
# by writing it here; training and the data card read examples through `apply_corrections`.
CORRECTION = "new_response"


def apply_corrections(examples: pl.DataFrame, selection: pl.DataFrame, keep_old: bool = False) -> pl.DataFrame:
    """Examples with `response` replaced by the selection's `new_response` where a selector corrected it (ids kept).

    With `keep_old`, the response it replaced goes into `old_response` (null for uncorrected rows; an
    `old_response` the examples already carry, from an earlier card, is kept as the original): the
    data card keeps it for audit.
    """
    if CORRECTION not in selection.columns:
        return examples
    fixes = selection.filter(pl.col(CORRECTION).is_not_null()).select("id", pl.col(CORRECTION).alias("_new"))
    out = examples.join(fixes, on="id", how="left", maintain_order="left")
    if keep_old:
        replaced = pl.when(pl.col("_new").is_not_null()).then(pl.col("response"))
        if "old_response" in examples.columns:
            replaced = pl.coalesce(pl.col("old_response").cast(pl.String), replaced)
        out = out.with_columns(replaced.cast(pl.String).alias("old_response"))
    return out.with_columns(pl.coalesce("_new", "response").alias("response")).drop("_new")


@dataclass
class SelectContext:
    """What a selector may need beyond the score table; every field optional, every callable injectable.

    `seed`: the run's seed (set by `run_selector`; sampling selectors read it). `examples`: the example
    table (id, prompt, response, domain, ...). `loss_fn`: rows -> per-row losses (sensitivity).
    `train_fn`, `generate_fn`, `confidence_fn`: CLEAR's auto-correct steps. `proxy_train_fn`:
    datamix's proxy runs. `model_name`, `run_dir`, `train_cfg`, `max_length` (the recipe's scoring
    tokenization): for the defaults.
    """

    examples: pl.DataFrame | None = None
    loss_fn: Callable[..., Any] | None = None
    model_name: str | None = None
    run_dir: str | None = None
    train_fn: Callable[..., Any] | None = None
    generate_fn: Callable[..., Any] | None = None
    confidence_fn: Callable[..., Any] | None = None
    proxy_train_fn: Callable[..., Any] | None = None
    train_cfg: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_length: int = DEFAULT_MAX_LENGTH


class Selector(Part):
    """Base of every selector: parameters are `__init__`'s keyword arguments, the work is `select`."""

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        """Columns `id, kept, weight, reason` (plus any extras) with one row per input id."""
        raise NotImplementedError(f"{type(self).__name__} must implement select(scores, ctx)")

    @property
    def label(self) -> str:
        """The registered name, or the class name of an unregistered selector (used in reasons and errors)."""
        return self.name or type(self).__name__

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k, '?')!r}" for k in self.param_names())
        return f"{type(self).__name__}({args})"


class RowFilter(Selector):
    """A selector deciding one row at a time (datatrove's filter): subclasses implement `keep`."""

    def keep(self, row: dict[str, Any]) -> bool | tuple[bool, str]:
        """Whether to keep `row` (a dict of the score table's columns), optionally with a reason."""
        raise NotImplementedError(f"{type(self).__name__} must implement keep(row)")

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        """Calls `keep` on every row; weight 1.0; reason `kept: <name>`/`dropped: <name>` when none is given."""
        kept, reasons = [], []
        for row in scores.iter_rows(named=True):
            out = self.keep(row)
            ok, reason = out if isinstance(out, tuple) else (out, "")
            kept.append(bool(ok))
            reasons.append(reason or f"{'kept' if ok else 'dropped'}: {self.label}")
        return pl.DataFrame(
            {"id": scores.get_column("id"), "kept": pl.Series(kept, dtype=pl.Boolean),
             "weight": pl.Series([1.0] * len(kept), dtype=pl.Float64),
             "reason": pl.Series(reasons, dtype=pl.String)}
        )


def row_filter(predicate: Callable[..., bool | tuple[bool, str]]) -> type[RowFilter]:
    """A `RowFilter` class from a predicate `(row, **params) -> bool | (bool, reason)`.

    The predicate's keyword parameters become the class's declared parameters (names, types and
    defaults), so a recipe's misspelt or mistyped key is reported like any other selector's.
    """
    sig = inspect.signature(predicate)
    params = list(sig.parameters.values())[1:]
    try:
        hints = typing.get_type_hints(predicate)
    except Exception:  # noqa: BLE001 - unresolvable hints: names are still checked
        hints = {}

    def __init__(self: RowFilter, **params: Any) -> None:
        sig.bind(None, **params)  # TypeError naming a key the predicate does not take
        self._params = params

    def keep(self: RowFilter, row: dict[str, Any]) -> bool | tuple[bool, str]:
        return predicate(row, **self._params)

    def __repr__(self: RowFilter) -> str:
        return f"{predicate.__name__}({', '.join(f'{k}={v!r}' for k, v in self._params.items())})"

    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params
           if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)])
    __init__.__annotations__ = {p.name: hints[p.name] for p in params if p.name in hints}
    cls = type(predicate.__name__, (RowFilter,), {
        "__init__": __init__, "keep": keep, "__repr__": __repr__, "__doc__": predicate.__doc__,
        "__module__": predicate.__module__, "__qualname__": predicate.__qualname__,
    })
    cls.name = predicate.__name__
    return cls


def run_selector(
    selector: Selector,
    scores: pl.DataFrame,
    seed: int = 0,
    context: SelectContext | None = None,
) -> pl.DataFrame:
    """Apply a selector and check its result accounts for each input id exactly once.

    The selector gets `context` (or an empty one) with `seed` set. The four schema columns come
    first, cast to their types; any extra columns the selector returns (e.g. CLEAR's
    `old_response`/`new_response`, sensitivity's `draws`) are kept after them, rows in input order.
    """
    if not isinstance(selector, Selector):
        hint = ("a class: pass an instance, e.g. get_selector(name, **params)" if isinstance(selector, type)
                else "not a Selector: subclass Selector (or RowFilter) and create it with its parameters")
        raise TypeError(f"run_selector got {selector!r}, {hint}")
    ctx = dataclasses.replace(context, seed=seed) if context is not None else SelectContext(seed=seed)
    result = selector.select(scores, ctx)
    name = selector.label
    missing = set(SELECTION_SCHEMA) - set(result.columns)
    if missing:
        raise ValueError(f"selector {name} returned no {sorted(missing)} column(s)")
    extra = [c for c in result.columns if c not in SELECTION_SCHEMA]
    result = result.select([pl.col(c).cast(t) for c, t in SELECTION_SCHEMA.items()] + extra)
    ids_in = scores.get_column("id")
    if result.height != ids_in.len() or result.get_column("id").n_unique() != result.height:
        raise ValueError(
            f"selector {name} returned {result.height} rows for {ids_in.len()} ids: "
            "every input id must appear exactly once"
        )
    if set(result.get_column("id").to_list()) != set(ids_in.to_list()):
        raise ValueError(f"selector {name} returned ids that are not its input ids")
    order = pl.DataFrame({"id": ids_in.cast(pl.String)})
    return order.join(result, on="id", how="left", maintain_order="left")


def summarize(selection: pl.DataFrame) -> dict[str, Any]:
    """Counts of kept and dropped rows and the most common drop reasons."""
    kept = int(selection.get_column("kept").sum())
    dropped = selection.filter(~pl.col("kept"))
    reasons = dropped.group_by("reason").len().sort(["len", "reason"], descending=[True, False]).head(10)
    return {
        "read": selection.height,
        "kept": kept,
        "dropped": selection.height - kept,
        "drop_reasons": dict(zip(reasons.get_column("reason").to_list(), reasons.get_column("len").to_list(), strict=True)),
    }
