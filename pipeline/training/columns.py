"""Training columns a loss `requires`, made by registered column providers (a new one is one class).

A loss declares the batch columns it reads (`requires = ("ref_nll",)`, defaults for their providers in
`column_params`); before training, the train stage builds the provider of each column (registered
under the column's name, or the one `train.columns` names) and joins what it computes to the
examples. A provider returns, per column, one row per example: a list aligned with the example's
input_ids, a list with one value per response token, or a single number (a per-example column).

Built in, both from held-out reference token losses (`pipeline.training.token_labels`, configured by
`train.token_labels`): `ref_nll` (each response token's NLL under a reference that never trained
on its example: Rho-1, Lin et al., arXiv 2404.07965) and `token_label` (influence labels
`L_base - L_ref`: forgetting tokens, arXiv 2508.04329, or token cleaning, Pang et al. 2025).
A user adds one in their own file with `@register_column("my_column")` (docs/losses.md).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl

from pipeline.core.registry import ConfigError, Part, Registry
from pipeline.scorers import ScoreContext
from pipeline.scorers.cache import score_cached
from pipeline.scorers.token_table import (
    NLL,
    aligned_column,
    influence,
    influence_labels,
)

ColumnRows = list[list[float]] | list[float]


@dataclass
class ColumnContext:
    """What a provider may use: the base model, the tokenization, the seed, the stage cache, and how held-out
    references are obtained (`references`: a recipe's `train.token_labels`; `reference_train`: the recipe's
    training settings a reference inherits)."""

    model: str
    max_length: int
    cache_root: str
    seed: int = 0
    references: dict[str, Any] = field(default_factory=dict)
    reference_train: dict[str, Any] = field(default_factory=dict)

    def token_table(self, examples: pl.DataFrame, model: str | None = None) -> Path:
        """The cached per-token loss table of `examples` under `model` (default: the base)."""
        ctx = ScoreContext(model_name=self.model, max_length=self.max_length, seed=self.seed)
        return Path(score_cached(examples, "token_loss", ctx, Path(self.cache_root) / "scorers",
                                 {"model": model} if model else None))

    def heldout_tables(self, examples: pl.DataFrame) -> tuple[Path, Path]:
        """(base, reference) token tables of `examples`, each example scored by a reference that never saw it."""
        from pipeline.training.token_labels import heldout_tables

        return heldout_tables(examples, self.model, self.max_length, self.cache_root, self.references, self.seed,
                              self.reference_train)


class ColumnProvider(Part, ABC):
    """Computes training columns for the examples a run trains on; `provides` lists them (default: its name)."""

    provides: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return cls.provides or (cls.name,)

    @abstractmethod
    def compute(self, examples: pl.DataFrame, ctx: ColumnContext) -> dict[str, ColumnRows]:
        """`{column: one row per example, in the examples' order}` for every column in `provides`."""


COLUMNS = Registry("column provider", "pipeline.columns", base=ColumnProvider,
                   hint="with a `compute(self, examples, ctx)` method")
register_column = COLUMNS.register


@register_column("ref_nll")
class ReferenceNLL(ColumnProvider):
    """Each response token's NLL under a held-out reference model (0 on the prompt), aligned with input_ids."""

    needs = frozenset({"trainer"})

    def compute(self, examples: pl.DataFrame, ctx: ColumnContext) -> dict[str, ColumnRows]:
        base, ref = ctx.heldout_tables(examples)
        ids = examples.get_column("id").to_list()
        return {"ref_nll": aligned_column(pl.read_parquet(ref, glob=False), NLL, ids, mask_from=pl.read_parquet(base, glob=False))}


@register_column("token_label")
class InfluenceLabels(ColumnProvider):
    """Labels from the influence `L_base - L_ref` of each response token, ranked over all kept tokens.

    `forgetting`: the top `fraction` (0.7) +1, the rest -1; `token_cleaning`: the top `fraction` (0.6)
    1, the rest 0. `train.token_labels.method` / `.fraction` override the loss's `column_params`.
    """

    needs = frozenset({"trainer"})

    def __init__(self, method: Literal["forgetting", "token_cleaning"] = "forgetting", fraction: float | None = None):
        self.method, self.fraction = method, fraction

    def compute(self, examples: pl.DataFrame, ctx: ColumnContext) -> dict[str, ColumnRows]:
        method = ctx.references.get("method") or self.method
        fraction = ctx.references.get("fraction")
        fraction = self.fraction if fraction is None else fraction
        base, ref = ctx.heldout_tables(examples)
        infl = influence(pl.read_parquet(base, glob=False), pl.read_parquet(ref, glob=False))
        labels = influence_labels(infl, method, fraction)
        return {"token_label": aligned_column(labels, "token_label", examples.get_column("id").to_list())}


