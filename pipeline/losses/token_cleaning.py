"""Token cleaning (Pang et al., ICML 2025): train only on the response tokens kept by an upstream score.

The influence score (`L_base(t) - L_ref(t)`, keep the top 60% of response tokens by default) is
computed upstream into the per-token column `token_label`; here tokens with `token_label == 1`
carry plain NLL and the rest are masked. `normalize="kept"` (default) divides by the kept tokens
of the accumulation window (a mean over kept tokens); `"all"` divides by all response tokens
(`num_items_in_batch`), which shrinks the loss by the kept fraction. Which one the paper uses is
UNVERIFIED.
"""

from __future__ import annotations

import torch

from pipeline.losses import register_loss
from pipeline.losses.base import LossContext, TokenLoss


@register_loss("token_cleaning")
class TokenCleaning(TokenLoss):
    """NLL on tokens labelled 1 only, averaged over kept (or all) response tokens."""

    requires = ("token_label",)
    column_params = {"token_label": {"method": "token_cleaning"}}  # influence labels ranked the token cleaning way

    def __init__(self, normalize: str = "kept"):
        if normalize not in ("kept", "all"):
            raise ValueError(f"normalize must be 'kept' or 'all', got {normalize!r}")
        self.normalize = normalize

    def counts(self, mask: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"tokens": mask.sum(), "kept": (mask & (batch["token_label"] == 1)).sum()}

    def per_token(self, nll: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        kept = ctx.mask & (ctx.column("token_label") == 1)
        denom = ctx.counts["kept" if self.normalize == "kept" else "tokens"]
        return kept * nll / denom
