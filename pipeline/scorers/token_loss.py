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
from pipeline.scorers.base import ScoreContext
from pipeline.scorers.token_table import from_arrays


@register_scorer("token_loss")
def token_loss(examples: pl.DataFrame, ctx: ScoreContext, model: str | None = None) -> pl.DataFrame:
    """Per-token NLL of `model` (default: the context's model) on every example, with its response mask."""
    tok = ctx.tokenizer()
    encoded = encode_examples(tok, examples, ctx.max_length)
    nlls = token_nll(ctx.model_for(model), encoded, max_tokens=ctx.max_tokens, pad_id=tok.pad_token_id or 0,
                     progress=ctx.progress, desc="token loss")
    return from_arrays(examples.get_column("id").to_list(), nlls, [response_mask(e) for e in encoded])


token_loss.VERSION = "1"
token_loss.key_models = ("model",)
