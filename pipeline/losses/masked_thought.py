"""Masked Thought (Chen et al., arXiv 2403.02178): randomly corrupt response input tokens, keep the labels.

Each response token of the *input* is replaced, independently with probability `rate(step)`,
by a uniformly random vocabulary token (`replace="random"`, the GSM8K recipe) or by a mask token
(`replace="mask"`); labels keep the original tokens and any loss goes on top (plain CE in the paper).

Schedule (the paper's reference trainer): the rate ramps linearly from `p` (default 0) to `cap`
(0.4 for GSM8K; 0.2 in the collator recipes) over the first `ramp_ratio` (default 0.66) of the
run's optimizer steps, then stays at `cap`:
`rate = p + (cap - p) * min(step / (ramp_ratio * max_steps + 1), 1)`, which with `p=0` is the
reference's `cap * step / (0.66 * max_steps + 1)`. `ramp_steps` replaces that length by an absolute
number of steps; `ramp_ratio=0` (or an unknown run length) gives the constant rate `cap`.
`enabled` turns the transform on or off independently of the starting rate `p`. Defaults and bounds
are those of the recipe's `train.masked_thought` section (one place for each), except that a
transform built by hand is enabled.

The random draw is seeded from `(seed, process rank, global step, micro-batch index)`, never from a
worker's RNG: a run is reproducible, two dataloader workers never repeat a pattern, and the ranks
of a multi-process run (whose batches differ) do not share one pattern either. The rank is read from
`torch.distributed` when it is initialized (else 0) unless given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.core.config import MaskedThoughtSection, check_section

_SECTION = MaskedThoughtSection.model_fields


def process_rank() -> int:
    """This process's rank in the initialized `torch.distributed` group, else 0."""
    dist = torch.distributed
    return int(dist.get_rank()) if dist.is_available() and dist.is_initialized() else 0


@dataclass
class MaskedThought:
    """The input transform; call `masked_inputs(input_ids, labels, step, micro, max_steps)` once per micro-batch."""

    p: float = _SECTION["p"].default
    cap: float = _SECTION["cap"].default
    ramp_ratio: float = _SECTION["ramp_ratio"].default
    ramp_steps: int | None = _SECTION["ramp_steps"].default
    enabled: bool = True
    replace: str = _SECTION["replace"].default
    seed: int = 0
    vocab_size: int | None = None
    mask_token_id: int | None = None
    rank: int | None = None  # None: torch.distributed's rank when initialized, else 0

    def __post_init__(self) -> None:
        check_section(MaskedThoughtSection, {"enabled": True, "p": self.p, "cap": self.cap, "ramp_ratio": self.ramp_ratio,
                                             "ramp_steps": self.ramp_steps, "replace": self.replace}, "masked_thought")

    def ramp_length(self, max_steps: int = 0) -> float | None:
        """Steps until the rate reaches `cap`: `ramp_steps`, else `ramp_ratio * max_steps + 1`; None = no ramp."""
        if self.ramp_steps is not None:
            return float(self.ramp_steps)
        if self.ramp_ratio <= 0 or max_steps <= 0:
            return None
        return self.ramp_ratio * max_steps + 1

    def rate(self, step: int, max_steps: int = 0) -> float:
        """Masking probability at optimizer step `step` of a run of `max_steps` steps."""
        if not self.enabled:
            return 0.0
        length = self.ramp_length(max_steps)
        if length is None:
            return self.cap
        frac = min(max(step / length, 0.0), 1.0)
        return self.p + (self.cap - self.p) * frac

    def generator(self, step: int, micro: int = 0) -> torch.Generator:
        """A CPU generator seeded from (seed, rank, step, micro) only."""
        rank = process_rank() if self.rank is None else self.rank
        return torch.Generator().manual_seed(hash((self.seed, rank, step, micro)) & 0x7FFF_FFFF_FFFF_FFFF)

    def masked_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor, step: int, micro: int = 0,
                      max_steps: int = 0) -> torch.Tensor:
        """A copy of `input_ids` with response tokens (`labels != -100`) replaced at `rate(step, max_steps)`."""
        rate = self.rate(step, max_steps)
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
