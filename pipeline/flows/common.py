"""What every flow does around its stages: settle the run dir and cache root, publish artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.models.assets import cache_dir


def cache_root(config: dict) -> str:
    """Where content-addressed stage outputs live (`cache_dir` in the recipe, else the user cache)."""
    return str(Path(config.get("cache_dir") or cache_dir() / "stages").resolve())


def data_seed(config: dict) -> int:
    """The seed of the data splits: `data_seed` when set (a study's seeds share one test split), else `seed`."""
    return int(config["seed"] if config.get("data_seed") is None else config["data_seed"])


def ensure_run_dir(config: dict, run_dir: str | None) -> str:
    """The given run dir, or a fresh timestamped one (scheduled runs get one each)."""
    from pipeline.core.runs import new_run_dir

    return str(new_run_dir(config, run_dir))


def publish_artifacts(name: str, metrics: dict[str, Any], stages: list[dict[str, Any]]) -> None:
    """A markdown summary and a table of per-stage kept/dropped counts, visible in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    lines = [f"# {name}", "", f"run dir: `{metrics.get('run_dir')}`", ""]
    for side in ("base", "tuned", "eval"):
        if side in metrics:
            m, label = metrics[side], metrics.get("model", side) if side == "eval" else side
            lines.append(f"- {label}: accuracy {m['accuracy']:.3f}, response NLL {m['nll']:.4f}")
    if metrics.get("data_card"):
        lines.append(f"- data card: `{metrics['data_card']}`")
    create_markdown_artifact(markdown="\n".join(lines), key=f"{key}-summary", description=f"{name} summary")
    if stages:
        create_table_artifact(table=stages, key=f"{key}-stages", description="kept/dropped per stage")
