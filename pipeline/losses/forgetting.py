"""Forgetting tokens (Taheri et al., arXiv 2508.04329): learn positive tokens, unlearn negative ones.

Tokens are labelled upstream from their influence `L_base(t) - L_ref(t)` (top rho = 0.7
positive, the rest negative) into the per-token column `token_label` (1 positive, -1 negative,
0 neutral/ignored). The loss is
`L = sum(pos nll) / n_pos - lambda(step) * sum(neg min(nll, nll_cap)) / n_neg`,
with lambda ramping linearly from 0 to `lambda_max` (0.25, the paper's) over `ramp_steps`
(default: the run's max_steps; lambda_max when the schedule is unknown). n_pos and n_neg are
counted over the whole accumulation window when the trainer passes them.

The ascent term is unbounded in the paper; here each negative token's nll is clamped at
`nll_cap` (UNVERIFIED default 5.0, i.e. p ~ 0.007): once a negative token is that improbable its
gradient is zero, so the ascent cannot diverge.
"""

from __future__ import annotations

import torch

from pipeline.losses import register_loss
from pipeline.losses.base import LossContext, TokenLoss


def ramp(step: int, max_steps: int, final: float) -> float:
    """Linear ramp from 0 at step 0 to `final` at `max_steps`; `final` when the length is unknown."""
    if max_steps <= 0:
        return final
    return final * min(max(step / max_steps, 0.0), 1.0)


@register_loss("forgetting")
class Forgetting(TokenLoss):
    """Descent on tokens labelled 1, bounded ascent (weight lambda(step)) on tokens labelled -1."""

    requires = ("token_label",)
    column_params = {"token_label": {"method": "forgetting"}}  # influence labels ranked the forgetting way

    def __init__(self, lambda_max: float = 0.25, nll_cap: float = 5.0, ramp_steps: int | None = None):
        self.lambda_max, self.nll_cap, self.ramp_steps = lambda_max, nll_cap, ramp_steps

    def counts(self, mask: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        label = batch["token_label"]
        return {"tokens": mask.sum(), "pos": (mask & (label > 0)).sum(), "neg": (mask & (label < 0)).sum()}

    def lam(self, step: int, max_steps: int) -> float:
        """The ascent weight at `step`."""
        return ramp(step, self.ramp_steps if self.ramp_steps is not None else max_steps, self.lambda_max)

    def per_token(self, nll: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        label = ctx.column("token_label")
        pos = ctx.mask & (label > 0)
        neg = ctx.mask & (label < 0)
        lam = self.lam(ctx.step, ctx.max_steps)
        ctx.metrics["forget_lambda"] = torch.tensor(lam)
        descent = pos * nll / ctx.counts["pos"]
        ascent = neg * nll.clamp(max=self.nll_cap) / ctx.counts["neg"]
        return descent - lam * ascent
