"""Run directories and every path a command writes: one rule for each.

A run folder is created by the project and marked (`.pipeline-run`, JSON with the recipe's name), so
`--run-dir` accepts only a new or empty folder, or a marked run folder of the same recipe: a user's
own folder, a data card or another recipe's run is refused before anything is written, and
publishing into a run never removes a path outside a marked run folder. A new run gets a folder of
its own even when two runs start in the same second, and a live run holds a lock on its folder for
as long as its process lives, so `--run-dir` of a run still going is refused.

`check_output` is the one guard of the paths `pipeline ingest --out`, `pipeline regenerate --out` and
`pipeline inspect --export` write: never into a run or a data card folder, never over the command's
own inputs, and over an existing plain file only with `--force`.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import yaml

from pipeline.core.config import DEFAULT_OUTPUT_DIR, Recipe
from pipeline.core.io import write_text
from pipeline.core.registry import ConfigError

LOCK = ".run.lock"
RUN_MARKER = ".pipeline-run"  # {"recipe": name, "created": time}: written when the project creates a run folder
_IGNORED = {LOCK}  # files a folder may hold and still count as empty (a lock left by a killed run)
_HELD: dict[Path, IO] = {}  # run dirs this process holds, with their open lock files


def claim(path: Path) -> None:
    """Lock `path` for this process (released when it exits, even by SIGKILL); a ConfigError if a live run has it."""
    path = path.resolve()
    if path in _HELD:
        return
    f = open(path / LOCK, "a+")  # noqa: SIM115 - stays open for the life of the run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        f.close()
        raise ConfigError("--run-dir", f"{path} is in use by a live run ({owner}); wait for it or pick another "
                                       "folder") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    _HELD[path] = f


def run_marker(path: str | Path) -> dict | None:
    """The marker of a run folder the project created ({"recipe": ...}), or None when `path` is not one."""
    try:
        data = json.loads((Path(path) / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _mark(path: Path, recipe: str) -> None:
    write_text(path / RUN_MARKER, json.dumps({"recipe": recipe, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def check_run_dir(path: Path, recipe: str) -> None:
    """`--run-dir` may be a new or empty folder, or a run folder of the same recipe; else a ConfigError."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError("--run-dir", f"{path} is a file, not a folder")
    marker = run_marker(path)
    if marker is not None:
        if marker.get("recipe") != recipe:
            raise ConfigError("--run-dir", f"{path} is a run of recipe {marker.get('recipe')!r}, not {recipe!r}: "
                                           "resume it with its own recipe, or give a new folder")
        return
    try:
        entries = [p.name for p in path.iterdir() if p.name not in _IGNORED]
    except OSError as e:
        raise ConfigError("--run-dir", f"{path}: cannot list: {e.strerror or e}") from None
    if entries:
        raise ConfigError("--run-dir", f"{path} is not a run folder (no {RUN_MARKER}) and not empty (it holds "
                                       f"{sorted(entries)[0]!r}); give a new or empty folder, or an earlier run "
                                       f"of recipe {recipe!r}")


def new_run_dir(recipe: Recipe | dict, run_dir: str | Path | None = None) -> Path:
    """`run_dir` when given (new, empty, or a run of the same recipe to resume), else a new
    `<output_dir>/<recipe>-<timestamp>-<suffix>`; the folder is marked as a run and locked."""
    config = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else recipe
    name = str(config["name"])
    if run_dir:
        path = Path(run_dir)
        check_run_dir(path, name)
        path.mkdir(parents=True, exist_ok=True)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = Path(config.get("output_dir") or DEFAULT_OUTPUT_DIR)
        root.mkdir(parents=True, exist_ok=True)
        while True:  # mkdir without exist_ok: two runs in one second can never get the same folder
            path = root / f"{name}-{stamp}-{secrets.token_hex(2)}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
    claim(path)
    check_run_dir(path, name)  # again under the lock: another process may have marked it meanwhile
    if run_marker(path) is None:
        _mark(path, name)
    write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return path


def inside_run(path: str | Path) -> bool:
    """True when `path` lies inside a marked run folder (what publishing may replace)."""
    folder = Path(path).absolute().parent
    return any((p / RUN_MARKER).is_file() for p in (folder, *folder.parents))


def list_runs(output_dir: str | Path = DEFAULT_OUTPUT_DIR) -> list[Path]:
    root = Path(output_dir)
    return sorted(p for p in root.iterdir() if (p / "config.yaml").exists()) if root.is_dir() else []


# ---------------------------------------------------------------------------------------------
# The one guard of every path a command writes.


def is_run_folder(path: Path) -> bool:
    """A run folder: marked by the project, or holding a run's config.yaml (runs from before markers)."""
    return (path / RUN_MARKER).is_file() or (path / "config.yaml").is_file()


def is_card_folder(path: Path) -> bool:
    """A data card folder (card.json)."""
    return (path / "card.json").is_file()


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_output(out: str | Path, flag: str, *, inputs: Iterable[str | Path] = (), force: bool = False,
                 folder: bool = False, own_marker: str | None = None) -> Path:
    """`out` if a command may write it, else a ConfigError `FLAG OUT: why` (one `pipeline: error:` line).

    Refused: a path inside (or, for a folder, being) a run or data card folder; a path that is, holds or
    lies inside one of the command's `inputs`; a file path that is a folder or under a file. An existing
    file is overwritten only with `force`; an output folder must be new, empty, or hold `own_marker` (an
    earlier output of the same command).
    """
    out = Path(out)
    key = f"{flag} {out}"
    resolved = out.resolve()
    start = resolved if folder else resolved.parent
    for parent in (start, *start.parents):
        if is_run_folder(parent) or is_card_folder(parent):
            kind = "run" if is_run_folder(parent) else "data card"
            raise ConfigError(key, f"{parent} is a {kind} folder; write {'it' if folder else 'the output'} "
                                   "outside it")
    for given in inputs:
        source = Path(given).expanduser()
        if source.exists() and _overlaps(resolved, source.resolve()):
            raise ConfigError(key, f"overlaps this command's input {given}; write the output somewhere else")
    existing = next((p for p in (out.parent.absolute(), *out.parent.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(key, f"{existing} is a file, not a folder")
    if folder:
        if out.exists() and not out.is_dir():
            raise ConfigError(key, "is a file; give a folder")
        if out.is_dir() and not (own_marker and (out / own_marker).is_file()):
            try:
                entries = sorted(p.name for p in out.iterdir())
            except OSError as e:
                raise ConfigError(key, e.strerror or str(e)) from None
            if entries:
                raise ConfigError(key, f"a folder that is not empty (it holds {entries[0]!r}) and not an earlier "
                                       "output of this command; give a new or empty folder")
        return out
    if out.is_dir():
        raise ConfigError(key, "is a folder")
    if out.exists() and not force:
        raise ConfigError(key, "file exists; pass --force to overwrite it")
    return out
