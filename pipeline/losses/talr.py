"""Token-adaptive loss reweighting, TALR (Lin et al., arXiv 2509.20758).

The weights solve `min_{w in simplex} sum_i w_i l_i + tau sum_i w_i log w_i`, i.e.
`w_i = softmax(-l_i / tau)` over the micro-batch's response tokens (proportional to p_i^(1/tau)):
confident tokens get more weight, so hard or noisy tokens pull less on the model.
Weights are computed from detached losses (stop-gradient).

UNVERIFIED choices, all parameters:
- `tau=None`: the median token loss of the micro-batch, recomputed each step (a float fixes it);
  `median="token"` takes it over tokens, `"sequence"` over per-sequence mean losses.
- `w_min=0.0`: floor on each weight, in units of the uniform weight 1/n (0.1 = at least a
  tenth of plain CE's weight); floored weights are not renormalized.
- `rescale=True`: per-token multiplier `n * w_i` (mean 1, so the loss keeps CE's scale and equals
  `sum_i w_i l_i` without accumulation); `False` uses `w_i` itself (loss n times smaller).
Loss = `sum_i m_i l_i / num_items_in_batch`, so accumulation adds micro-batch terms as CE does.
"""

from __future__ import annotations

import torch

from pipeline.losses import register_loss
from pipeline.losses.base import LossContext, TokenLoss


def batch_median(loss: torch.Tensor, mask: torch.Tensor, level: str = "token") -> torch.Tensor:
    """Median (lower middle) of the masked token losses, or of the per-sequence mean losses."""
    if level == "token":
        return loss[mask].median()
    if level == "sequence":
        per_seq = (loss * mask).sum(1) / mask.sum(1).clamp(min=1)
        return per_seq[mask.any(1)].median()
    raise ValueError(f"median must be 'token' or 'sequence', got {level!r}")


def talr_weights(loss: torch.Tensor, mask: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """`softmax(-loss / tau)` over the masked tokens of the whole batch; zero elsewhere; sums to 1."""
    logits = (-loss / tau).masked_fill(~mask, float("-inf"))
    return torch.softmax(logits.reshape(-1), dim=0).view(loss.shape).nan_to_num(0.0)


@register_loss("talr")
class TALR(TokenLoss):
    """Per-token NLL weighted by `softmax(-l/tau)` over the batch (detached), floored, optionally rescaled by n."""

    def __init__(self, tau: float | None = None, median: str = "token", w_min: float = 0.0,
                 rescale: bool = True, tau_min: float = 1e-3):
        self.tau, self.median, self.w_min, self.rescale, self.tau_min = tau, median, w_min, rescale, tau_min

    def per_token(self, nll: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        mask = ctx.mask
        n = mask.sum()
        if n == 0:
            return nll * 0.0
        loss = nll.detach()
        tau = torch.as_tensor(self.tau) if self.tau is not None else batch_median(loss, mask, self.median)
        tau = tau.to(loss).clamp(min=self.tau_min)
        w = talr_weights(loss, mask, tau)
        if self.w_min > 0:
            w = torch.where(mask, w.clamp(min=self.w_min / n), w)
        if self.rescale:
            w = w * n
        ctx.metrics["talr_tau"] = tau
        return w * nll / ctx.counts["tokens"]
