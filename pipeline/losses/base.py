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

Per-token statistics of the model's own next-token distribution a loss declares in `head_stats`
(`{name: parameters}`, names from `HEAD_STATS`) are computed by the trainer inside its tiled LM-head
pass, so no [B, T, V] logits exist, and reach `per_token` as batch columns aligned with the log-probs;
`__call__` computes the same from the full logits (the reference path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core.registry import Part

EXAMPLE_WEIGHT = "example_weight"
TOKEN_WEIGHT = "token_weight"  # optional per-token weight (e.g. `train.think_weight`), multiplies any loss
TOPK_ENTROPY = "topk_entropy"  # head statistic of EAFT
REFERENCE_KL = "reference_kl"  # head statistic of ASFT
REFERENCE_LOGITS = "reference_logits"  # batch key of the reference path: the reference model's full logits
# What a loss may declare in `head_stats`: name -> what the trainer's tiled head pass hands it.
HEAD_STATS: dict[str, str] = {
    TOPK_ENTROPY: "entropy of the softmax over the `k` largest next-token logits, without gradient (params: k)",
    REFERENCE_KL: "KL(reference || model) of the next-token distributions, with gradient to the model; the "
                  "trainer runs the frozen reference (the loss's `reference`, default the base model) beside it",
}


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


def topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy of softmax over the `k` largest logits of each row ([..., V] -> [...]), without gradient."""
    with torch.no_grad():
        top = logits.float().topk(min(int(k), logits.size(-1)), dim=-1).values
        logp = torch.log_softmax(top, dim=-1)
        return -(logp.exp() * logp).sum(-1)


def reference_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = sum_v q_v (log q_v - log p_v) per row, p = softmax(logits), q = softmax(ref_logits); the
    gradient flows to `logits` only (the reference is frozen)."""
    log_q = torch.log_softmax(ref_logits.detach().float(), dim=-1)
    return (log_q.exp() * (log_q - torch.log_softmax(logits.float(), dim=-1))).sum(-1)


def head_columns(stats: dict[str, dict[str, Any]], logits: torch.Tensor, batch: dict[str, Any] | None
                 ) -> dict[str, torch.Tensor]:
    """The declared head statistics from full logits [B, T, V], aligned with the log-probs ([:, :-1])."""
    out: dict[str, torch.Tensor] = {}
    if TOPK_ENTROPY in stats:
        out[TOPK_ENTROPY] = topk_entropy(logits[:, :-1], stats[TOPK_ENTROPY]["k"])
    if REFERENCE_KL in stats:
        ref = (batch or {}).get(REFERENCE_LOGITS)
        if ref is None:
            raise KeyError(f"the reference path of a loss with {REFERENCE_KL!r} needs the reference model's full "
                           f"logits as batch[{REFERENCE_LOGITS!r}]")
        out[REFERENCE_KL] = reference_kl(logits[:, :-1], ref[:, :-1])
    return out


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
    # {name: parameters} of per-token head statistics (`HEAD_STATS`) the trainer computes in its tiled head pass
    head_stats: dict[str, dict[str, Any]] = {}

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
        missing = [c for c in (*self.requires, *self.head_stats) if c not in batch]
        if missing:
            raise KeyError(f"loss {type(self).__name__} needs batch column(s) {missing}; pass them in `batch` "
                           "(head statistics come from TokenLossSFTTrainer's tiled head pass)")
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
        """Reference path: full logits [B, T, V] and unshifted labels; `Trainer(compute_loss_func=...)`-compatible.
        A loss with `reference_kl` also needs the reference model's full logits in `batch["reference_logits"]`."""
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        log_probs, mask = token_log_probs(logits, labels)
        batch = dict(batch or {})
        columns = head_columns(self.head_stats, logits, batch)
        batch.pop(REFERENCE_LOGITS, None)
        return self.from_log_probs(log_probs, mask, num_items_in_batch, {**shift_columns(batch), **columns},
                                   step, max_steps)
