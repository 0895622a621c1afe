"""The select stage: the plan's selection steps over the score table; every id kept or dropped, why, with a weight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field

from pipeline.core.hashing import file_hash
from pipeline.core.io import read_json, write_json, write_parquet
from pipeline.core.registry import ConfigError
from pipeline.stages.base import ModelRef, Selection, Split, Stage
from pipeline.stages.score import Scores


class Select(Stage):
    """Apply the steps in order (`pipeline.selectors.compose`). A selector that `needs = {"trainer"}` gets
    `ctx.train_fn`, fine-tuning the base with the recipe's training settings, and the training code enters
    the key; a selector that scores with the model tokenizes like the scores (`max_length`)."""

    kind = "selection"
    layer = "selectors"
    scores: Scores
    train: Split
    model: ModelRef
    select: list[dict[str, Any]]
    seed: int
    reference_train: dict[str, Any]
    max_length: int
    steps: list[Any] = Field(exclude=True)  # the plan's built steps

    def parts(self) -> list[Any]:
        return [step.selector for step in self.steps]

    def key_inputs(self) -> dict[str, Any]:
        inputs = super().key_inputs()
        if not any(p.trains() for p in self.parts()):
            inputs.pop("reference_train")
        return inputs

    def compute(self, folder: Path) -> list[str]:
        from pipeline.selectors import SelectContext, compose
        from pipeline.stages.plan import check_score_columns

        trains = [s.selector.label for s in self.steps if "trainer" in s.selector.needs]
        context = SelectContext(examples=pl.read_parquet(self.train.path, glob=False), model_name=self.model.name,
                                run_dir=str(folder / "work"), train_cfg=self.reference_train,
                                train_fn=self._trainer(folder) if trains else _undeclared_trainer,
                                max_length=self.max_length)
        score_table = pl.read_parquet(self.scores.path, glob=False)
        check_score_columns(self.steps, score_table.columns)
        selection, counts = compose(score_table, self.steps, self.seed, context)
        write_json(folder / "stages.json", counts)
        write_parquet(folder / "selection.parquet", selection)
        return ["selection.parquet", "stages.json"]

    def _trainer(self, folder: Path):
        from pipeline.training.reference import reference_trainer

        return reference_trainer(self.model.name, self.cache_root(folder), self.reference_train)

    def result(self, folder: Path) -> Selection:
        from pipeline.selectors.base import summarize

        path = folder / "selection.parquet"
        return Selection(path=str(path), hash=file_hash(path), stages=read_json(folder / "stages.json"),
                         **summarize(pl.read_parquet(path, glob=False)))

    def describe(self, out: Selection, reused: bool) -> str:
        return (f"selected {out.kept} of {out.read}: "
                + "; ".join(f"{s['rule']} kept {s['kept']}/{s['read']}" for s in out.stages))


def _undeclared_trainer(*args: Any, **kwargs: Any) -> str:
    raise ConfigError("select", "a selector called ctx.train_fn without declaring needs = {'trainer'}: declare it, "
                                "so the stage hands it a trainer and keys its result on the training code")
