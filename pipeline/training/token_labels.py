"""Held-out reference token losses: what the per-token columns of forgetting tokens, token cleaning and
Rho-1 (`pipeline.training.columns`) are computed from.

The base and reference token-loss tables come from the `token_loss` scorer (cached like any score
table); the labels themselves are the pure functions of `pipeline.scorers.token_table`.

No token is scored by a reference model that was trained on it. A reference fine-tuned on the very
examples it scores has a low loss on them because it saw them (memorization), not because the tokens
are learnable, which is what the influence `L_base - L_ref` is meant to measure; forgetting tokens
(Taheri et al., arXiv 2508.04329) train their LoRA reference on a separate 10k sample for this
reason. Every kept example still needs labels, so by default the labels are *cross-fitted*: the kept
examples are split into `folds` parts (2 by default, by a seeded hash of the id), reference i is the
base fine-tuned on the other parts (at most `subset_size` of them) and scores part i only. The
alternatives: `reference_data` trains ONE reference on a separate set (e.g. Rho-1's reference
trained on higher-quality data, Lin et al., NeurIPS 2024), with any of its rows that are also kept
examples removed from it; `reference` names a finished reference model, used as given. The
reference is base + LoRA (`lora`, r 16 / alpha 32, merged on save) unless `lora` is null.
Influence is then ranked globally over all kept tokens, as in the papers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.config import TokenLabelsSection, check_section
from pipeline.core.hashing import config_hash
from pipeline.core.io import write_parquet
from pipeline.scorers import ScoreContext
from pipeline.scorers.cache import score_cached
from pipeline.training.reference import reference_model


@dataclass
class LabelFold:
    """One reference and the examples it labels: `train` trains it (None for a given reference), `label_ids` are scored."""

    train: pl.DataFrame | None
    label_ids: list[str]
    reference: str | None = None


def label_settings(options: dict | None) -> dict[str, Any]:
    """`train.token_labels` with every default filled in and checked."""
    return check_section(TokenLabelsSection, options or {}, "train.token_labels").model_dump()


def _hash_order(ids: list[str], seed: int) -> list[int]:
    """Positions of `ids` in a seeded, order-independent pseudo-random order (sha1 of seed and id)."""
    keys = [hashlib.sha1(f"{seed}:{i}".encode()).hexdigest() for i in ids]
    return sorted(range(len(ids)), key=lambda n: (keys[n], ids[n]))


def _read_examples(path: str) -> pl.DataFrame:
    """A parquet of examples (id, prompt, response), or a data card folder's subset.parquet."""
    file = Path(path) / "subset.parquet" if Path(path).is_dir() else Path(path)
    if not file.exists():
        raise FileNotFoundError(f"train.token_labels.reference_data: {file} does not exist")
    df = pl.read_parquet(file, glob=False)
    missing = {"id", "prompt", "response"} - set(df.columns)
    if missing:
        raise ValueError(f"{file}: missing columns {sorted(missing)} (need id, prompt, response)")
    return df.select("id", "prompt", "response")


def label_folds(examples: pl.DataFrame, options: dict | None = None, seed: int = 0) -> list[LabelFold]:
    """Which reference labels which examples, each trained only on examples it does not label.

    `options` is a recipe's `train.token_labels`; see the module docstring for the three modes.
    """
    o = label_settings(options)
    ids = examples.get_column("id").to_list()
    if o["reference"]:
        return [LabelFold(None, ids, o["reference"])]
    if o["reference_data"]:
        other = _read_examples(o["reference_data"])
        pairs = examples.select("prompt", "response")
        other = other.filter(~pl.col("id").is_in(ids)).join(pairs, on=["prompt", "response"], how="anti")
        if other.height == 0:
            raise ValueError("train.token_labels.reference_data has no example that is not also a kept example")
        order = _hash_order(other.get_column("id").to_list(), seed)[: o["subset_size"] or other.height]
        return [LabelFold(other[sorted(order)], ids)]
    k = int(o["folds"])
    if len(ids) < k:
        raise ValueError(f"token labels by {k}-fold cross-fitting need at least {k} kept examples, got {len(ids)}")
    fold_of = [0] * len(ids)
    for rank, n in enumerate(_hash_order(ids, seed)):
        fold_of[n] = rank % k
    folds = []
    for f in range(k):
        label = [n for n in range(len(ids)) if fold_of[n] == f]
        allowed = [n for n in range(len(ids)) if fold_of[n] != f]
        if o["subset_size"]:
            keep = set(_hash_order([ids[n] for n in allowed], seed + 1 + f)[: o["subset_size"]])
            allowed = [n for i, n in enumerate(allowed) if i in keep]
        folds.append(LabelFold(examples[allowed], [ids[n] for n in label]))
    return folds


def heldout_tables(examples: pl.DataFrame, model: str, max_length: int, cache_root: str | Path,
                   options: dict | None = None, seed: int = 0,
                   reference_train: dict | None = None) -> tuple[Path, Path]:
    """(base, reference) token-loss tables of `examples`, in their order, every reference held out.

    Each reference is `model` fine-tuned on examples it does not score (`label_folds`), with the
    recipe's training settings `reference_train` (`pipeline.training.reference.reference_train`) plus
    `options.lora` and `options.reference_train`. Tables and references are cached by content.
    """
    from pipeline.training.reference import reference_train as inherit

    o = label_settings(options)
    ctx = ScoreContext(model_name=model, max_length=max_length, seed=seed)
    scorers = Path(cache_root) / "scorers"
    settings = inherit(reference_train, {"max_length": max_length, "lora": o["lora"], **o["reference_train"]})
    paths = []
    for fold in label_folds(examples, o, seed):
        reference = fold.reference or reference_model(model, fold.train, cache_root, settings, seed)
        subset = examples.filter(pl.col("id").is_in(fold.label_ids))
        paths.append(score_cached(subset, "token_loss", ctx, scorers, {"model": reference}))
    base = score_cached(examples, "token_loss", ctx, scorers)
    # the folds' reference tables as one table in the base table's order (global ranking needs all tokens)
    ref = Path(cache_root) / "token_labels" / config_hash([str(base), *map(str, paths)], 20) / "reference.parquet"
    if not ref.exists():
        table = pl.read_parquet(base, glob=False).select("id").join(pl.concat([pl.read_parquet(p, glob=False) for p in paths]), on="id",
                                                        how="left", maintain_order="left")
        write_parquet(ref, table)
    return Path(base), ref
