"""An audit folder: audit.parquet (one row per score column and canary kind), results.md, audit.png.

results.md leads with what a user asks: for each kind of defect, which score catches it best and
whether the recipe's own selection drops it; then the whole table. The heat map shows each column's
AUROC by kind, signed by direction (which end of the column flags the defect).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.io import atomic_path, read_json, write_json, write_parquet, write_text
from pipeline.evaluation.audit import SELECTION_ROW

TABLE, MARKDOWN, FIGURE, META = "audit.parquet", "results.md", "audit.png", "audit.json"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _markdown(table: pl.DataFrame, meta: dict[str, Any]) -> str:
    scores = table.filter(pl.col("column") != SELECTION_ROW)
    selection = {r["kind"]: r for r in table.filter(pl.col("column") == SELECTION_ROW).iter_rows(named=True)}
    lines = ["# Audit: which score catches which defect", "",
             *[f"- **{k}**: {json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in meta.items()],
             "- **AUROC**: 0.5 is chance, 1.0 a perfect split of canaries from your rows; `direction` says which "
             "end of the column flags the defect (`high`: high values). 95% stratified bootstrap intervals.",
             "- **recall at budget**: share of the kind among the rows the column would drop at the selection's "
             "budget, in its best direction; **selection dropped**: what the recipe's own selection dropped.",
             "", "## By defect", "", "| kind | canaries | best score (direction) | AUROC [95% CI] | recall at budget "
             "| selection dropped |", "|---|---|---|---|---|---|"]
    for kind in sorted(set(scores.get_column("kind").to_list())):
        part = scores.filter((pl.col("kind") == kind) & pl.col("auroc").is_not_null()).sort("auroc", descending=True)
        sel = selection.get(kind)
        if part.height:
            b = part.row(0, named=True)
            best = (f"{b['column']} ({b['direction']})", f"{_fmt(b['auroc'])} [{_fmt(b['lo'])}, {_fmt(b['hi'])}]",
                    _fmt(b["recall_at_budget"]))
        else:
            best = ("none separates it", "", "")
        n = part.row(0, named=True)["n"] if part.height else (sel or {}).get("n", 0)
        lines.append(f"| {kind} | {n} | {best[0]} | {best[1]} | {best[2]} | "
                     f"{_fmt(sel['recall_at_budget']) if sel else ''} |")
    lines += ["", "## Every score and kind", "", "| column | kind | AUROC | 95% CI | direction | recall at budget | n |",
              "|---|---|---|---|---|---|---|"]
    for r in scores.sort(["column", "kind"]).iter_rows(named=True):
        lines.append(f"| {r['column']} | {r['kind']} | {_fmt(r['auroc'])} | [{_fmt(r['lo'])}, {_fmt(r['hi'])}] | "
                     f"{r['direction'] or ''} | {_fmt(r['recall_at_budget'])} | {r['n']} |")
    lines += ["", f"![AUROC by score and defect]({FIGURE})", ""]
    return "\n".join(lines)


def _figure(path: Path, table: pl.DataFrame) -> Path:
    """Heat map of AUROC by column (rows) and kind (columns): red when high values flag, blue when low do."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scores = table.filter(pl.col("column") != SELECTION_ROW)
    columns = sorted(set(scores.get_column("column").to_list()))
    kinds = sorted(set(scores.get_column("kind").to_list()))
    grid = np.full((len(columns), len(kinds)), np.nan)
    for r in scores.iter_rows(named=True):
        if r["auroc"] is not None:
            signed = r["auroc"] - 0.5
            grid[columns.index(r["column"]), kinds.index(r["kind"])] = signed if r["direction"] == "high" else -signed
    fig, ax = plt.subplots(figsize=(1.1 * len(kinds) + 3, 0.5 * len(columns) + 2), dpi=100)
    im = ax.imshow(grid, cmap="coolwarm", vmin=-0.5, vmax=0.5, aspect="auto")
    for i in range(len(columns)):
        for j in range(len(kinds)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{abs(grid[i, j]) + 0.5:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
    ax.set_yticks(range(len(columns)), columns)
    fig.colorbar(im, ax=ax, label="AUROC - 0.5 (red: high values flag, blue: low values flag)")
    ax.set_title("Which score catches which defect (AUROC)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_audit(folder: str | Path, table: pl.DataFrame, meta: dict[str, Any]) -> dict[str, str]:
    """Write audit.parquet, audit.json, results.md and audit.png into `folder`; return their paths."""
    folder = Path(folder)
    write_parquet(folder / TABLE, table)
    write_json(folder / META, meta)
    write_text(folder / MARKDOWN, _markdown(table, meta))
    _figure(folder / FIGURE, table)
    return {name: str(folder / name) for name in (TABLE, META, MARKDOWN, FIGURE)}


def audit_report(folder: str | Path) -> dict[str, Any]:
    """An audit folder for `pipeline inspect`: its meta and one dict per (column, kind)."""
    folder = Path(folder)
    if not (folder / TABLE).is_file():
        raise FileNotFoundError(f"{folder / TABLE} not found: not an audit folder")
    meta = read_json(folder / META) if (folder / META).is_file() else {}
    return {"folder": str(folder), "meta": meta, "rows": pl.read_parquet(folder / TABLE, glob=False).to_dicts()}
