"""The one cached-stage mechanism: a stage declares typed inputs and outputs, this keys, locks and publishes.

A stage is a pydantic model whose fields are its inputs, with a `compute(folder)` that writes its
files and a `result(folder)` that reads its typed output back. `run_stage(stage, cache_root)`:

- keys the output folder `<cache_root>/<kind>/<hash>` on every field's value (fields marked
  `Field(exclude=True)` carry objects, not identity: the parts, a display label), the code of the
  layers the stage runs (`layer`, raised to `training` when a part it runs declares that it trains:
  `Part.trains()`), the source of every part defined outside this package, and the bytes of every
  local file an input names (an evaluation set, a reference-data parquet);
- holds a lock on that folder, so two runs of one config compute once;
- skips the work when the folder is complete (its marker, written last, matches every file's size
  and hash), so a killed run resumes, and a deleted or truncated file is recomputed;
- runs as a Prefect task named after the stage (the UI shows it), persisting nothing in Prefect:
  these folders are the only cache, and nothing is ever unpickled.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from pipeline.core.hashing import code_version, config_hash
from pipeline.core.io import atomic_path, is_complete, locked, mark_complete, read_json, write_json


def log(msg: str) -> None:
    print(f"[pipeline] {msg}", flush=True)


class Output(BaseModel):
    """A stage's typed result: paths and fingerprints, never tables."""

    model_config = ConfigDict(extra="forbid")

    def paths(self) -> list[str]:
        """The files and folders this output points at (checked to exist after every run)."""
        return []

    def identity(self) -> Any:
        """What a downstream stage's key records of this output: its content identity, never its path."""
        return self.model_dump(mode="json")


class ModelRef(Output):
    """A model by name (hub id, folder or short name) and by what identifies its results (`model_key`)."""

    name: str
    key: str

    @classmethod
    def of(cls, name: str) -> ModelRef:
        from pipeline.models.loading import model_key

        return cls(name=name, key=model_key(name))

    def identity(self) -> str:
        return self.key


class Split(Output):
    """A parquet of examples and the fingerprint of its ids."""

    path: str
    rows: int
    fingerprint: str

    def paths(self) -> list[str]:
        return [self.path]

    def identity(self) -> str:
        return self.fingerprint


class Selection(Output):
    """A selection table (every id kept or dropped, its reason and weight), its hash and per-step counts."""

    path: str
    hash: str
    stages: list[dict[str, Any]]
    read: int
    kept: int
    dropped: int
    drop_reasons: dict[str, int]

    def paths(self) -> list[str]:
        return [self.path]

    def identity(self) -> str:
        return self.hash

    def counts(self) -> list[dict[str, Any]]:
        """Read/kept/dropped of each selection step (the artifact table and the card)."""
        return [{k: st[k] for k in ("stage", "read", "kept", "dropped")} for st in self.stages]


def identity(value: Any) -> Any:
    """A stage input as its key sees it: outputs by identity, models and sections by value."""
    if isinstance(value, Output):
        return value.identity()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [identity(v) for v in value]
    if isinstance(value, dict):
        return {k: identity(v) for k, v in value.items()}
    return value


class Stage(BaseModel):
    """Base of every stage: fields are the inputs; `kind`, `layer` and `compute`/`result` the rest."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    kind: ClassVar[str] = ""  # the cache folder's name: <cache_root>/<kind>/<key>
    layer: ClassVar[str] = "core"  # the highest layer of pipeline code the result depends on

    def parts(self) -> list[Any]:
        """The parts this stage runs (scorers, selectors, a loss, column providers): their needs and code count."""
        return []

    def code(self) -> str:
        """The code version the result depends on: the layers up to `layer` (training when a part trains)
        plus the source of every part defined outside this package."""
        parts = self.parts()
        layer = "training" if any(getattr(p, "trains", lambda: False)() for p in parts) else self.layer
        return code_version(layer, parts)

    def key_inputs(self) -> dict[str, Any]:
        """The inputs that identify the result (every field not marked `exclude`, outputs by their identity)."""
        return {name: identity(getattr(self, name)) for name, field in type(self).model_fields.items()
                if not field.exclude}

    def folder(self, cache_root: str | Path) -> Path:
        inputs = self.key_inputs()
        return Path(cache_root) / self.kind / config_hash([inputs, self.code(), local_inputs(inputs)])

    def compute(self, folder: Path) -> list[str]:
        """Write the output into `folder`; return the names of the files and folders written."""
        raise NotImplementedError

    @staticmethod
    def cache_root(folder: Path) -> Path:
        """The cache root a stage's `folder` (`<cache_root>/<kind>/<key>`) lives in: for caches it shares."""
        return folder.parent.parent

    def result(self, folder: Path) -> Output:
        """The typed output read back from a complete `folder`."""
        raise NotImplementedError

    def describe(self, out: Output, reused: bool) -> str | None:
        """A one-line log of the result (None: say nothing)."""
        return None


TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


TIMING = "stage_seconds.json"  # beside a stage's output: how long its compute took when it ran
STAGE_LOG: list[dict[str, Any]] = []  # every stage this process ran or reused: {kind, folder, seconds, reused}


def stage_seconds(folder: Path) -> float | None:
    """The compute seconds recorded in a complete stage folder (None for folders written before it was kept)."""
    try:
        return float(read_json(folder / TIMING)["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@task(name="stage", **TASK_OPTIONS)
def _run(stage: Stage, cache_root: str) -> Output:
    folder = stage.folder(cache_root)
    with locked(folder):
        reused = is_complete(folder)
        if not reused:
            t0 = time.perf_counter()
            names = stage.compute(folder)
            write_json(folder / TIMING, {"seconds": round(time.perf_counter() - t0, 4)})
            mark_complete(folder, names)
    STAGE_LOG.append({"kind": stage.kind, "folder": str(folder), "seconds": stage_seconds(folder), "reused": reused})
    out = stage.result(folder)
    broken = [p for p in out.paths() if not Path(p).exists()]
    if broken:
        raise RuntimeError(f"stage {stage.kind} returned {broken[0]}, which does not exist")
    line = stage.describe(out, reused)
    if line:
        log(line)
    return out


def run_stage(stage: Stage, cache_root: str | Path) -> Any:
    """Run `stage` (at once when its folder is complete) as a Prefect task named after it; its typed output."""
    return _run.with_options(name=stage.kind)(stage, str(cache_root))


def local_inputs(obj: Any) -> dict[str, str]:
    """`{path: content version}` of every string in `obj` (recursively) naming an existing local file or
    data folder (`pipeline.data.source.source_version`); model folders are keyed by `model_key` instead."""
    from pipeline.data.source import source_version

    found: dict[str, str] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and ("/" in value or "." in value) and len(value) < 4096 and value not in found:
            path = Path(value).expanduser()
            if path.is_file() or (path.is_dir() and _data_folder(path)):
                found[value] = source_version(value)

    walk(obj)
    return found


def _data_folder(path: Path) -> bool:
    """A folder whose files are inputs: not a model (config.json), not the cache, not the working folder
    or one of its parents."""
    from pipeline.core.config import cache_dir

    resolved, cwd = path.resolve(), Path.cwd().resolve()
    return not ((path / "config.json").is_file() or resolved in (cwd, *cwd.parents)
                or resolved.is_relative_to(cache_dir().resolve()))


def publish(src: str | Path, dest: str | Path) -> Path:
    """Make a stage output visible in the run directory: copy a file (the run keeps its own bytes, so a
    damaged cache never damages an older run), symlink a folder (a model: verified before every reuse).
    An existing `dest` is replaced only inside a run folder the project created (`pipeline.core.runs`)."""
    from pipeline.core.runs import inside_run

    src, dest = Path(src), Path(dest)
    if (dest.is_symlink() or dest.exists()) and not inside_run(dest):
        raise ValueError(f"{dest} exists and is not inside a run folder the project created; not replacing it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        shutil.rmtree(dest)
    if src.is_dir():
        dest.symlink_to(src.resolve(), target_is_directory=True)
    else:
        with atomic_path(dest) as tmp:
            shutil.copy2(src, tmp)
    return dest
