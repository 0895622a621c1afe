"""Per-token training columns for forgetting tokens, token cleaning and Rho-1, from base vs reference.

The base and reference token-loss tables come from the `token_loss` scorer (cached like any score
table); the reference is `pipeline.training.reference.reference_model` unless the recipe names one;
the labels themselves are the pure functions of `pipeline.scorers.token_table`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.scorers import ScoreContext
from pipeline.scorers.cache import score_cached
from pipeline.scorers.token_table import token_columns
from pipeline.training.reference import reference_model

TOKEN_METHODS = ("forgetting", "token_cleaning", "rho1")


def training_columns(examples: pl.DataFrame, loss_name: str, model: str, max_length: int,
                     cache_root: str | Path, options: dict | None = None, seed: int = 0) -> dict[str, list[list]]:
    """The per-token columns a token-label loss trains with, from base and reference token tables.

    `options` (a recipe's `train.token_labels`): `method` (forgetting | token_cleaning | rho1,
    default: the loss name), `fraction` (rho / keep share), `reference` (a model folder or id) or
    `reference_train` (settings for training one: the base fine-tuned on `examples`, as in
    forgetting tokens' base + fine-tune reference). Both tables and the reference are cached.
    """
    options = dict(options or {})
    method = options.get("method") or (loss_name if loss_name in TOKEN_METHODS else None)
    if method is None:
        raise ValueError(f"loss {loss_name!r} needs per-token labels: set train.token_labels.method "
                         "to forgetting, token_cleaning or rho1")
    ctx = ScoreContext(model_name=model, max_length=max_length, seed=seed)
    scorers = Path(cache_root) / "scorers"
    reference = options.get("reference") or reference_model(model, examples, cache_root,
                                                            options.get("reference_train"), seed)
    base = score_cached(examples, "token_loss", ctx, scorers)
    ref = score_cached(examples, "token_loss", ctx, scorers, {"model": reference})
    fraction = options.get("fraction")
    return token_columns(base, ref, method, examples.get_column("id").to_list(),
                         None if fraction is None else float(fraction))