@register_column("token_weight")
class ThinkWeight(ColumnProvider):
    """Per-token loss weight: `think_weight` on the response tokens strictly inside `open`...`close` reasoning
    spans, 1 elsewhere (the delimiters too, so the model still learns to close a span). Every loss multiplies
    its token contributions by `token_weight` when the batch has it (`pipeline.losses.base`)."""

    def __init__(self, think_weight: float = 1.0, open: str = "<think>", close: str = "</think>"):
        if not (math.isfinite(think_weight) and think_weight >= 0):
            raise ConfigError("think_weight", f"must be a finite number >= 0, got {think_weight}")
        if not open or not close:
            raise ConfigError("open", "the reasoning delimiters must be non-empty strings")
        self.think_weight, self.open, self.close = think_weight, open, close

    def compute(self, examples: pl.DataFrame, ctx: ColumnContext) -> dict[str, ColumnRows]:
        from pipeline.models.loading import encode_examples, load_tokenizer

        tok = load_tokenizer(ctx.model)
        rows, spans = [], 0
        for enc in encode_examples(tok, examples, ctx.max_length):
            inside = span_mask(tok, enc["input_ids"], self.open, self.close)
            spans += any(inside)
            rows.append([self.think_weight if (i and m) else 1.0
                         for i, m in zip(inside, enc["completion_mask"], strict=True)])
        print(f"[pipeline] think_weight={self.think_weight:g}: {self.open}...{self.close} spans in {spans} of "
              f"{examples.height} examples" + ("" if spans else " (no token was reweighted)"), flush=True)
        if not spans and self.think_weight != 1.0:
            warnings.warn(f"train.think_weight={self.think_weight:g} changes nothing: {self.open}...{self.close} "
                          f"reasoning spans were found in 0 of {examples.height} training rows (set "
                          "train.think_delimiters to the delimiters your data uses)", UserWarning, stacklevel=2)
        return {"token_weight": rows}


def span_mask(tokenizer: Any, ids: list[int], open: str, close: str) -> list[bool]:
    """For each token, whether its text lies strictly inside an `open`...`close` span (an unclosed span runs to
    the end). Token texts come from decoding each token alone, so spans are found however they tokenize."""
    pieces = [tokenizer.decode([t]) for t in ids]
    starts, pos = [], 0
    for piece in pieces:
        starts.append(pos)
        pos += len(piece)
    text = "".join(pieces)
    inside_chars: list[tuple[int, int]] = []
    at = text.find(open)
    while at >= 0:
        end = text.find(close, at + len(open))
        inside_chars.append((at + len(open), len(text) if end < 0 else end))
        at = -1 if end < 0 else text.find(open, end + len(close))
    return [any(lo <= s and s + len(p) <= hi for lo, hi in inside_chars) and len(p) > 0
            for s, p in zip(starts, pieces, strict=True)]


def column_providers(loss: Any, chosen: dict[str, str] | None = None) -> list[ColumnProvider]:
    """The provider of every column `loss.requires`: `chosen[column]` (a recipe's `train.columns`) or the
    provider registered under the column's name, built with the loss's `column_params` for it."""
    chosen, params = chosen or {}, getattr(loss, "column_params", {}) or {}
    built: dict[str, ColumnProvider] = {}
    for column in getattr(loss, "requires", ()):
        name = chosen.get(column, column)
        where = f"train.columns.{column}"
        if name not in COLUMNS.names() and ":" not in name:
            raise ConfigError(where, f"loss {type(loss).__name__} requires the column {column!r} and no provider "
                                     f"makes it: register one with @register_column({column!r}) in the loss's "
                                     f"module, or name one with train.columns={{{column}: module:Class}} "
                                     f"(providers: {', '.join(COLUMNS.names())})")
        provider = COLUMNS.build(name, params.get(column), where, name_key=where)
        if column not in provider.columns():
            raise ConfigError(where, f"provider {name!r} makes {list(provider.columns())}, not {column!r}")
        built.setdefault(name, provider)
    return list(built.values())


def training_columns(examples: pl.DataFrame, providers: list[ColumnProvider], ctx: ColumnContext
                     ) -> dict[str, ColumnRows]:
    """Every provider's columns for `examples`, checked: one row per example, no column made twice."""
    out: dict[str, ColumnRows] = {}
    for provider in providers:
        made = provider.compute(examples, ctx)
        for column, rows in made.items():
            if column in out:
                raise ValueError(f"column {column!r} is made by two providers")
            if len(rows) != examples.height:
                raise ValueError(f"column provider {provider.name or type(provider).__name__} gave {len(rows)} "
                                 f"rows of {column!r} for {examples.height} examples")
            out[column] = rows
        missing = [c for c in provider.columns() if c not in made]
        if missing:
            raise ValueError(f"column provider {provider.name or type(provider).__name__} did not make {missing}")
    return out
