"""Reference models: the base fine-tuned on a set of examples, trained once and cached by content.

Learnability (LoBaSS, arXiv 2310.13008), forgetting tokens (arXiv 2508.04329), token cleaning,
Rho-1, CLEAR's auto-correct model (arXiv 2403.12776) and data-mix proxy runs (arXiv 2508.11953) all
need "the base fine-tuned on these examples". This is the one place that trains one: the folder is
`<cache_root>/references/<key>`, the key covering the base model's content, the examples, the
training settings, the seed and the training code, and a run killed midway resumes from its
checkpoints. Scorers and selectors never import this: flows hand them the folder or a function.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.hashing import code_version, config_hash, fingerprint
from pipeline.core.io import is_complete, locked, mark_complete, read_json, write_json
from pipeline.models.loading import model_key

# One epoch at 5e-5: a light fine-tune of the base on the candidate set (LoBaSS's reference);
# `{lora: {r: 16}}` gives the cheaper LoRA reference the forgetting-tokens paper uses.
REFERENCE_TRAIN: dict[str, Any] = {"epochs": 1, "learning_rate": 5e-5}
# The recipe `train` settings a reference inherits (flows pass them): how to fine-tune this model on
# this hardware. The loss, its parameters and schedules belong to the final run, not the reference.
INHERITED = ("epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "lr_scheduler", "warmup_ratio",
             "weight_decay", "adam_beta2", "max_length", "gradient_checkpointing", "lora")


def reference_settings(train_cfg: dict | None) -> dict[str, Any]:
    """The part of a recipe's `train` section a reference model is trained with."""
    return {k: train_cfg[k] for k in INHERITED if k in (train_cfg or {})}


def reference_dir(base: str, examples: pl.DataFrame, cache_root: str | Path, train_cfg: dict | None = None,
                  seed: int = 0) -> Path:
    """Where the reference for (base, examples, settings, seed, code) lives."""
    cfg = {**REFERENCE_TRAIN, **(train_cfg or {})}
    key = config_hash([model_key(base), fingerprint(examples), cfg, seed, code_version("training")], 20)
    return Path(cache_root) / "references" / key


def reference_model(base: str, examples: pl.DataFrame, cache_root: str | Path, train_cfg: dict | None = None,
                    seed: int = 0) -> str:
    """The folder of `base` fine-tuned on `examples` (`REFERENCE_TRAIN` updated by `train_cfg`); trained once."""
    from pipeline.training.train import train

    folder = reference_dir(base, examples, cache_root, train_cfg, seed)
    done = folder / "reference.json"
    with locked(folder):
        if not is_complete(folder):
            cfg = {**REFERENCE_TRAIN, **(train_cfg or {})}
            metrics = train(base, examples, folder, cfg, seed=seed)
            write_json(done, {"base": base, "rows": examples.height, "ids": examples.get_column("id").to_list()
                              if "id" in examples.columns else None, "train": cfg, "seed": seed,
                              "steps": metrics["steps"], "model_dir": metrics["model_dir"]})
            mark_complete(folder, ["reference.json", "model"])
    return read_json(done)["model_dir"]


def reference_trainer(base: str, cache_root: str | Path, train_cfg: dict | None = None
                      ) -> Callable[[pl.DataFrame, int], str]:
    """`(examples, seed, overrides=None) -> model folder`: what CLEAR's auto-correct and data-mix proxies
    are handed (`overrides` update `train_cfg`, e.g. a proxy's step budget)."""

    def train_fn(examples: pl.DataFrame, seed: int, overrides: dict | None = None) -> str:
        return reference_model(base, examples, cache_root, {**(train_cfg or {}), **(overrides or {})}, seed)

    return train_fn
