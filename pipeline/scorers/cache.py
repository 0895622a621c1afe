"""Run a scorer over an example table and store its score table as parquet keyed by `id`.

`score_cached` is what the flow calls: the table lives under a cache key made of the dataset
fingerprint, the model id and revision, the scorer name, its parameters and its code version, and
it is written in shards so that a killed run resumes at the first unfinished shard. The same
shards run in this process (default) or on Ray actors that each hold one model (`executor="ray"`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.faults import maybe_crash
from pipeline.core.hashing import code_version, config_hash, fingerprint, model_revision
from pipeline.core.io import (
    is_complete,
    locked,
    mark_complete,
    read_json,
    write_json,
    write_parquet,
)
from pipeline.models.assets import resolve_embedder, resolve_model
from pipeline.models.loading import model_key
from pipeline.scorers import ScoreContext, Scorer, get_scorer

TABLE = "scores.parquet"
META = "meta.json"


def _split(result: Any) -> tuple[pl.DataFrame, dict]:
    """A scorer returns a table, or (table, metadata) when it has run-level facts to report."""
    if isinstance(result, tuple):
        return result[0], dict(result[1])
    return result, {}


def _check(table: pl.DataFrame, examples: pl.DataFrame, scorer: str) -> None:
    if table.height != examples.height or "id" not in table.columns:
        raise ValueError(f"scorer {scorer!r} must return one row per example with an 'id' column")
    if table.get_column("id").to_list() != examples.get_column("id").to_list():
        raise ValueError(f"scorer {scorer!r} must return rows in the order of the examples")


def meta_path(table_path: str | Path) -> Path:
    """The sidecar JSON next to a score table (run-level metadata such as a learner's R^2)."""
    p = Path(table_path)
    return p.with_name(META) if p.name == TABLE else p.with_suffix(".meta.json")


def read_meta(table_path: str | Path) -> dict:
    """Metadata written next to a score table ({} when there is none)."""
    p = meta_path(table_path)
    return read_json(p) if p.exists() else {}


def compute_scores(
    examples: pl.DataFrame, scorer: str, ctx: ScoreContext, out_path: str | Path, params: dict[str, Any] | None = None
) -> Path:
    """Score `examples` with the registered `scorer` and write the table atomically to `out_path`."""
    table, meta = _split(get_scorer(scorer, **(params or {}))(examples, ctx))
    _check(table, examples, scorer)
    path = write_parquet(out_path, table)
    if meta:
        write_json(meta_path(path), meta)
    return path


# ---------------------------------------------------------------------------------------------
# Cache key parts.


def _param_value(value: Any) -> Any:
    """A parameter as it enters the key: a model folder also contributes its revision."""
    if isinstance(value, str) and Path(value).is_dir() and (Path(value) / "config.json").exists():
        return {"path": value, "revision": model_revision(value)}
    if isinstance(value, dict):
        return {k: _param_value(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_param_value(v) for v in value]
    return value


def cache_key_parts(examples: pl.DataFrame, scorer: str, ctx: ScoreContext, params: dict[str, Any]) -> dict:
    """Everything a score table depends on, as a JSON-able dict (stored next to the table)."""
    return _key_parts(examples, scorer, get_scorer(scorer, **params), ctx, params)


def _key_parts(examples: pl.DataFrame, scorer: str, instance: Scorer, ctx: ScoreContext,
               params: dict[str, Any]) -> dict:
    """The key parts of an already built (so already checked) scorer: its class declares what enters."""
    cls = type(instance)
    return {
        "dataset": fingerprint(examples),
        "models": _key_models(cls, params),
        "model": ctx.model_name,
        "model_revision": model_key(ctx.model_name) if cls.uses_model else None,
        "scorer": scorer,
        "params": _param_value(dict(params)),
        "code_version": f"{cls.version}:{code_version('scorers', [scorer])}",
        "max_length": ctx.max_length,
        "seed": ctx.seed if cls.seeded else None,  # a deterministic scorer's table serves every seed
    }


def _key_models(cls: type[Scorer], params: dict[str, Any]) -> dict[str, str]:
    """Revisions of the extra models a scorer names in `model_params` (embedder, reference), defaults included."""
    signature = inspect.signature(cls.__init__).parameters
    out = {}
    for name in cls.model_params:
        value = params.get(name)
        if value is None:
            default = signature.get(name)
            value = None if default is None or default.default is inspect.Parameter.empty else default.default
        if isinstance(value, str):
            out[name] = model_revision(resolve_embedder(value) if name == "embedder" else resolve_model(value))
    return out


def cache_key(parts: dict) -> str:
    """Short hash of the key parts."""
    return config_hash(parts, 20)


# ---------------------------------------------------------------------------------------------
# Sharded, resumable, cached scoring.


def _shard_path(entry: Path, i: int) -> Path:
    return entry / "shards" / f"{i:05d}.parquet"


def score_cached(
    examples: pl.DataFrame,
    scorer: str,
    ctx: ScoreContext,
    cache_root: str | Path,
    params: dict[str, Any] | None = None,
    shard_size: int = 1024,
    executor: str = "local",
    num_workers: int = 2,
) -> Path:
    """Path of the cached score table for (data, model, scorer, params, code); computed if missing.

    Shards of `shard_size` rows are written as they finish; a re-run skips finished shards and the
    final table is their concatenation in example order. Scorers that need the whole table at once
    (`shardable = False`, e.g. information_gain) run as one shard. `executor="ray"` scores the
    shards on `num_workers` Ray actors that each load the model once.
    """
    params = dict(params or {})
    instance = get_scorer(scorer, **params)  # parameters are checked before any work
    parts = _key_parts(examples, scorer, instance, ctx, params)
    entry = Path(cache_root) / scorer / cache_key(parts)
    final = entry / TABLE
    with locked(entry):
        if not is_complete(entry):
            _score_shards(examples, scorer, instance, ctx, params, parts, entry, shard_size, executor, num_workers)
    return final


def _score_shards(examples: pl.DataFrame, scorer: str, instance: Scorer, ctx: ScoreContext, params: dict,
                  parts: dict, entry: Path, shard_size: int, executor: str, num_workers: int) -> None:
    """Score the shards not yet on disk, then write the final table, its metadata and the completion marker."""
    if not instance.shardable:
        shard_size = max(examples.height, 1)
    starts = list(range(0, examples.height, shard_size)) or [0]
    todo = [i for i in range(len(starts)) if not _shard_ok(entry, i, examples.slice(starts[i], shard_size))]
    shards = {i: examples.slice(starts[i], shard_size) for i in todo}
    if executor == "local":
        for n, i in enumerate(todo, 1):
            _write_shard(entry, i, instance(shards[i], ctx), shards[i], scorer)
            maybe_crash("score", n)  # resume tests: SFT_PIPELINE_CRASH=score:N = kill -9 after N shards
    elif executor == "ray":
        from pipeline.scorers.ray_executor import score_shards

        for i, result in score_shards(scorer, ctx, params, shards, num_workers):
            _write_shard(entry, i, result, shards[i], scorer)
    else:
        raise ValueError(f"unknown executor {executor!r}: use 'local' or 'ray'")
    tables = [pl.read_parquet(_shard_path(entry, i), glob=False) for i in range(len(starts))]
    declared = instance.columns()
    if declared is not None and tables and tables[0].columns != ["id", *declared]:
        raise ValueError(f"scorer {scorer!r} wrote columns {tables[0].columns[1:]}, but declares {declared}")
    metas = [read_meta(_shard_path(entry, i)) for i in range(len(starts))]
    meta = {"key": parts, **{k: v for m in metas for k, v in m.items()}}
    if len(metas) > 1 and any(metas):
        meta["shards"] = metas
    write_json(entry / META, meta)
    write_parquet(entry / TABLE, pl.concat(tables, how="vertical"))
    mark_complete(entry, [TABLE, META])


def _shard_ok(entry: Path, i: int, shard: pl.DataFrame) -> bool:
    """True when shard `i` is on disk and reads back with the shard's ids in order; a missing, truncated or
    otherwise damaged shard is removed (with its metadata) so it is recomputed."""
    path = _shard_path(entry, i)
    if not path.exists():
        return False
    try:
        ids = pl.read_parquet(path, columns=["id"], glob=False).get_column("id")
        if ids.to_list() == shard.get_column("id").to_list():
            return True
    except (OSError, pl.exceptions.PolarsError):
        pass
    path.unlink(missing_ok=True)
    meta_path(path).unlink(missing_ok=True)
    return False


def _write_shard(entry: Path, i: int, result: Any, shard: pl.DataFrame, scorer: str) -> None:
    table, meta = _split(result)
    _check(table, shard, scorer)
    path = _shard_path(entry, i)
    if meta:
        write_json(meta_path(path), meta)
    write_parquet(path, table)
