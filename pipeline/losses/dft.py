"""Dynamic Fine-Tuning, DFT (Wu et al., arXiv 2508.05629): each token's NLL weighted by its own detached probability.

`L = -sum_t sg(p_t) log p_t / N`, N = response tokens of the accumulation window
(`num_items_in_batch`, as TRL's `loss_type="dft"`; the reference code divides per micro-batch,
which is wrong under gradient accumulation). Without the stop-gradient the gradient of
`-p log p` changes sign for p < 1/e.
"""

from __future__ import annotations

import torch

from pipeline.losses import register_loss
from pipeline.losses.base import LossContext, TokenLoss


@register_loss("dft")
class DFT(TokenLoss):
    """`sg(p_t) * nll_t`, summed and divided by the window's response-token count."""

    trl_loss_type = "dft"

    def per_token(self, nll: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        prob = torch.exp(-nll.detach()) * ctx.mask
        return prob * nll / ctx.counts["tokens"]
