"""The shared core of every token-level loss: one formula on per-token log-probs, two entry points.

A loss subclasses `TokenLoss` and implements `per_token(nll, ctx)`: the contribution of each
response token, already divided by its normalizer, so that the loss is their sum. Both entry
points end there:

- `loss(outputs, labels, num_items_in_batch)`: full logits and unshifted labels, the signature of
  transformers' `Trainer(compute_loss_func=...)` (the reference path);
- `loss.from_log_probs(log_probs, mask, ...)`: per-token log-probs from TRL's fused LM head, no
  full-vocabulary logits (the path `pipeline.training.trainer.TokenLossSFTTrainer` uses).

Per-token batch columns a loss declares in `requires` (`token_label`, `ref_nll`, or any column a
registered provider makes: `pipeline.training.columns`) are given aligned with `input_ids` to
`__call__` and aligned with `log_probs` (i.e. `column[:, 1:]`) to `from_log_probs`;
`example_weight` is one number per example and multiplies every token of its example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core.registry import Part

EXAMPLE_WEIGHT = "example_weight"
TOKEN_WEIGHT = "token_weight"  # optional per-token weight (e.g. `train.think_weight`), multiplies any loss


@dataclass
class LossContext:
    """What a loss may read besides the token NLLs: mask, batch columns, counts and schedule."""

    mask: torch.Tensor
    batch: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    step: int = 0
    max_steps: int = 0
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    window: dict[str, torch.Tensor] | None = None  # `TokenLoss.window_stats` of the accumulation window

    def column(self, name: str) -> torch.Tensor:
        """A per-token column aligned with the log-probs; a clear error when the batch lacks it."""
        if name not in self.batch:
            raise KeyError(f"this loss needs the per-token column {name!r} in the batch")
        return self.batch[name]


def shift_columns(batch: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    """Align input-aligned per-token columns with next-token log-probs (`[:, 1:]`); keep per-example ones."""
    if not batch:
        return {}
    return {k: (v[:, 1:] if torch.is_tensor(v) and v.dim() == 2 else v) for k, v in batch.items()}


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) from full logits and unshifted labels: ([B, T-1], zero where ignored), mask."""
    target = labels[:, 1:]
    mask = target != -100
    logp = -F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        target.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(target.shape)
    return logp.masked_fill(~mask, 0.0), mask


class TokenLoss(Part):
    """Base class: subclasses define `per_token`; `requires` names the batch columns they need (made before
    training by the column provider of each: `pipeline.training.columns`), `column_params` the parameters
    those providers get; parameters are `__init__`'s keyword arguments (checked against `train.loss_params`)."""

    trl_loss_type = "nll"
    requires: tuple[str, ...] = ()
    column_params: dict[str, dict[str, Any]] = {}  # {column: parameters of its provider}
    # True: the trainer runs a no-grad forward over the whole accumulation window first and hands
    # `window_stats` of those detached losses to every micro-batch (window-level weights, e.g. TALR)
    needs_window_nll: bool = False

    def window_stats(self, nlls: list[torch.Tensor], masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Statistics of the detached token losses of every micro-batch of the window (see needs_window_nll)."""
        return {}

    def counts(self, mask: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalizer counts of one micro-batch, known before the forward pass (summed over accumulation)."""
        return {"tokens": mask.sum()}

    def per_token(self, nll: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """Each token's contribution to the loss (already normalized); zero where `ctx.mask` is False."""
        raise NotImplementedError

    def from_log_probs(
        self,
        log_probs: torch.Tensor,
        mask: torch.Tensor,
        num_items_in_batch: torch.Tensor | int | None = None,
        batch: dict[str, torch.Tensor] | None = None,
        step: int = 0,
        max_steps: int = 0,
        counts: dict[str, torch.Tensor] | None = None,
        window: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The scalar loss from per-token log-probs [B, T-1] and their mask (columns aligned with them).

        `num_items_in_batch` (response tokens over the whole accumulation window) overrides the
        `tokens` count; `counts` gives window totals of the loss's other counts; `window` the loss's
        `window_stats` over the whole accumulation window (when it needs them).
        """
        batch = batch or {}
        missing = [c for c in self.requires if c not in batch]
        if missing:
            raise KeyError(f"loss {type(self).__name__} needs batch column(s) {missing}; pass them in `batch`")
        mask = mask.bool()
        merged = {k: torch.as_tensor(v) for k, v in self.counts(mask, batch).items()}
        if counts:
            merged.update(counts)
        if num_items_in_batch is not None:
            merged["tokens"] = torch.as_tensor(num_items_in_batch)
        merged = {k: v.to(log_probs.device).clamp(min=1) for k, v in merged.items()}
        ctx = LossContext(mask=mask, batch=batch, counts=merged, step=step, max_steps=max_steps, window=window)
        nll = (-log_probs.float()).masked_fill(~mask, 0.0)
        contrib = self.per_token(nll, ctx)
        weight = batch.get(EXAMPLE_WEIGHT)
        if weight is not None:
            weight = weight.to(contrib)
            contrib = contrib * (weight[:, None] if weight.dim() == 1 else weight)
        token_weight = batch.get(TOKEN_WEIGHT)
        if token_weight is not None:
            contrib = contrib * token_weight.to(contrib)
        self.metrics = ctx.metrics
        return contrib.sum()

    def __call__(
        self,
        outputs: Any,
        labels: torch.Tensor,
        num_items_in_batch: torch.Tensor | int | None = None,
        batch: dict[str, torch.Tensor] | None = None,
        step: int = 0,
        max_steps: int = 0,
    ) -> torch.Tensor:
        """Reference path: full logits [B, T, V] and unshifted labels; `Trainer(compute_loss_func=...)`-compatible."""
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        log_probs, mask = token_log_probs(logits, labels)
        return self.from_log_probs(log_probs, mask, num_items_in_batch, shift_columns(batch), step, max_steps)
