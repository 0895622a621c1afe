"""The score stage: every training example scored by each scorer of the plan (cached per scorer and shard)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field

from pipeline.core.config import ScoreSection
from pipeline.core.io import write_parquet
from pipeline.stages.base import ModelRef, Output, Split, Stage, log


class Scores(Output):
    """The joined score table (one row per example id) and its cache key."""

    path: str
    key: str

    def paths(self) -> list[str]:
        return [self.path]

    def identity(self) -> str:
        return self.key


class Score(Stage):
    """Score `train` with every scorer; a scorer that `needs = {"reference_model"}` gets the base fine-tuned on
    the candidates with the recipe's training settings (`reference_train`) unless its parameter names one, and
    a scorer with a `target` parameter gets `validation` resolved to the run's validation split."""

    kind = "scores"
    layer = "scorers"
    train: Split
    model: ModelRef
    score: ScoreSection
    seed: int
    reference_train: dict[str, Any]
    validation: Split | None = None  # the run's validation split: a scorer's `target: validation`
    scorers: list[Any] = Field(exclude=True)  # the plan's ScorerSpecs

    def parts(self) -> list[Any]:
        return [spec.scorer for spec in self.scorers]

    def key_inputs(self) -> dict[str, Any]:
        inputs = super().key_inputs()
        if not any(p.trains() for p in self.parts()):
            inputs.pop("reference_train")  # only a scorer that trains depends on how it trains
        if not any(getattr(p, "target", None) == "validation" for p in self.parts()):
            inputs.pop("validation", None)  # only a scorer targeting it depends on the validation split
        return inputs

    def compute(self, folder: Path) -> list[str]:
        from pipeline.scorers import ScoreContext
        from pipeline.scorers.cache import score_cached

        examples = pl.read_parquet(self.train.path, glob=False)
        s = self.score
        ctx = ScoreContext(model_name=self.model.name, max_length=s.max_length, max_tokens=s.max_tokens,
                           seed=self.seed)
        root = self.cache_root(folder)
        table = examples.select("id")
        for spec in self.scorers:
            t0 = time.perf_counter()
            target = with_target(spec, spec.params, self.validation, root)  # first: a missing target fails fast
            params = {**with_reference(spec, examples, ctx, root, self.reference_train), **target}
            path = score_cached(examples, spec.name, ctx, root / "scorers", params, shard_size=s.shard_size,
                                executor=s.executor, num_workers=s.num_workers)
            part = pl.read_parquet(path, glob=False)
            clash = (set(part.columns) & set(table.columns)) - {"id"}
            if clash:
                raise ValueError(f"scorer {spec.name!r} repeats columns {sorted(clash)} of an earlier scorer")
            table = table.join(part, on="id", how="left", maintain_order="left")
            log(f"scored with {spec.name} in {time.perf_counter() - t0:.0f}s")
        write_parquet(folder / "scores.parquet", table)
        return ["scores.parquet"]

    def result(self, folder: Path) -> Scores:
        return Scores(path=str(folder / "scores.parquet"), key=folder.name)

    def describe(self, out: Scores, reused: bool) -> str | None:
        return f"scores reused from cache: {out.path}" if reused else None


def with_reference(spec: Any, examples: pl.DataFrame, ctx: Any, cache_root: str | Path,
                   reference_train: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scorer's parameters, with a reference model in its `reference_param` when it needs one and the
    recipe names none: the base fine-tuned on `examples` with `reference_train` (the recipe's training),
    the run's `max_length` and the scorer's own `reference_train` on top (trained once, cached)."""
    from pipeline.training.reference import reference_model

    scorer, params = spec.scorer, spec.params
    slot = scorer.reference_param
    if "reference_model" not in scorer.needs or params.get(slot):
        return params
    t0 = time.perf_counter()
    settings = {**(reference_train or {}), "max_length": ctx.max_length,
                **(getattr(scorer, "reference_train", None) or {})}
    rows = examples
    if hasattr(scorer, "reference_plan"):  # a scorer training its reference on part of the rows (LESS's warm-up)
        rows, settings = scorer.reference_plan(examples, settings, ctx.seed)
    reference = reference_model(ctx.model_name, rows, cache_root, settings, ctx.seed)
    log(f"{spec.name}: reference model {reference} ({time.perf_counter() - t0:.0f}s)")
    return {**params, slot: reference}


def with_target(spec: Any, params: dict[str, Any], validation: Split | None, cache_root: str | Path) -> dict[str, Any]:
    """A scorer's `target` parameter as a file whose path names its content: `validation` becomes the run's
    validation split, a named file a content-addressed copy (so the score cache follows its bytes)."""
    import shutil

    from pipeline.core.io import atomic_path
    from pipeline.core.registry import ConfigError
    from pipeline.data.source import source_version

    target = getattr(spec.scorer, "target", None)
    if not isinstance(target, str) or "target" not in spec.scorer.param_names():
        return params
    if target == "validation":
        if validation is None or validation.rows == 0:
            raise ConfigError(f"{spec.where}.target", "the run has no validation rows: set data.validation (or "
                              "data.n_val) or name a JSONL/parquet file of prompt/response rows")
        return {**params, "target": validation.path}
    source = Path(target)
    if not source.is_file():
        return params  # a folder or a missing file: the scorer reads or reports it
    copy = Path(cache_root) / "targets" / source_version(target) / source.name
    if not copy.exists():
        with atomic_path(copy) as tmp:
            shutil.copyfile(source, tmp)
    return {**params, "target": str(copy)}
