"""What every flow does around its stages: settle the run dir, publish Prefect artifacts, write report.html."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
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
    run_dir = metrics.get("run_dir")
    report = finish_run(run_dir, metrics.get("tensorboard")) if run_dir else None
    lines = [f"# {name}", "", f"run dir: `{run_dir}`", ""]
    if report is not None:
        lines.append(f"- report: [{report.name}]({report.resolve().as_uri()}) (`pipeline report {run_dir}`)")
    for side in ("base", "tuned", "eval"):
        if side in metrics:
            m, label = metrics[side], metrics.get("model", side) if side == "eval" else side
            lines.append(f"- {label}: accuracy {m['accuracy']:.3f}, response NLL {m['nll']:.4f}")
    if metrics.get("data_card"):
        lines.append(f"- data card: `{metrics['data_card']}`")
    create_markdown_artifact(markdown="\n".join(lines), key=f"{key}-summary", description=f"{name} summary")
    if stages:
        create_table_artifact(table=stages, key=f"{key}-stages", description="kept/dropped per stage")


def finish_run(run_dir: str, tensorboard: dict[str, str] | None = None) -> Path | None:
    """The run's training curves gathered into run_dir/tensorboard and its report.html written; never fails the
    run: an error here is a warning and the run still succeeds. Returns the report's path (None if not written)."""
    try:
        gather_tensorboard(run_dir, tensorboard)
    except Exception as e:  # noqa: BLE001 - curves are a view of the run, not its result
        print(f"[pipeline] warning: tensorboard logs not gathered into {run_dir}: {e}", file=sys.stderr, flush=True)
    try:
        from pipeline.reports.html import write_report

        return write_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the report is a view of the run, not its result
        print(f"[pipeline] warning: report.html not written for {run_dir}: {e}", file=sys.stderr, flush=True)
        return None


def gather_tensorboard(run_dir: str, sources: dict[str, str] | None = None) -> None:
    """Copy each training's TensorBoard events (`<train stage>/checkpoints/runs`) into run_dir/tensorboard/<name>
    (a study: one folder per variant/seed, so TensorBoard overlays them); default source: the run's model."""
    run = Path(run_dir)
    if sources is None:
        sources = {"": str(run / "model")} if (run / "model").exists() else {}
    for name, model_dir in sources.items():
        events = Path(model_dir).resolve().parent / "checkpoints" / "runs"
        if events.is_dir():
            shutil.copytree(events, run / "tensorboard" / name, dirs_exist_ok=True)
