"""Token-level training losses behind a registry.

`get_loss(name, **params)` returns a loss object; `@register_loss("name")` and the
`pipeline.losses` entry-point group add new ones; a recipe names a loss by registry name or
`module:attr` (`train.loss`) with its parameters in `train.loss_params`.
"""

from __future__ import annotations

from typing import Any

from pipeline.registry import Registry

LOSSES = Registry("loss", "pipeline.losses")
register_loss = LOSSES.register


def get_loss(name: str, **params: Any):
    """Instantiate the loss registered (or importable) under `name` with `params`."""
    return LOSSES.get(name)(**params)


from pipeline.losses import ce as _ce  # noqa: E402,F401  (registers itself)

__all__ = ["LOSSES", "get_loss", "register_loss"]
