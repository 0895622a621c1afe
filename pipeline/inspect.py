"""`pipeline inspect RUN_DIR`: what a run read, kept and dropped, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import yaml

from pipeline.io import read_json


def inspect_run(run_dir: str | Path, n: int = 3) -> dict[str, Any]:
    """Counts, score summaries, drop reasons and a few kept and dropped examples of a run."""
    run = Path(run_dir)
    if not (run / "config.yaml").exists():
        raise FileNotFoundError(f"{run} is not a run directory (no config.yaml)")
    config = yaml.safe_load((run / "config.yaml").read_text())
    report: dict[str, Any] = {"run_dir": str(run), "recipe": config.get("name"), "select": config.get("select")}
    if (run / "metrics.json").exists():
        report["metrics"] = read_json(run / "metrics.json")
    sel_path, scores_path, train_path = run / "selection.parquet", run / "scores.parquet", run / "data" / "train.parquet"
    if not sel_path.exists():
        report["status"] = "no selection yet"
        return report
    table = pl.read_parquet(sel_path)
    if scores_path.exists():
        table = table.join(pl.read_parquet(scores_path), on="id", how="left", maintain_order="left")
    if train_path.exists():
        table = table.join(pl.read_parquet(train_path).select("id", "prompt", "response"), on="id", how="left",
                           maintain_order="left")
    kept = table.filter(pl.col("kept"))
    report["counts"] = {"read": table.height, "kept": kept.height, "dropped": table.height - kept.height}
    numeric = [c for c, t in table.schema.items() if t.is_numeric() and c not in {"weight"}]
    report["scores"] = {
        c: {part: _describe(df.get_column(c)) for part, df in (("kept", kept), ("dropped", table.filter(~pl.col("kept"))))}
        for c in numeric
    }
    reasons = table.filter(~pl.col("kept")).group_by("reason").len().sort("len", descending=True).head(5)
    report["drop_reasons"] = reasons.rows()
    show = [c for c in ("id", "reason", "weight", *numeric[:2], "prompt") if c in table.columns]
    report["kept_examples"] = kept.head(n).select(show).to_dicts()
    report["dropped_examples"] = table.filter(~pl.col("kept")).head(n).select(show).to_dicts()
    return report


def _describe(s: pl.Series) -> dict[str, float | int | None]:
    s = s.drop_nulls().cast(pl.Float64).drop_nans()
    if s.is_empty():
        return {"count": 0}
    return {"count": s.len(), "mean": s.mean(), "median": s.median(), "min": s.min(), "max": s.max()}


def print_report(report: dict[str, Any]) -> None:
    """Render an inspect report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{report['recipe']}[/bold]  {report['run_dir']}")
    if "counts" not in report:
        con.print(report.get("status", ""))
        return
    c = report["counts"]
    con.print(f"read {c['read']}  kept {c['kept']}  dropped {c['dropped']}  rule {report['select']}")
    if "metrics" in report and "base" in report["metrics"]:
        m = report["metrics"]
        con.print(f"accuracy base {m['base']['accuracy']:.3f} -> tuned {m['tuned']['accuracy']:.3f};  "
                  f"NLL base {m['base']['nll']:.4f} -> tuned {m['tuned']['nll']:.4f}")
    t = Table(title="scores")
    for col in ("score", "subset", "count", "mean", "median", "min", "max"):
        t.add_column(col)
    for name, parts in report["scores"].items():
        for part, d in parts.items():
            t.add_row(name, part, *(f"{d.get(k):.4g}" if isinstance(d.get(k), float) else str(d.get(k, "")) for k in ("count", "mean", "median", "min", "max")))
    con.print(t)
    for title in ("kept_examples", "dropped_examples"):
        rows = report[title]
        if not rows:
            continue
        t = Table(title=title.replace("_", " "))
        for col in rows[0]:
            t.add_column(col, overflow="fold", max_width=60)
        for r in rows:
            t.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v)[:200] for v in r.values()))
        con.print(t)
