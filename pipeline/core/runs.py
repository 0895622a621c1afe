"""Run directories: one folder per run with the resolved config, tables, model, metrics and card."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from pipeline.core.io import write_text


def new_run_dir(config: dict, run_dir: str | Path | None = None) -> Path:
    """`run_dir` when given (to resume a run), else `<output_dir>/<recipe>-<timestamp>`."""
    if run_dir:
        path = Path(run_dir)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(config.get("output_dir", "runs")) / f"{config['name']}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return path


def list_runs(output_dir: str | Path = "runs") -> list[Path]:
    root = Path(output_dir)
    return sorted(p for p in root.glob("*") if (p / "config.yaml").exists()) if root.is_dir() else []
