"""The per-token loss table and what token-level methods derive from it.

A token table has one row per example: `id`, `nll` (list[float32], next-token NLL at positions
0..L-2, i.e. position j scores token j+1 of `encode_examples`' input_ids) and `response_mask`
(list[bool], same length, True where token j+1 is a response token). Learnability, forgetting
tokens, token cleaning and Rho-1 all read it: influence is `nll_base - nll_ref` per token.

Trainers want per-token columns aligned with input_ids (value at index t belongs to token t);
`align_to_input_ids` / `aligned_column` shift by one and put 0 at prompt positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

NLL, MASK = "nll", "response_mask"


def from_arrays(ids: Sequence[str], nlls: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> pl.DataFrame:
    """A token table from per-example NLL arrays and response masks (as `token_nll` returns them)."""
    return pl.DataFrame(
        {
            "id": list(ids),
            NLL: [np.asarray(n, dtype=np.float32) for n in nlls],
            MASK: [np.asarray(m, dtype=bool) for m in masks],
        },
        schema={"id": pl.String, NLL: pl.List(pl.Float32), MASK: pl.List(pl.Boolean)},
    )


def _lists(table: pl.DataFrame, column: str, dtype: Any) -> list[np.ndarray]:
    return [np.asarray(v, dtype=dtype) for v in table.get_column(column).to_list()]


def influence(base: pl.DataFrame, ref: pl.DataFrame) -> pl.DataFrame:
    """Per-token influence `nll_base - nll_ref` (0 at prompt positions): id, influence, response_mask."""
    if base.get_column("id").to_list() != ref.get_column("id").to_list():
        raise ValueError("base and reference token tables must list the same ids in the same order")
    values = []
    for b, r, m in zip(_lists(base, NLL, np.float32), _lists(ref, NLL, np.float32), _lists(base, MASK, bool),
                       strict=True):
        if len(b) != len(r):
            raise ValueError("token tables disagree on sequence length: were they tokenized the same way?")
        values.append(np.where(m, b - r, 0.0).astype(np.float32))
    return pl.DataFrame(
        {"id": base.get_column("id"), "influence": values, MASK: base.get_column(MASK)},
        schema={"id": pl.String, "influence": pl.List(pl.Float32), MASK: pl.List(pl.Boolean)},
    )


def _top_labels(infl: pl.DataFrame, fraction: float, below: int) -> pl.DataFrame:
    """+1 for the global top `fraction` of response tokens by influence, `below` for the rest, 0 on prompts."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    values = _lists(infl, "influence", np.float32)
    masks = _lists(infl, MASK, bool)
    flat = np.concatenate([v[m] for v, m in zip(values, masks, strict=True)]) if values else np.zeros(0)
    n_top = int(round(fraction * flat.size))
    is_top = np.zeros(flat.size, dtype=bool)
    is_top[np.argsort(-flat, kind="stable")[:n_top]] = True
    labels, offset = [], 0
    for m in masks:
        lab = np.zeros(m.size, dtype=np.int8)
        k = int(m.sum())
        lab[m] = np.where(is_top[offset : offset + k], 1, below)
        labels.append(lab)
        offset += k
    return pl.DataFrame(
        {"id": infl.get_column("id"), "token_label": labels},
        schema={"id": pl.String, "token_label": pl.List(pl.Int8)},
    )


def forgetting_labels(infl: pl.DataFrame, rho: float = 0.7) -> pl.DataFrame:
    """Forgetting tokens (arXiv 2508.04329): global top `rho` of response tokens +1, the rest -1."""
    return _top_labels(infl, rho, below=-1)


def cleaning_labels(infl: pl.DataFrame, keep: float = 0.6) -> pl.DataFrame:
    """Token cleaning (Pang et al. 2025): global top `keep` of response tokens 1 (trained), the rest 0."""
    return _top_labels(infl, keep, below=0)


def influence_labels(infl: pl.DataFrame, method: str, fraction: float | None = None) -> pl.DataFrame:
    """`forgetting` or `token_cleaning` labels of an influence table; `fraction` None = the method's default."""
    labelers = {"forgetting": (forgetting_labels, "rho"), "token_cleaning": (cleaning_labels, "keep")}
    if method not in labelers:
        raise ValueError(f"unknown token method {method!r}: forgetting, token_cleaning or rho1")
    fn, key = labelers[method]
    return fn(infl) if fraction is None else fn(infl, **{key: fraction})


def align_to_input_ids(values: Sequence[float] | np.ndarray, mask: Sequence[bool] | np.ndarray | None = None,
                       fill: float = 0) -> list:
    """Shift a table row (position j = token j+1) onto input_ids (index t = token t); `fill` at prompt positions."""
    arr = np.asarray(values)
    if mask is not None:
        arr = np.where(np.asarray(mask, dtype=bool), arr, fill)
    return [fill, *arr.tolist()]


def aligned_column(table: pl.DataFrame, column: str, ids: Sequence[str] | None = None, fill: float = 0,
                   mask_from: pl.DataFrame | None = None) -> list[list]:
    """Per-example lists aligned with input_ids, in the order of `ids` (default: the table's order).

    Prompt positions get `fill`: the mask comes from `mask_from` (a token table) or the table's own
    `response_mask` column, when present.
    """
    masks_src = mask_from if mask_from is not None else (table if MASK in table.columns else None)
    order = list(ids) if ids is not None else table.get_column("id").to_list()
    pos = {i: n for n, i in enumerate(table.get_column("id").to_list())}
    missing = [i for i in order if i not in pos]
    if missing:
        raise KeyError(f"{len(missing)} ids are not in the token table, e.g. {missing[0]}")
    values = table.get_column(column).to_list()
    mask_pos = {i: n for n, i in enumerate(masks_src.get_column("id").to_list())} if masks_src is not None else {}
    masks = masks_src.get_column(MASK).to_list() if masks_src is not None else None
    return [align_to_input_ids(values[pos[i]], masks[mask_pos[i]] if masks is not None else None, fill)
            for i in order]


def token_columns(base_path: str | Path, ref_path: str | Path, method: str, ids: Sequence[str] | None = None,
                  fraction: float | None = None) -> dict[str, list[list]]:
    """Per-token training columns aligned with input_ids from cached base/ref token tables.

    method: "forgetting" -> {"token_label": +1/-1/0} (rho default 0.7); "token_cleaning" ->
    {"token_label": 1/0} (keep default 0.6); "rho1" -> {"ref_nll": reference NLL, 0 on prompts}.
    """
    base, ref = pl.read_parquet(base_path, glob=False), pl.read_parquet(ref_path, glob=False)
    if method == "rho1":
        return {"ref_nll": aligned_column(ref, NLL, ids, mask_from=base)}
    return {"token_label": aligned_column(influence_labels(influence(base, ref), method, fraction), "token_label", ids)}
