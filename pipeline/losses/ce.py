"""Plain cross-entropy on response tokens, summed and divided by `num_items_in_batch`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.losses import register_loss


@register_loss("ce")
class CrossEntropy:
    """Mean next-token NLL over response tokens; usable as `Trainer(compute_loss_func=CrossEntropy())`."""

    trl_loss_type = "nll"

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs.logits[:, :-1].float()
        target = labels[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum")
        count = (target != -100).sum() if num_items_in_batch is None else num_items_in_batch
        return nll / torch.as_tensor(count).clamp(min=1)
