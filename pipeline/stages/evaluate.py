"""The evaluate stage: final-answer accuracy and response NLL of a model on the held-out test split."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
from pydantic import ConfigDict, Field

from pipeline.core.config import EvalSection
from pipeline.core.io import read_json, write_json, write_parquet
from pipeline.stages.base import ModelRef, Output, Split, Stage


class Evaluation(Output):
    """Metrics (accuracy, nll, bits_per_byte, counts, seconds) and the per-example table beside `path`."""

    model_config = ConfigDict(extra="allow")
    path: str
    accuracy: float
    nll: float

    @property
    def table(self) -> str:
        """The per-example parquet (`response_nll_table` columns plus the generated answers)."""
        return str(Path(self.path).with_suffix(".parquet"))

    def paths(self) -> list[str]:
        return [self.path, self.table]


class Evaluate(Stage):
    """Accuracy on the first `eval.n_generate` test problems, NLL and bits per byte on all of them."""

    kind = "eval"
    layer = "evaluation"
    model: ModelRef
    test: Split
    eval: EvalSection
    label: str = Field("model", exclude=True)  # base, tuned, ...: for the log only

    def compute(self, folder: Path) -> list[str]:
        from pipeline.evaluation.heldout import evaluate_model

        t0 = time.perf_counter()
        metrics, table = evaluate_model(self.model.name, pl.read_parquet(self.test.path, glob=False), self.eval)
        write_parquet(folder / "eval.parquet", table)
        metrics["seconds"] = time.perf_counter() - t0
        write_json(folder / "eval.json", metrics)
        return ["eval.json", "eval.parquet"]

    def result(self, folder: Path) -> Evaluation:
        return Evaluation(**read_json(folder / "eval.json"), path=str(folder / "eval.json"))

    def describe(self, out: Evaluation, reused: bool) -> str:
        return (f"{self.label}: accuracy {out.accuracy:.3f} ({out.n_generate} problems), "
                f"response NLL {out.nll:.4f} ({out.n_nll} examples)")
