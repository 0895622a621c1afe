"""Token-adaptive loss reweighting, TALR (Lin et al., arXiv 2509.20758).

The weights solve `min_{w in simplex} sum_i w_i l_i + tau sum_i w_i log w_i`, i.e.
`w_i = softmax(-l_i / tau)` over the batch's response tokens (proportional to p_i^(1/tau)):
confident tokens get more weight, so hard or noisy tokens pull less on the model.
Weights are computed from detached losses (stop-gradient).

Which batch: `window="micro"` (default) takes tau and the softmax over one micro-batch;
`window="accumulation"` over every response token of the gradient-accumulation window, i.e. the
optimizer step's batch, as without accumulation. Since each micro-batch is back-propagated on its
own, the trainer (`TokenLossSFTTrainer`) first runs a no-grad forward over the window's micro-batches
(same parameters and, with Masked Thought, the same masked inputs) and hands every micro-batch the
window's tau and softmax normalizer (`window_stats`); each token's weight is then
`exp(-l_i / tau - log Z_window)` with l_i from the training forward, equal to the pre-pass value
up to floating-point nondeterminism (and dropout, when the model has any: then the weights are an
approximation whose sum over the window is close to, not exactly, 1). This costs one extra forward
pass per optimizer step; with several processes each one's window is its own micro-batches.

Defaults the paper does not pin down (UNVERIFIED; parameters):
- `tau=None`: the median token loss of the batch, recomputed each step (a float fixes it);
  `median="token"` takes it over tokens, `"sequence"` over per-sequence mean losses.
- `w_min=0.1`: the paper floors the weights at w_min but its text available here gives no value and
  its code is not released; 0.1, in units of the uniform weight 1/n, keeps every token at least a
  tenth of plain CE's weight, so a very hard token is damped but never ignored (0 disables the floor);
  floored weights are not renormalized.
- `rescale=True`: per-token multiplier `n * w_i` (mean 1, so the loss keeps CE's scale and equals
  `sum_i w_i l_i` over the batch); `False` uses `w_i` itself (loss n times smaller).
Loss = `sum_i m_i l_i / num_items_in_batch`, so accumulation adds micro-batch terms as CE does.
"""

from __future__ import annotations

from typing import Literal

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
    """Per-token NLL weighted by `softmax(-l/tau)` over the micro-batch or the accumulation window (detached),
    floored at w_min/n, optionally rescaled by n."""

    def __init__(self, tau: float | None = None, median: str = "token", w_min: float = 0.1,
                 rescale: bool = True, tau_min: float = 1e-3, window: Literal["micro", "accumulation"] = "micro"):
        if window not in ("micro", "accumulation"):
            raise ValueError(f"talr window must be 'micro' or 'accumulation', got {window!r}")
        self.tau, self.median, self.w_min, self.rescale, self.tau_min = tau, median, w_min, rescale, tau_min
        self.window = window
        self.needs_window_nll = window == "accumulation"

    def _tau(self, loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tau = torch.as_tensor(self.tau) if self.tau is not None else batch_median(loss, mask, self.median)
        return tau.to(loss).clamp(min=self.tau_min)

    def window_stats(self, nlls: list[torch.Tensor], masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """tau, log of the softmax normalizer and the token count over all micro-batches of the window."""
        width = max(x.size(1) for x in nlls)
        pad = [torch.nn.functional.pad(x.float(), (0, width - x.size(1))) for x in nlls]
        pad_m = [torch.nn.functional.pad(m.bool(), (0, width - m.size(1))) for m in masks]
        loss, mask = torch.cat(pad), torch.cat(pad_m)
        if not mask.any():
            return {}
        tau = self._tau(loss, mask)
        return {"tau": tau, "log_z": torch.logsumexp(-loss[mask] / tau, dim=0), "n": mask.sum()}

    def per_token(self, nll: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        mask = ctx.mask
        loss = nll.detach()
        window = ctx.window if self.needs_window_nll else None
        if window:
            n = window["n"].to(loss.device)
            tau = window["tau"].to(loss)
            w = torch.exp(-loss / tau - window["log_z"].to(loss)) * mask
        else:
            n = mask.sum()
            if n == 0:
                return nll * 0.0
            tau = self._tau(loss, mask)
            w = talr_weights(loss, mask, tau)
        if self.w_min > 0:
            w = torch.where(mask, w.clamp(min=self.w_min / n), w)
        if self.rescale:
            w = w * n
        ctx.metrics["talr_tau"] = tau
        return w * nll / ctx.counts["tokens"]
