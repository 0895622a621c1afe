"""Loss weights from the user's data: a chat turn's `loss_weight` and an example's `weight`.

A chat message may carry `loss_weight` (a number >= 0, default 1): it scales the loss on that assistant
turn's tokens, and 0 masks the turn (its tokens get no label, as a user turn's). Peers' names for it are
read too and stored as `loss_weight`: ms-swift's `loss_scale` (a number) and `loss` (true/false), and
axolotl's ShareGPT `weight` (0 or 1); two of them on one turn must agree. A record may carry a
per-example `weight` (the field `data.fields.weight` names, else `weight`), kept in the example table's
`data_weight` column (null = 1). At training both multiply with the rest: the example weight with the
selection's weight (`example_weight`), the turn weight with `train.think_weight` (`token_weight`),
both into every loss's per-token contribution (`pipeline.losses.base`); the normalizer (response tokens)
does not change. `pipeline ingest` quarantines a weight that is negative, NaN, infinite or not a number,
and a record left with nothing to train (weight 0, or loss_weight 0 on every assistant turn).
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

DATA_WEIGHT = "data_weight"  # the example table's column of per-example weights from the data
TURN_WEIGHT = "loss_weight"  # a chat turn's key
TURN_WEIGHT_ALIASES = ("loss_scale", "weight", "loss")  # ms-swift's number, axolotl ShareGPT's 0/1, ms-swift's bool


def parse_weight(value: Any) -> float | str:
    """A loss weight as a float (a number, or text of one as CSV gives), or why it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return f"must be a number >= 0, got {type(value).__name__}"
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        return f"must be a number >= 0, got {value!r}"
    if not math.isfinite(number) or number < 0:
        return f"must be a finite number >= 0, got {value!r}"
    return number


def canonical_turn(turn: dict, index: int = 0) -> dict | str:
    """The turn with its loss weight under `loss_weight`, whichever key of `TURN_WEIGHT_ALIASES` gave it (the
    alias removed), or why not: a bad value, ms-swift's `loss` not a bool, or two keys that disagree."""
    given = {k: turn[k] for k in (TURN_WEIGHT, *TURN_WEIGHT_ALIASES) if turn.get(k) is not None}
    if not given or set(given) == {TURN_WEIGHT}:
        return turn
    values: dict[str, float] = {}
    for key, value in given.items():
        if key == "loss" and not isinstance(value, bool):
            return f"bad_weight: turn {index} loss must be true or false (ms-swift's switch), got {value!r}"
        weight = float(value) if key == "loss" else parse_weight(value)
        if isinstance(weight, str):
            return f"bad_weight: turn {index} {key} {weight}"
        values[key] = weight
    if len(set(values.values())) > 1:
        return f"bad_weight: turn {index} gives " + ", ".join(f"{k}={v:g}" for k, v in values.items()) + " that disagree"
    return {**{k: v for k, v in turn.items() if k not in given}, TURN_WEIGHT: next(iter(values.values()))}


def turn_weight(turn: dict, index: int = 0) -> float:
    """A chat turn's loss weight (its `loss_weight`, default 1); ValueError naming the turn and key when bad."""
    if turn.get(TURN_WEIGHT) is None:
        return 1.0
    weight = parse_weight(turn[TURN_WEIGHT])
    if isinstance(weight, str):
        raise ValueError(f"bad_weight: turn {index} {TURN_WEIGHT} {weight}")
    return weight


def chat_weight_problem(turns: list[dict]) -> str | None:
    """Why a chat's turn weights cannot train (a bad `loss_weight`, or 0 on every assistant turn), or None."""
    try:
        weights = [turn_weight(t, i) for i, t in enumerate(turns)]
    except ValueError as e:
        return str(e)
    if not any(w > 0 for w, t in zip(weights, turns, strict=True) if t.get("role") == "assistant"):
        return f"zero_weight: every assistant turn has {TURN_WEIGHT} 0, nothing to train"
    return None


def example_weights(examples: pl.DataFrame, selection: list[float] | None = None) -> list[float] | None:
    """Each example's training weight: the selection's weight times its `data_weight` (null = 1); None when
    there is no selection and every data weight is 1 (no column needed). A bad one raises ValueError."""
    out = [1.0] * examples.height if selection is None else [float(w) for w in selection]
    if len(out) != examples.height:
        raise ValueError(f"{len(out)} weights for {examples.height} examples")
    if DATA_WEIGHT in examples.columns:
        ids = examples.get_column("id").to_list() if "id" in examples.columns else list(range(examples.height))
        for i, (ex_id, w) in enumerate(zip(ids, examples.get_column(DATA_WEIGHT).to_list(), strict=True)):
            if w is None:
                continue
            weight = parse_weight(w)
            if isinstance(weight, str):
                raise ValueError(f"example {ex_id}: bad_weight: {DATA_WEIGHT} {weight}")
            out[i] *= weight
    return None if selection is None and all(w == 1.0 for w in out) else out


def with_turn_weights(encoded: list[dict], columns: dict[str, list], column: str) -> dict[str, list]:
    """`columns` (a training dataset's, rows aligned with input_ids) with each chat turn's `loss_weight` (per
    token, from `encode_examples`) multiplied into the per-token weight `column` (a provider's, e.g.
    `train.think_weight`'s, else 1): the one place the two combine."""
    turns = [e.get(TURN_WEIGHT) for e in encoded]
    if all(t is None for t in turns):
        return columns
    given = columns.get(column) or [None] * len(encoded)
    columns[column] = [[float(a) * b for a, b in zip(row or [1.0] * len(e["input_ids"]),
                                                     turn or [1.0] * len(e["input_ids"]), strict=True)]
                       for row, turn, e in zip(given, turns, encoded, strict=True)]
    return columns


def weight_summary(examples: pl.DataFrame) -> dict[str, Any]:
    """What loss weights the data carried: examples with a `weight`, assistant turns with a `loss_weight`
    (and how many of them are 0), each with min / mean / max; {} when the data carried none."""
    import json

    out: dict[str, Any] = {}
    if DATA_WEIGHT in examples.columns:
        values = examples.get_column(DATA_WEIGHT).drop_nulls().cast(pl.Float64)
        if values.len():
            out["examples"] = {"weighted": values.len(), "of": examples.height, **_range(values)}
    if "messages" in examples.columns:
        turns = [t for m in examples.get_column("messages").drop_nulls().to_list() for t in json.loads(m)
                 if t.get("role") == "assistant"]
        given = [turn_weight(t) for t in turns if t.get(TURN_WEIGHT) is not None]
        if given:
            out["turns"] = {"weighted": len(given), "of": len(turns), "zero": sum(w == 0 for w in given),
                            **_range(pl.Series(given, dtype=pl.Float64))}
    return out


def _range(values: pl.Series) -> dict[str, float]:
    return {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max())}


__all__ = ["DATA_WEIGHT", "TURN_WEIGHT", "chat_weight_problem", "example_weights", "parse_weight", "turn_weight",
           "weight_summary", "with_turn_weights"]
