"""Plain cross-entropy on response tokens, summed and divided by `num_items_in_batch`."""

from __future__ import annotations

import torch

from pipeline.losses import register_loss
from pipeline.losses.base import LossContext, TokenLoss


@register_loss("ce")
class CrossEntropy(TokenLoss):
    """Mean next-token NLL over response tokens; usable as `Trainer(compute_loss_func=CrossEntropy())`."""

    trl_loss_type = "nll"

    def per_token(self, nll: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return nll / ctx.counts["tokens"]
