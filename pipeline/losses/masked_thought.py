"""Masked Thought (Chen et al., arXiv 2403.02178): randomly corrupt response input tokens, keep the labels.

Each response token of the *input* is replaced, independently with probability `rate(step)`,
by a uniformly random vocabulary token (`replace="random"`, the GSM8K recipe) or by a mask token
(`replace="mask"`); labels keep the original tokens and any loss goes on top (plain CE in the paper).

Schedule (the ramp's exact shape is UNVERIFIED): `p=0` is off; with `ramp_steps=0` the rate is
`min(p, cap)`; otherwise it grows linearly from `p` at step 0 to `cap` at `ramp_steps` (cap 0.4 in
the GSM8K recipe, 0.2 in the collator recipes). The random draw is seeded from
`(seed, global step, micro-batch index)`, never from a worker's RNG, so a run is reproducible
and two dataloader workers never repeat a pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MaskedThought:
    """The input transform; call `masked_inputs(input_ids, labels, step, micro)` once per micro-batch."""

    p: float = 0.0
    cap: float = 0.4
    ramp_steps: int = 0
    replace: str = "random"
    seed: int = 0
    vocab_size: int | None = None
    mask_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.replace not in ("random", "mask"):
            raise ValueError(f"masked_thought.replace must be 'random' or 'mask', got {self.replace!r}")
        if not 0 <= self.p <= 1 or not 0 <= self.cap <= 1:
            raise ValueError("masked_thought p and cap must lie in [0, 1]")

    @property
    def enabled(self) -> bool:
        return self.p > 0

    def rate(self, step: int) -> float:
        """Masking probability at optimizer step `step`."""
        if not self.enabled:
            return 0.0
        if self.ramp_steps <= 0:
            return min(self.p, self.cap)
        frac = min(max(step / self.ramp_steps, 0.0), 1.0)
        return min(self.p + (self.cap - self.p) * frac, max(self.cap, self.p))

    def generator(self, step: int, micro: int = 0) -> torch.Generator:
        """A CPU generator seeded from (seed, step, micro) only."""
        return torch.Generator().manual_seed(hash((self.seed, step, micro)) & 0x7FFF_FFFF_FFFF_FFFF)

    def masked_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor, step: int, micro: int = 0) -> torch.Tensor:
        """A copy of `input_ids` with response tokens (`labels != -100`) replaced at `rate(step)`."""
        rate = self.rate(step)
        if rate <= 0:
            return input_ids
        gen = self.generator(step, micro)
        hit = torch.rand(input_ids.shape, generator=gen).to(input_ids.device) < rate
        hit &= labels != -100
        if self.replace == "random":
            if self.vocab_size is None:
                raise ValueError("masked_thought with replace='random' needs vocab_size")
            fill = torch.randint(0, self.vocab_size, input_ids.shape, generator=gen).to(input_ids)
        else:
            if self.mask_token_id is None:
                raise ValueError("masked_thought with replace='mask' needs mask_token_id")
            fill = torch.full_like(input_ids, self.mask_token_id)
        return torch.where(hit, fill, input_ids)
