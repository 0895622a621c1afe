"""Anchored Supervised Fine-Tuning, ASFT (Zhu et al., ICLR 2026, arXiv 2509.23753; code zhuchichi56/ASFT).

DFT plus a KL anchor to the frozen base model:
`L = sum_t [sg(p_t) nll_t + kl_coef * KL(q_t || p_t)] / N`, p_t the trained model's and q_t the
reference's next-token distribution at response token t, `KL(q || p) = sum_v q_v (log q_v - log p_v)`.
As in the reference code (`F.kl_div(log_softmax(policy), softmax(reference))`, `kl_weight=0.1`): the
forward KL from the reference, over the whole vocabulary, on response tokens only, added per token
before the mean, with gradient to the trained model only. N = response tokens of the accumulation
window (the reference code divides per micro-batch).

The reference is the base model training started from (`reference: null`), or the model `reference`
names. `TokenLossSFTTrainer` runs it under `torch.inference_mode` in the trained model's dtype and
device and computes the KL inside its tiled LM-head pass (`head_stats`), tile by tile for both
models. Under LoRA the base is the trained model with its adapter disabled (no second copy, as the
reference code's LoRA script does); full fine-tuning or a named reference loads one frozen copy.
"""

from __future__ import annotations

import math

import torch

from pipeline.core.registry import ConfigError
from pipeline.losses import register_loss
from pipeline.losses.base import REFERENCE_KL, LossContext, TokenLoss


@register_loss("asft")
class ASFT(TokenLoss):
    """`sg(p_t) * nll_t + kl_coef * KL(reference_t || model_t)`, summed and divided by the window's response tokens."""

    def __init__(self, kl_coef: float = 0.1, reference: str | None = None):
        if not math.isfinite(kl_coef) or kl_coef < 0:
            raise ConfigError("kl_coef", f"must be a finite number >= 0, got {kl_coef}")
        self.kl_coef, self.reference = float(kl_coef), reference
        self.head_stats = {REFERENCE_KL: {"reference": reference}}

    def per_token(self, nll: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        mask = ctx.mask
        prob = torch.exp(-nll.detach()) * mask
        kl = ctx.column(REFERENCE_KL).to(nll) * mask
        n = mask.sum().clamp(min=1)
        ctx.metrics["asft_kl"] = kl.detach().sum() / n
        ctx.metrics["asft_dft"] = (prob * nll).detach().sum() / n
        return (prob * nll + self.kl_coef * kl) / ctx.counts["tokens"]
