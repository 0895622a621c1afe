"""Data stages: the recipe's splits (generated math or the user's own files), or a selected subset to train on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field

from pipeline.core.config import DataSection
from pipeline.core.hashing import file_hash, fingerprint
from pipeline.core.io import read_json, write_json, write_parquet
from pipeline.stages.base import Output, Selection, Split, Stage

SOURCE_IGNORES = ("dataset", "n_train", "n_val", "n_test", "subset")  # keys that do not matter with data.source


class Data(Output):
    """Train / validation / test splits; with the user's own source, how many records were read and
    quarantined (the quarantine table with its reasons)."""

    dataset: str | list[str]
    seed: int
    train: Split
    validation: Split
    test: Split
    read: int | None = None
    quarantined: int | None = None
    quarantine: str | None = None
    noise: list[tuple[str, int]] | None = None  # (kind, corrupted rows) of the train split, with data.noise

    def paths(self) -> list[str]:
        return [self.train.path, self.validation.path, self.test.path, *([self.quarantine] if self.quarantine else [])]


class LoadData(Stage):
    """Disjoint, deduplicated train/validation/test splits: generated math, or `data.source` keyed by its bytes."""

    kind = "data"
    layer = "data"
    data: DataSection
    seed: int

    def key_inputs(self) -> dict[str, Any]:
        from pipeline.data.source import source_version

        d = self.data
        if not d.source:
            return {"data": d.model_dump(mode="json"), "seed": self.seed}
        cfg = d.model_dump(mode="json", exclude=set(SOURCE_IGNORES))
        return {"data": cfg, "versions": {k: source_version(str(v)) for k in ("source", "validation", "test")
                                          if (v := getattr(d, k))}}

    def compute(self, folder: Path) -> list[str]:
        from pipeline.data import load_math
        from pipeline.data.source import load_source

        d = self.data
        info: dict[str, Any] = {"dataset": d.source or d.dataset, "seed": self.seed}
        files = ["splits.json"]
        if d.source:
            loaded = load_source(d.model_dump(exclude=set(SOURCE_IGNORES)))
            splits = {k: loaded[k] for k in ("train", "validation", "test")}
            write_parquet(folder / "quarantine.parquet", loaded["quarantine"])
            info.update(read=loaded["read"], quarantined=loaded["quarantine"].height,
                        quarantine=str(folder / "quarantine.parquet"))
            files.append("quarantine.parquet")
        else:
            splits = load_math(d.dataset, d.n_train, d.n_val, d.n_test, self.seed)
        if d.noise:  # benchmarks: a noisy training pool, each corrupted row labelled with its kind
            from pipeline.data.canaries import KINDS, corrupt

            splits["train"] = corrupt(splits["train"], d.noise.share, d.noise.kinds or KINDS, self.seed)
            info["noise"] = splits["train"].get_column("noise").drop_nulls().value_counts().rows()
        for name, df in splits.items():
            write_parquet(folder / f"{name}.parquet", df)
            info[name] = {"path": str(folder / f"{name}.parquet"), "rows": df.height, "fingerprint": fingerprint(df)}
            files.append(f"{name}.parquet")
        write_json(folder / "splits.json", info)
        return files

    def result(self, folder: Path) -> Data:
        return Data(**read_json(folder / "splits.json"))

    def describe(self, out: Data, reused: bool) -> str:
        return ("data: " + ", ".join(f"{k} {getattr(out, k).rows}" for k in ("train", "validation", "test"))
                + (f"; read {out.read}, quarantined {out.quarantined}" if out.read is not None else ""))


class Subset(Output):
    """A selected subset as a train split plus an all-kept selection carrying its weights and reasons."""

    train: Split
    selection: Selection


def subset_file(subset: str) -> Path:
    """The parquet of `data.subset`: a data card folder's subset.parquet, or the file itself."""
    path = Path(subset)
    path = path / "subset.parquet" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"data.subset: {path} does not exist (a data card folder or a parquet file)")
    return path


class LoadSubset(Stage):
    """`data.subset` (a card's subset.parquet or any parquet of examples), keyed by its bytes; its `weight`
    column (1.0 when absent) reaches the loss and its `reason`s are kept."""

    kind = "subset"
    layer = "data"
    content_hash: str
    path: str = Field(exclude=True)

    @classmethod
    def of(cls, subset: str) -> LoadSubset:
        path = subset_file(subset)
        return cls(content_hash=file_hash(path), path=str(path))

    def compute(self, folder: Path) -> list[str]:
        df = pl.read_parquet(self.path, glob=False)
        missing = {"id", "prompt", "response"} - set(df.columns)
        if missing:
            raise ValueError(f"{self.path}: missing columns {sorted(missing)} (need id, prompt, response)")
        if df.height == 0:
            raise ValueError(f"{self.path}: no rows: a subset to train on needs at least one example "
                             "(did the selection keep nothing?)")
        for column in ("id", "prompt", "response"):
            if df.schema[column] != pl.String:
                raise ValueError(f"{self.path}: column {column} holds {df.schema[column]}, not text")
            nulls = df.with_row_index("row").filter(pl.col(column).is_null())
            if nulls.height:
                raise ValueError(f"{self.path}: row {nulls['row'][0]}, field {column}: {nulls.height} rows have no "
                                 f"{column} (null); fix or drop them, e.g. with `pipeline ingest`")
        weights = df.get_column("weight").cast(pl.Float64) if "weight" in df.columns else pl.Series([1.0] * df.height)
        bad = df.with_row_index("row").filter(weights.is_null() | ~weights.is_finite() | (weights <= 0))
        if bad.height:
            raise ValueError(f"{self.path}: row {bad['row'][0]} (id {bad['id'][0]}), field weight: {bad.height} "
                             "weights are missing, non-finite or <= 0 (a training weight must be a positive number)")
        reasons = (df.get_column("reason").fill_null("kept: data.subset") if "reason" in df.columns
                   else pl.Series(["kept: data.subset"] * df.height))  # a card's subset keeps its reasons
        write_parquet(folder / "train.parquet", df.drop("weight", "reason", strict=False))
        write_parquet(folder / "selection.parquet", pl.DataFrame({
            "id": df.get_column("id"), "kept": [True] * df.height, "weight": weights, "reason": reasons}))
        write_json(folder / "subset.json", {"rows": df.height, "fingerprint": fingerprint(df)})
        return ["train.parquet", "selection.parquet", "subset.json"]

    def result(self, folder: Path) -> Subset:
        from pipeline.selectors.base import summarize

        info = read_json(folder / "subset.json")
        sel = folder / "selection.parquet"
        summary = summarize(pl.read_parquet(sel, glob=False))
        return Subset(train=Split(path=str(folder / "train.parquet"), **info),
                      selection=Selection(path=str(sel), hash=file_hash(sel), stages=[], **summary))

    def describe(self, out: Subset, reused: bool) -> str:
        return f"subset: {out.train.rows} examples from {self.path}"
