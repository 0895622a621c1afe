"""Selection tables, the optional selector context, and the accounting every selector goes through."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

SELECTION_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String,
    "kept": pl.Boolean,
    "weight": pl.Float64,
    "reason": pl.String,
}


@dataclass
class SelectContext:
    """What a selector may need beyond the score table; every field optional, every callable injectable.

    `examples`: the example table (id, prompt, response, domain, ...). `loss_fn`: rows -> per-row losses
    (sensitivity). `train_fn`, `generate_fn`, `confidence_fn`: CLEAR's auto-correct steps.
    `proxy_train_fn`: datamix's proxy runs. `model_name`, `run_dir`, `train_cfg`: for the defaults.
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


def accepts_context(fn: Callable[..., Any]) -> bool:
    """True when `fn` has a parameter named `context` (only those selectors get it)."""
    try:
        return "context" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def run_selector(
    fn: Callable[..., pl.DataFrame],
    scores: pl.DataFrame,
    seed: int = 0,
    context: SelectContext | None = None,
    **params: Any,
) -> pl.DataFrame:
    """Apply a selector and check its result accounts for each input id exactly once.

    The four schema columns come first, cast to their types; any extra columns the selector returns
    (e.g. CLEAR's `old_response`/`new_response`, sensitivity's `draws`) are kept after them.
    """
    if accepts_context(fn):
        params["context"] = context
    result = fn(scores, seed=seed, **params)
    name = getattr(fn, "__name__", fn)
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
    reasons = dropped.group_by("reason").len().sort(["len", "reason"], descending=[True, False]).head(10)
    return {
        "read": selection.height,
        "kept": kept,
        "dropped": selection.height - kept,
        "drop_reasons": dict(zip(reasons.get_column("reason").to_list(), reasons.get_column("len").to_list(), strict=True)),
    }
