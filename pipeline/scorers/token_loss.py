"""The per-token loss table of one model: the input of learnability, forgetting tokens, token cleaning, Rho-1.

Token influence `L_base(t) - L_ref(t)` (forgetting tokens, arXiv 2508.04329; token cleaning, Pang et
al. 2025; Rho-1's excess loss, arXiv 2404.07965) needs this table for the base model and for a
reference model; `pipeline.scorers.token_table` derives the labels. Columns: id, nll (list[float32];
position j scores token j+1 of `encode_examples`' input_ids), response_mask (list[bool]).
"""

from __future__ import annotations

import polars as pl

from pipeline.models.engine import response_mask, token_nll
from pipeline.models.loading import encode_examples
from pipeline.scorers import register_scorer
from pipeline.scorers.base import ScoreContext, Scorer
from pipeline.scorers.token_table import from_arrays


@register_scorer("token_loss")
class TokenLossTable(Scorer):
    """Per-token NLL of `model` (default: the context's model) on every example, with its response mask."""

    version = "1"
    seeded = False  # deterministic given its models
    model_params = ("model",)

    def __init__(self, model: str | None = None):
        self.model = model

    def columns(self) -> list[str]:
        return ["nll", "response_mask"]

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> pl.DataFrame:
        """The token table (id, nll, response_mask) of `model` on `examples`."""
        tok = ctx.tokenizer()
        encoded = encode_examples(tok, examples, ctx.max_length)
        nlls = token_nll(ctx.model_for(self.model), encoded, max_tokens=ctx.max_tokens,
                         pad_id=tok.pad_token_id or 0, progress=ctx.progress, desc="token loss")
        return from_arrays(examples.get_column("id").to_list(), nlls, [response_mask(e) for e in encoded])
