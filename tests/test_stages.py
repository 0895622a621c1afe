"""The one cached-stage mechanism: keyed on declared inputs and code, recomputed only when one changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from pipeline.core.io import read_json, write_json
from pipeline.core.registry import Part
from pipeline.stages.base import Output, Split, Stage, run_stage

RUNS: list[str] = []


class Total(Output):
    path: str
    total: float

    def paths(self) -> list[str]:
        return [self.path]


class Sum(Stage):
    """Sum the rows of a split times `factor`; `note` is for the log only, `part` a part it runs."""

    kind: ClassVar[str] = "sum"
    layer: ClassVar[str] = "data"
    rows: Split
    factor: float
    note: str = Field("", exclude=True)
    part: Any = Field(None, exclude=True)

    def parts(self) -> list[Any]:
        return [self.part] if self.part is not None else []

    def compute(self, folder: Path) -> list[str]:
        RUNS.append(self.note)
        write_json(folder / "total.json", {"total": self.rows.rows * self.factor})
        return ["total.json"]

    def result(self, folder: Path) -> Total:
        return Total(path=str(folder / "total.json"), **read_json(folder / "total.json"))


class Plain(Part):
    pass


class Trains(Part):
    needs = {"trainer"}


def split(tmp_path: Path, fingerprint: str = "f1") -> Split:
    path = tmp_path / f"{fingerprint}.parquet"
    path.write_text("x")
    return Split(path=str(path), rows=3, fingerprint=fingerprint)


def test_a_stage_computes_once_and_again_only_when_an_input_changes(tmp_path):
    RUNS.clear()
    root = tmp_path / "cache"
    first = run_stage(Sum(rows=split(tmp_path), factor=2.0, note="a"), root)
    assert first.total == 6.0 and RUNS == ["a"]
    assert run_stage(Sum(rows=split(tmp_path), factor=2.0, note="b"), root) == first  # a label is not an input
    assert RUNS == ["a"]
    run_stage(Sum(rows=split(tmp_path), factor=3.0, note="c"), root)  # a declared input changed
    run_stage(Sum(rows=split(tmp_path, "f2"), factor=2.0, note="d"), root)  # the split's content changed
    assert RUNS == ["a", "c", "d"]
    Path(first.path).write_text('{"total": 99}')  # a damaged output is recomputed, not returned
    assert run_stage(Sum(rows=split(tmp_path), factor=2.0, note="e"), root).total == 6.0 and RUNS[-1] == "e"


def test_outputs_enter_keys_by_identity_not_path(tmp_path):
    a = Sum(rows=Split(path="/one/place.parquet", rows=3, fingerprint="f"), factor=1.0)
    b = Sum(rows=Split(path="/another/place.parquet", rows=3, fingerprint="f"), factor=1.0)
    assert a.folder(tmp_path) == b.folder(tmp_path)


def test_a_part_that_trains_puts_the_training_code_into_the_key(tmp_path, monkeypatch):
    import pipeline.core.hashing as hashing

    plain = Sum(rows=split(tmp_path), factor=1.0, part=Plain())
    trains = Sum(rows=split(tmp_path), factor=1.0, part=Trains())
    before = plain.folder(tmp_path), trains.folder(tmp_path)
    real = hashing._layer_source_hash.__wrapped__
    monkeypatch.setattr(hashing, "_layer_source_hash", lambda layer: real(layer) + ("!" if layer == "training" else ""))
    assert plain.folder(tmp_path) == before[0]  # a data-layer stage does not depend on training code...
    assert trains.folder(tmp_path) != before[1]  # ...unless a part it runs declares that it trains


def test_a_part_defined_in_a_users_file_enters_the_key_by_its_source(tmp_path, monkeypatch):
    import importlib
    import sys

    (tmp_path / "user_part.py").write_text("from pipeline.core.registry import Part\n\nclass Mine(Part):\n    x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("user_part")
    key = Sum(rows=split(tmp_path), factor=1.0, part=mod.Mine()).folder(tmp_path)
    (tmp_path / "user_part.py").write_text("from pipeline.core.registry import Part\n\nclass Mine(Part):\n    x = 2\n")
    assert Sum(rows=split(tmp_path), factor=1.0, part=mod.Mine()).folder(tmp_path) != key
    sys.modules.pop("user_part", None)
