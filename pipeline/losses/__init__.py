"""Token-level training losses behind a registry.

`get_loss(name, **params)` returns a loss object; `@register_loss("name")` and the
`pipeline.losses` entry-point group add new ones; a recipe names a loss by registry name or
`module:attr` (`train.loss`) with its parameters in `train.loss_params`. Every loss is a
`TokenLoss` (see `pipeline.losses.base`): callable on full logits as transformers'
`compute_loss_func`, and on fused per-token log-probs through `from_log_probs`.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.registry import Registry
from pipeline.losses.base import TokenLoss

LOSSES = Registry("loss", "pipeline.losses", base=TokenLoss, hint="with a `per_token(self, nll, ctx)` method")
register_loss = LOSSES.register


def get_loss(name: str, **params: Any) -> TokenLoss:
    """Instantiate the loss registered (or importable) under `name` with `params` (checked first)."""
    return LOSSES.build(name, params, "train.loss_params", name_key="train.loss")


from pipeline.losses import asft as _asft  # noqa: E402,F401  (each module registers itself)
from pipeline.losses import ce as _ce  # noqa: E402,F401
from pipeline.losses import dft as _dft  # noqa: E402,F401
from pipeline.losses import eaft as _eaft  # noqa: E402,F401
from pipeline.losses import forgetting as _forgetting  # noqa: E402,F401
from pipeline.losses import rho1 as _rho1  # noqa: E402,F401
from pipeline.losses import talr as _talr  # noqa: E402,F401
from pipeline.losses import token_cleaning as _token_cleaning  # noqa: E402,F401
from pipeline.losses.masked_thought import MaskedThought  # noqa: E402

__all__ = ["LOSSES", "MaskedThought", "TokenLoss", "get_loss", "register_loss"]
