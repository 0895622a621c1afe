"""Perplexity of the base model on each example (Harada et al. 2025, arXiv 2506.14681).

Lower base-model perplexity on SFT data predicted larger downstream gains in their study. We keep
both variants because which one the paper used is unverified: `ppl` over response tokens only
(always) and, with `full_text: true`, `ppl_full` over all tokens after the first. Only comparable
within one tokenizer.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.models.engine import response_mask, token_nll
from pipeline.models.loading import encode_examples
from pipeline.scorers import register_scorer
from pipeline.scorers.base import ScoreContext, Scorer


@register_scorer("perplexity")
class Perplexity(Scorer):
    """Columns: id, nll (mean response NLL), ppl = exp(nll), n_tokens (response tokens); with
    `full_text` also nll_full, ppl_full over all tokens after the first (the LM head then projects
    every token, not only the response: about twice the head work)."""

    version = "2"
    seeded = False  # deterministic given its models

    def __init__(self, full_text: bool = False):
        self.full_text = full_text

    def columns(self) -> list[str]:
        return ["nll", "ppl", *(["nll_full", "ppl_full"] if self.full_text else []), "n_tokens"]

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> pl.DataFrame:
        """The perplexity table of the context's model on `examples`."""
        tok = ctx.tokenizer()
        encoded = encode_examples(tok, examples, ctx.max_length)
        nlls = token_nll(
            ctx.model(), encoded, max_tokens=ctx.max_tokens, pad_id=tok.pad_token_id or 0,
            progress=ctx.progress, desc="perplexity", response_only=not self.full_text,
        )
        resp, full, n_tokens = [], [], []
        for enc, nll in zip(encoded, nlls, strict=True):
            mask = response_mask(enc)
            resp.append(float(nll[mask].mean()) if mask.any() else float("nan"))
            full.append(float(nll.mean()) if len(nll) else float("nan"))
            n_tokens.append(int(mask.sum()))
        resp_arr = np.asarray(resp)
        columns = {"id": examples.get_column("id"), "nll": resp_arr, "ppl": np.exp(resp_arr)}
        if self.full_text:
            full_arr = np.asarray(full)
            columns |= {"nll_full": full_arr, "ppl_full": np.exp(full_arr)}
        return pl.DataFrame({**columns, "n_tokens": n_tokens})
