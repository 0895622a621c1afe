"""Reference models: the base fine-tuned on a set of examples, trained once and cached by content.

Learnability (LoBaSS, arXiv 2310.13008), forgetting tokens (arXiv 2508.04329), token cleaning,
Rho-1, CLEAR's auto-correct model (arXiv 2403.12776) and data-mix proxy runs (arXiv 2508.11953) all
need "the base fine-tuned on these examples". This is the one place that trains one: the folder is
`<cache_root>/references/<key>`, the key covering the base model's content, the examples, the
fully resolved training settings, the seed and the training code, and a run killed midway resumes
from its checkpoints. Scorers and selectors never import this: stages hand them the folder
(`needs = {"reference_model"}`) or a function (`needs = {"trainer"}`).

One name for the settings a reference trains with: `reference_train`, the recipe's own `train`
section minus what belongs to the final run only (its loss, loss schedules, launcher), updated by a
part's own `reference_train` parameter. Defaults are the `train` section's (`TrainSection`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.config import TrainSection
from pipeline.core.hashing import code_version, config_hash, fingerprint
from pipeline.core.io import is_complete, locked, mark_complete, read_json, write_json
from pipeline.models.loading import model_key

# The recipe `train` settings a reference inherits: how to fine-tune this model on this hardware.
# The loss, its parameters and schedules belong to the final run, not the reference.
INHERITED = ("epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "lr_scheduler", "warmup_ratio",
             "weight_decay", "adam_beta2", "max_length", "gradient_checkpointing", "lora")


def reference_train(train: TrainSection | dict | None, overrides: dict | None = None) -> dict[str, Any]:
    """The settings a reference trains with: the inherited keys of a recipe's `train` section, then `overrides`."""
    if isinstance(train, TrainSection):
        train = train.model_dump(include=set(INHERITED), exclude_unset=False)
    return {**{k: train[k] for k in INHERITED if k in (train or {})}, **(overrides or {})}


def _resolved(settings: dict | None) -> dict[str, Any]:
    """Every train key a reference run depends on, defaults filled in (one default per key: TrainSection)."""
    from pipeline.training.train import train_settings

    return train_settings(settings)


def reference_dir(base: str, examples: pl.DataFrame, cache_root: str | Path, settings: dict | None = None,
                  seed: int = 0) -> Path:
    """Where the reference for (base, examples, settings, seed, code) lives."""
    key = config_hash([model_key(base), fingerprint(examples), _resolved(settings), seed, code_version("training")], 20)
    return Path(cache_root) / "references" / key


def reference_model(base: str, examples: pl.DataFrame, cache_root: str | Path, settings: dict | None = None,
                    seed: int = 0) -> str:
    """The folder of `base` fine-tuned on `examples` with `settings` (a partial `train` section); trained once."""
    from pipeline.training.train import train

    folder = reference_dir(base, examples, cache_root, settings, seed)
    done = folder / "reference.json"
    with locked(folder):
        if not is_complete(folder):
            cfg = _resolved(settings)
            metrics = train(base, examples, folder, cfg, seed=seed)
            write_json(done, {"base": base, "rows": examples.height, "ids": examples.get_column("id").to_list()
                              if "id" in examples.columns else None, "train": cfg.model_dump(mode="json"), "seed": seed,
                              "steps": metrics["steps"], "model_dir": metrics["model_dir"]})
            mark_complete(folder, ["reference.json", "model"])
    return read_json(done)["model_dir"]


def reference_trainer(base: str, cache_root: str | Path, settings: dict | None = None
                      ) -> Callable[[pl.DataFrame, int], str]:
    """`(examples, seed, overrides=None) -> model folder`: what a part that `needs = {"trainer"}` is handed
    (`overrides` update `settings`, e.g. a proxy's step budget)."""

    def train_fn(examples: pl.DataFrame, seed: int, overrides: dict | None = None) -> str:
        return reference_model(base, examples, cache_root, {**(settings or {}), **(overrides or {})}, seed)

    return train_fn
