"""Entropy-Adaptive Fine-Tuning, EAFT (Diao et al., arXiv 2601.02151; code PRIS-CV/EAFT, LLaMA-Factory).

`L = sum_t sg(H_t / c)^alpha nll_t / N`: each token's NLL gated by the entropy H_t of the softmax over
the model's `k` largest next-token logits (k=20), detached. A token the model is confident about
(low entropy) but gets wrong, a "confident conflict", pulls little; an uncertain token learns as in
CE. The paper writes the gate as a *normalized* entropy; the authors' code divides the top-20 entropy
by the constant 3.0 (about ln 20 = 2.996, the largest entropy over 20 tokens). `normalizer=None`
(default) divides by ln k, so the gate lies in [0, 1] for any k (0.14% above the authors' 3.0 at
k=20); `normalizer: 3.0` reproduces their code exactly and `1.0` axolotl's unnormalized gate.
N = response tokens of the accumulation window (`num_items_in_batch`), as every loss here.

The entropy comes from `TokenLossSFTTrainer`'s tiled LM-head pass (`head_stats`), never from a
[B, T, V] logits tensor; the reference path (`__call__`) computes it from full logits.
"""

from __future__ import annotations

import math

import torch

from pipeline.core.registry import ConfigError
from pipeline.losses import register_loss
from pipeline.losses.base import TOPK_ENTROPY, LossContext, TokenLoss


@register_loss("eaft")
class EAFT(TokenLoss):
    """`sg(H_topk / normalizer)^alpha * nll_t`, summed and divided by the window's response-token count."""

    def __init__(self, alpha: float = 1.0, k: int = 20, normalizer: float | None = None):
        if not math.isfinite(alpha) or alpha < 0:
            raise ConfigError("alpha", f"must be a finite number >= 0, got {alpha}")
        if k < 2:
            raise ConfigError("k", f"must be >= 2 (the entropy over one logit is always 0), got {k}")
        if normalizer is not None and (not math.isfinite(normalizer) or normalizer <= 0):
            raise ConfigError("normalizer", f"must be a finite number > 0 (or null for ln k), got {normalizer}")
        self.alpha, self.k = float(alpha), int(k)
        self.normalizer = float(normalizer) if normalizer is not None else math.log(k)
        self.head_stats = {TOPK_ENTROPY: {"k": self.k}}

    def per_token(self, nll: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        entropy = ctx.column(TOPK_ENTROPY).detach().to(nll)
        gate = (entropy.clamp(min=0) / self.normalizer).pow(self.alpha) * ctx.mask
        n = ctx.mask.sum().clamp(min=1)
        ctx.metrics["eaft_gate"] = gate.sum() / n
        ctx.metrics["eaft_topk_entropy"] = (entropy * ctx.mask).sum() / n
        return gate * nll / ctx.counts["tokens"]
