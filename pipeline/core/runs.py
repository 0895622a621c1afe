"""Run directories: one folder per run with the resolved config, tables, model, metrics and card.

A new run gets a folder of its own even when two runs start in the same second, and a live run
holds a lock on its folder for as long as its process lives, so `--run-dir` of a run still going
is refused instead of two runs writing into one folder.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from pathlib import Path
from typing import IO

import yaml

from pipeline.core.config import DEFAULT_OUTPUT_DIR, Recipe
from pipeline.core.io import write_text
from pipeline.core.registry import ConfigError

LOCK = ".run.lock"
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


def new_run_dir(recipe: Recipe | dict, run_dir: str | Path | None = None) -> Path:
    """`run_dir` when given (to resume a run), else a new `<output_dir>/<recipe>-<timestamp>-<suffix>`."""
    config = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else recipe
    if run_dir:
        path = Path(run_dir)
        if path.exists() and not path.is_dir():
            raise ConfigError("--run-dir", f"{path} is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = Path(config.get("output_dir") or DEFAULT_OUTPUT_DIR)
        root.mkdir(parents=True, exist_ok=True)
        while True:  # mkdir without exist_ok: two runs in one second can never get the same folder
            path = root / f"{config['name']}-{stamp}-{secrets.token_hex(2)}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
    claim(path)
    write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return path


def list_runs(output_dir: str | Path = DEFAULT_OUTPUT_DIR) -> list[Path]:
    root = Path(output_dir)
    return sorted(p for p in root.iterdir() if (p / "config.yaml").exists()) if root.is_dir() else []
