"""Rho-1 selective language modeling (Lin et al., NeurIPS 2024, arXiv 2404.07965): train on high excess-loss tokens.

Per micro-batch, the response tokens are ranked by excess loss `nll_t - ref_nll_t` (current
model minus a reference model; `ref_nll` is a per-token column aligned with input_ids, computed
upstream) and only the top `ratio` of them (`round(ratio * n)`, at least 1) carry NLL. The loss is
the mean over kept tokens, counted over the accumulation window. Selection is per micro-batch, so
gradient accumulation is not exactly one big batch for this loss. `ratio=0.6` is an UNVERIFIED
default (the paper reports 60-70% on math).
"""

from __future__ import annotations

import torch

from pipeline.losses import register_loss
from pipeline.losses.base import LossContext, TokenLoss


def keep_count(n: torch.Tensor, ratio: float) -> torch.Tensor:
    """How many of n tokens are kept: round(ratio * n), at least 1 when n > 0."""
    k = torch.round(n.float() * ratio).long()
    return torch.where(n > 0, k.clamp(min=1), k)


def top_excess_mask(excess: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask of exactly `keep_count` masked tokens with the largest excess loss."""
    k = int(keep_count(mask.sum(), ratio))
    keep = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    if k > 0:
        scores = excess.masked_fill(~mask, float("-inf")).reshape(-1)
        keep[scores.topk(k).indices] = True
    return keep.view(mask.shape)


@register_loss("rho1")
class Rho1(TokenLoss):
    """NLL on the top `ratio` of response tokens by excess loss over a reference model."""

    requires = ("ref_nll",)

    def __init__(self, ratio: float = 0.6):
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio

    def counts(self, mask: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"tokens": mask.sum(), "kept": keep_count(mask.sum(), self.ratio)}

    def per_token(self, nll: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        excess = nll.detach() - ctx.column("ref_nll").to(nll)
        keep = top_excess_mask(excess, ctx.mask, self.ratio)
        ctx.metrics["rho1_excess_kept"] = (excess * keep).sum() / keep.sum().clamp(min=1)
        return keep * nll / ctx.counts["kept"]
