"""CLEAR (Chen & Mueller 2024, arXiv 2403.12776): confidence auto-filter and auto-correct.

Auto-filter keeps rows whose confidence is strictly above gamma (default: the median of the valid
confidences, so about half is kept). Auto-correct (`correct=True`) fine-tunes on the kept rows,
generates y' for every prompt the filter dropped, and replaces y by y' when the confidence that y'
is better than y exceeds eta (0.8), else the row stays dropped. Replacements are recorded in the
extra columns `old_response`, `new_response` and `p_better`; the id stays the original example's
(lineage), and `apply_corrections` puts the new responses into the example table before training.

The three steps are injectable through the context (`train_fn`, `generate_fn`, `confidence_fn`).
The defaults fine-tune with `pipeline.training.train`, generate greedily with
`pipeline.evaluation.heldout.generate`, and judge with a cheaper token-probability variant of the paper's
LLM-judge confidence: `p_better = sigmoid((nll_base(y) - nll_base(y')) / temperature)`, the base
model's mean response NLL of old and new answers (a documented substitute, not the paper's judge).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import polars as pl

from pipeline.selectors import register_selector
from pipeline.selectors.base import SelectContext, Selector


def default_generate_fn(max_new_tokens: int = 160, batch_size: int = 16) -> Callable[[Any, list[str]], list[str]]:
    """Greedy completions from a model folder (or name) with pipeline.evaluation.heldout.generate."""

    def generate_fn(model: Any, prompts: list[str]) -> list[str]:
        from pipeline.models.generate import generate
        from pipeline.models.loading import load_model, load_tokenizer

        return generate(load_model(model), load_tokenizer(model), prompts, max_new_tokens, batch_size, progress=False)

    return generate_fn


def default_confidence_fn(model_name: str, temperature: float = 1.0) -> Callable[[list[str], list[str], list[str]], list[float]]:
    """p(y' better than y) = sigmoid((nll(y) - nll(y')) / temperature) under the base model (token-probability variant)."""

    def confidence_fn(prompts: list[str], old: list[str], new: list[str]) -> list[float]:
        from pipeline.scorers import ScoreContext, get_scorer

        ctx = ScoreContext(model_name=model_name, progress=False)
        n = len(prompts)
        table = pl.DataFrame({"id": [str(i) for i in range(2 * n)], "prompt": prompts + prompts, "response": old + new})
        nll = get_scorer("perplexity")(table, ctx).get_column("nll").to_numpy()
        return list(1.0 / (1.0 + np.exp(-(nll[:n] - nll[n:]) / temperature)))

    return confidence_fn


def _rows(scores: pl.DataFrame, context: SelectContext | None) -> pl.DataFrame:
    """Score rows with prompt/response (from the score table itself or joined from context.examples)."""
    if {"prompt", "response"} <= set(scores.columns):
        return scores
    if context is None or context.examples is None:
        raise ValueError("clear correct=True needs prompt/response columns or context.examples")
    ex = context.examples.select("id", *[c for c in context.examples.columns if c != "id" and c not in scores.columns])
    return scores.join(ex, on="id", how="left", maintain_order="left")


def _callables(context: SelectContext | None) -> tuple[Callable, Callable, Callable]:
    """The injected train/generate/confidence callables, or the model-based defaults."""
    ctx = context or SelectContext()
    train_fn, generate_fn, confidence_fn = ctx.train_fn, ctx.generate_fn, ctx.confidence_fn
    if train_fn is None:
        raise ValueError("clear correct=True needs context.train_fn, (examples, seed) -> model folder: flows "
                         "pass pipeline.training.reference.reference_trainer")
    if confidence_fn is None and not ctx.model_name:
        raise ValueError("clear correct=True needs context.model_name or an injected confidence_fn")
    return train_fn, generate_fn or default_generate_fn(), confidence_fn or default_confidence_fn(ctx.model_name)


@register_selector("clear")
class Clear(Selector):
    """Keep confidence > gamma; with `correct`, replace dropped responses whose correction beats eta.

    `gamma="median"` is the median of the valid confidences; the correction model is trained with
    `ctx.train_fn(kept_rows, ctx.seed)`.
    """

    def __init__(self, column: str = "clear_confidence", gamma: float | Literal["median"] = "median",
                 correct: bool = False, eta: float = 0.8):
        self.column, self.gamma, self.correct, self.eta = column, gamma, correct, eta

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        column = self.column
        conf = pl.col(column).cast(pl.Float64)
        valid = conf.is_not_null() & conf.is_not_nan()
        values = scores.filter(valid).get_column(column).cast(pl.Float64)
        if self.gamma == "median":
            g = float(values.median()) if values.len() else float("inf")
        else:
            g = float(self.gamma)
        txt = pl.lit(f"{column}=") + conf.round(4).cast(pl.String)
        out = scores.select(
            "id",
            (valid & (conf > g)).alias("kept"),
            pl.lit(1.0).alias("weight"),
            pl.when(~valid).then(pl.lit("missing score"))
            .when(conf > g).then(pl.lit("kept: clear filter; ") + txt + pl.lit(f" > gamma={g:.4g}"))
            .otherwise(pl.lit("dropped: clear filter; ") + txt + pl.lit(f" <= gamma={g:.4g}")).alias("reason"),
            pl.lit(None, dtype=pl.String).alias("old_response"),
            pl.lit(None, dtype=pl.String).alias("new_response"),
            pl.lit(None, dtype=pl.Float64).alias("p_better"),
        )
        if not self.correct:
            return out.drop("old_response", "new_response", "p_better")
        return _correct(out, _rows(scores, ctx), valid_mask=scores.select(valid).to_series(),
                        eta=self.eta, seed=ctx.seed, context=ctx)


def _correct(out: pl.DataFrame, rows: pl.DataFrame, valid_mask: pl.Series, eta: float, seed: int,
             context: SelectContext | None) -> pl.DataFrame:
    """Fine-tune on kept rows, regenerate the dropped (scored) prompts, replace where p_better > eta."""
    train_fn, generate_fn, confidence_fn = _callables(context)
    kept = out.get_column("kept")
    todo = (~kept) & valid_mask
    if not bool(todo.any()):
        return out
    model = train_fn(rows.filter(kept), seed)
    cand = rows.filter(todo)
    prompts, old = cand.get_column("prompt").to_list(), cand.get_column("response").to_list()
    new = list(generate_fn(model, prompts))
    p = np.asarray(confidence_fn(prompts, old, new), dtype=np.float64)
    if len(new) != len(prompts) or p.size != len(prompts):
        raise ValueError("generate_fn and confidence_fn must return one value per prompt")
    fix = pl.DataFrame({"id": cand.get_column("id"), "_new": new, "_old": old, "_p": p},
                       schema={"id": pl.String, "_new": pl.String, "_old": pl.String, "_p": pl.Float64})
    rep = pl.col("_p") > eta
    p_txt = pl.lit("p_better=") + pl.col("_p").round(4).cast(pl.String)
    return out.join(fix, on="id", how="left", maintain_order="left").with_columns(
        pl.when(rep).then(True).otherwise(pl.col("kept")).alias("kept"),
        pl.when(rep).then(pl.lit("corrected: clear; ") + p_txt + pl.lit(f" > eta={eta:g}; was: ") + pl.col("reason"))
        .when(pl.col("_p").is_not_null()).then(pl.col("reason") + pl.lit("; correction rejected: ") + p_txt
                                                + pl.lit(f" <= eta={eta:g}"))
        .otherwise(pl.col("reason")).alias("reason"),
        pl.when(rep).then(pl.col("_old")).alias("old_response"),
        pl.when(rep).then(pl.col("_new")).alias("new_response"),
        pl.col("_p").alias("p_better"),
    ).drop("_new", "_old", "_p")


def apply_corrections(examples: pl.DataFrame, selection: pl.DataFrame) -> pl.DataFrame:
    """Examples with `response` replaced by the selection's `new_response` where CLEAR corrected it (ids kept)."""
    if "new_response" not in selection.columns:
        return examples
    fixes = selection.filter(pl.col("new_response").is_not_null()).select("id", "new_response")
    return examples.join(fixes, on="id", how="left", maintain_order="left").with_columns(
        pl.coalesce("new_response", "response").alias("response")
    ).drop("new_response")


__all__ = ["Clear", "apply_corrections", "default_confidence_fn", "default_generate_fn"]
