"""What every flow does around its stages: settle the run dir, publish Prefect artifacts."""

from __future__ import annotations

from typing import Any

from pipeline.core.config import Recipe


def ensure_run_dir(recipe: Recipe, run_dir: str | None) -> str:
    """The given run dir, or a fresh timestamped one (scheduled runs get one each)."""
    from pipeline.core.runs import new_run_dir

    return str(new_run_dir(recipe, run_dir))


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
