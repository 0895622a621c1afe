"""Instruction-following difficulty, IFD (Li et al., "From Quantity to Quality", Cherry LLM, arXiv 2308.12032).

`IFD(Q, A) = L(A | Q) / L(A)`, the ratio of the mean response losses with and without the
instruction (`ratio="loss"`, the default: what Cherry LLM's selection code `data_by_IFD.py` ranks,
`mean_rate = mean_2 / mean_1`), or `PPL(A | Q) / PPL(A) = exp(L(A|Q) - L(A))` (`ratio="ppl"`, the
paper's formula written with perplexities). Both are 1 at the same rows, but they rank rows below 1
differently, so a top-k differs. A ratio near or above 1 means the instruction barely helps (the
answer is generic, or belongs to another prompt); the reference code skips rows above 1 as
misaligned before taking the top: the `ifd` selection rule does the same (`max_ifd`). Without that
drop the highest-IFD rows of a noisy pool are mostly responses of other prompts and refusals.
Both perplexities come from the batched engine with the base model: `PPL(A | Q)` over the response
tokens of the chat-formatted example (the `perplexity` scorer's `nll`), `PPL(A)` over the response
tokenized alone, as the reference code does (its first token has no context and is not scored).

A chat row (`messages`) is one example whose answer is all of its assistant turns: `PPL(A | Q)` is
over every assistant token given the conversation before it (`encode_examples`, as training sees
them), and `PPL(A)` over exactly those token ids, each turn's reply and end-of-turn token, joined in
order into one sequence without any system or user turn or role header (`assistant_only`). So both
perplexities cover the same tokens (the first has no context in `PPL(A)` and is not scored there),
and a single-turn chat scores as its prompt/response row does when the end-of-turn token is eos.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

from pipeline.models.engine import response_mask, token_nll
from pipeline.models.loading import chat_column, encode_examples
from pipeline.scorers import register_scorer
from pipeline.scorers.base import ScoreContext, Scorer


def answer_only(tokenizer, responses: list[str], max_length: int) -> list[dict]:
    """Each response tokenized alone (+ eos), every token a response token, cut to `max_length`."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for r in responses:
        ids = (tokenizer(r, add_special_tokens=False)["input_ids"] + eos)[:max_length]
        out.append({"input_ids": ids, "completion_mask": [1] * len(ids)})
    return out


def assistant_only(encoded: dict) -> dict:
    """The assistant tokens of an encoded chat (its completion-mask positions) alone, all response tokens."""
    ids = [t for t, m in zip(encoded["input_ids"], encoded["completion_mask"], strict=True) if m]
    return {"input_ids": ids, "completion_mask": [1] * len(ids)}


def mean_nll(encoded: list[dict], nlls: list[np.ndarray]) -> np.ndarray:
    """Mean NLL over each example's response positions (NaN when it has none)."""
    out = []
    for enc, nll in zip(encoded, nlls, strict=True):
        mask = response_mask(enc)
        out.append(float(nll[mask].mean()) if mask.any() else float("nan"))
    return np.asarray(out, dtype=np.float64)


@register_scorer("ifd")
class IFD(Scorer):
    """Columns: id, ifd (`ratio`: loss = L(A|Q) / L(A), ppl = PPL(A|Q) / PPL(A)), ppl_conditioned, ppl_answer."""

    version = "3"  # 2: chat rows score all assistant turns; 3: `ratio`, default the reference's loss ratio
    seeded = False  # deterministic given its models

    def __init__(self, ratio: Literal["loss", "ppl"] = "loss"):
        self.ratio = ratio

    def columns(self) -> list[str]:
        return ["ifd", "ppl_conditioned", "ppl_answer"]

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> pl.DataFrame:
        """Two engine passes with the context's model: the whole example, then the answer alone."""
        tok, model = ctx.tokenizer(), ctx.model()
        pad = tok.pad_token_id or 0
        whole = encode_examples(tok, examples, ctx.max_length)
        alone = answer_only(tok, examples.get_column("response").to_list(), ctx.max_length)
        alone = [a if chat is None else assistant_only(w)  # chat rows: their assistant tokens alone
                 for w, a, chat in zip(whole, alone, chat_column(examples), strict=True)]
        cond = mean_nll(whole, token_nll(model, whole, max_tokens=ctx.max_tokens, pad_id=pad, progress=ctx.progress,
                                         desc="ifd conditioned", response_only=True))
        ans = mean_nll(alone, token_nll(model, alone, max_tokens=ctx.max_tokens, pad_id=pad, progress=ctx.progress,
                                        desc="ifd answer"))
        ifd = cond / ans if self.ratio == "loss" else np.exp(cond - ans)
        return pl.DataFrame({"id": examples.get_column("id"), "ifd": ifd,
                             "ppl_conditioned": np.exp(cond), "ppl_answer": np.exp(ans)})
