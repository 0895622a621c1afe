"""Learnability, LoBaSS / DavIR (Zhou et al., arXiv 2310.13008): `S = 1 - L_ref / L_base`.

`L_base` and `L_ref` are the mean response NLL of the base model and of a reference model, the
base fine-tuned on the candidate set. A high S means the example is learnable: fine-tuning on
this data lowered its loss a lot relative to where it started. The plain difference
`L_base - L_ref` is kept as `loss_diff`; it correlates with length, which the ratio removes.

The reference is either given (`reference`: a folder or model id) or trained once per candidate
set by the score stage (`needs = {"reference_model"}`) through our own trainer (`pipeline.training.train`, full fine-tune by default, settings in
`reference_train`, e.g. `{lora: {r: 16}}` for a LoRA reference via peft, saved merged); the trained
folder lives in the score cache entry, so a resumed run reuses it.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.models.engine import response_mask, token_nll
from pipeline.models.loading import encode_examples
from pipeline.scorers import register_scorer
from pipeline.scorers.base import ScoreContext, Scorer


def response_losses(model, tok, encoded: list[dict], ctx: ScoreContext, desc: str) -> np.ndarray:
    """Mean response NLL per example (NaN when an example has no response token)."""
    nlls = token_nll(model, encoded, max_tokens=ctx.max_tokens, pad_id=tok.pad_token_id or 0,
                     progress=ctx.progress, desc=desc, response_only=True)
    out = []
    for enc, nll in zip(encoded, nlls, strict=True):
        mask = response_mask(enc)
        out.append(float(nll[mask].mean()) if mask.any() else float("nan"))
    return np.asarray(out, dtype=np.float64)


def learnability_ratio(loss_base: np.ndarray, loss_ref: np.ndarray) -> np.ndarray:
    """`1 - L_ref / L_base` (LoBaSS eq. 2)."""
    return 1.0 - np.asarray(loss_ref) / np.asarray(loss_base)


@register_scorer("learnability")
class Learnability(Scorer):
    """Columns: id, loss_base, loss_ref, learnability (= 1 - loss_ref/loss_base), loss_diff (= base - ref)."""

    version = "2"
    seeded = False  # deterministic given its models (the reference, trained at the seed, is one of them)
    model_params = ("reference",)
    needs = frozenset({"reference_model"})

    def __init__(self, reference: str | None = None, reference_train: dict | None = None):
        self.reference, self.reference_train = reference, reference_train

    def columns(self) -> list[str]:
        return ["loss_base", "loss_ref", "learnability", "loss_diff"]

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> pl.DataFrame:
        """Base and reference response losses of `examples` and their LoBaSS ratio."""
        if self.reference is None:
            raise ValueError("learnability needs a `reference` model folder or id (flows train one from "
                             "`reference_train` with pipeline.training.reference)")
        tok = ctx.tokenizer()
        encoded = encode_examples(tok, examples, ctx.max_length)
        base = response_losses(ctx.model(), tok, encoded, ctx, "learnability base")
        ref = response_losses(ctx.model_for(self.reference), tok, encoded, ctx, "learnability ref")
        return pl.DataFrame({
            "id": examples.get_column("id"),
            "loss_base": base,
            "loss_ref": ref,
            "learnability": learnability_ratio(base, ref),
            "loss_diff": base - ref,
        })
