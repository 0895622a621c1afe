"""The train stage: fine-tune on the kept examples with the plan's loss; its required columns made first."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ConfigDict, Field

from pipeline.core.config import TrainSection
from pipeline.core.io import read_json, write_json
from pipeline.stages.base import ModelRef, Output, Selection, Split, Stage, log
from pipeline.stages.score import Scores


class Trained(Output):
    """A trained model folder and the training metrics (loss, steps, runtime, history...)."""

    model_config = ConfigDict(extra="allow")
    model_dir: str
    steps: int

    def paths(self) -> list[str]:
        return [self.model_dir]


class Train(Stage):
    """Train `model` on the kept rows of `selection` (corrections applied, weights reaching the loss).

    The loss's required columns come from the plan's column providers (`pipeline.training.columns`);
    `train.igf_filter` reads its column from `scores`, which then enters the key. Resumes from checkpoints.
    """

    kind = "train"
    layer = "training"
    train: Split
    selection: Selection
    model: ModelRef
    settings: TrainSection
    seed: int
    scores: Scores | None = None  # only for train.igf_filter
    loss: Any = Field(exclude=True)
    providers: list[Any] = Field(exclude=True)

    def parts(self) -> list[Any]:
        return [self.loss, *self.providers]

    def key_inputs(self) -> dict[str, Any]:
        inputs = super().key_inputs()
        if self.settings.igf_filter is None:
            inputs.pop("scores")  # only IGF's filter reads the scores
        return inputs

    def compute(self, folder: Path) -> list[str]:
        from pipeline.selectors.base import apply_corrections
        from pipeline.training.launch import launch_training

        sel = pl.read_parquet(self.selection.path, glob=False)
        examples = apply_corrections(pl.read_parquet(self.train.path, glob=False), sel)  # a selector's rewritten responses
        kept = examples.join(sel.filter(pl.col("kept")).select("id", "weight"), on="id", how="inner",
                             maintain_order="left")
        if kept.height == 0:
            raise ValueError(f"train: no examples to train on: the selection kept 0 of {sel.height} rows; loosen the "
                             "select rule (its drop reasons: pipeline inspect RUN_DIR --dropped)")
        weights = kept.get_column("weight").to_list()
        uniform = all(abs(w - 1.0) < 1e-12 for w in weights)
        log(f"training on {kept.height} examples with loss {self.settings.loss}")
        kept = self._with_igf_scores(kept.drop("weight"))
        metrics = launch_training(self.model.name, kept, folder, self.settings, seed=self.seed,
                                  weights=None if uniform else weights, token_columns=self._columns(kept, folder),
                                  loss=self.loss)
        write_json(folder / "train_metrics.json", metrics)
        log(f"trained {metrics['steps']} steps in {metrics['runtime_s']:.0f}s, final loss {metrics['train_loss']:.4f}")
        return ["train_metrics.json", "model"]

    def _with_igf_scores(self, kept: pl.DataFrame) -> pl.DataFrame:
        """IGF's training-time filter reads each example's predicted IG from the score table."""
        if self.settings.igf_filter is None:
            return kept
        column = self.settings.igf_filter.column
        if self.scores is None:
            raise ValueError("train.igf_filter needs the score table of a curation in the same run")
        table = pl.read_parquet(self.scores.path, glob=False)
        if column not in table.columns:
            raise ValueError(f"train.igf_filter.column {column!r} is not in the score table "
                             f"(columns: {', '.join(c for c in table.columns if c != 'id')})")
        return kept.drop(column, strict=False).join(table.select("id", column), on="id", how="left",
                                                    maintain_order="left")

    def _columns(self, kept: pl.DataFrame, folder: Path) -> dict | None:
        """The columns the loss requires, from its providers (each token scored by a held-out reference)."""
        from pipeline.training.columns import ColumnContext, training_columns
        from pipeline.training.reference import reference_train

        if not self.providers:
            return None
        t0 = time.perf_counter()
        ctx = ColumnContext(model=self.model.name, max_length=self.settings.max_length,
                            cache_root=str(self.cache_root(folder)), seed=self.seed,
                            references=self.settings.token_labels.model_dump(),
                            reference_train=reference_train(self.settings))
        columns = training_columns(kept, self.providers, ctx)
        log(f"training columns ({', '.join(columns)}) in {time.perf_counter() - t0:.0f}s")
        return columns

    def result(self, folder: Path) -> Trained:
        return Trained(**read_json(folder / "train_metrics.json"))
