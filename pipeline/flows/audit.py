"""`audit`: which of the recipe's scores catches which defect in this pool (canaries, AUROC with CIs)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from pipeline.core.io import write_json
from pipeline.core.registry import ConfigError
from pipeline.flows.common import ensure_run_dir, publish_artifacts
from pipeline.flows.recipe import resolve
from pipeline.stages import wiring
from pipeline.stages.plan import Plan


def check_audit(plan: Plan) -> None:
    """The audit's canary kinds exist (`FlowSpec.check` of the audit flow)."""
    from pipeline.data.canaries import KINDS

    for i, kind in enumerate(plan.recipe.audit.kinds or []):
        if kind not in KINDS:
            raise ConfigError(f"audit.kinds[{i}]", f"unknown canary kind {kind!r} (kinds: {', '.join(KINDS)})")
    if plan.recipe.audit.kinds == []:
        raise ConfigError("audit.kinds", "an empty list: name at least one kind, or null for all")


def best_by_kind(table) -> list[dict]:
    """Per canary kind: the score column with the highest AUROC (and its CI), and what the selection dropped."""
    import polars as pl

    from pipeline.evaluation.audit import SELECTION_ROW

    out = []
    for kind in sorted(set(table.get_column("kind").to_list())):
        rows = table.filter(pl.col("kind") == kind)
        scored = rows.filter((pl.col("column") != SELECTION_ROW) & pl.col("auroc").is_not_null())
        best = scored.sort("auroc", descending=True).row(0, named=True) if scored.height else {}
        sel = rows.filter(pl.col("column") == SELECTION_ROW)
        out.append({"kind": kind, "column": best.get("column"), "direction": best.get("direction"),
                    "auroc": best.get("auroc"), "lo": best.get("lo"), "hi": best.get("hi"),
                    "selection_dropped": sel.row(0, named=True)["recall_at_budget"] if sel.height else None})
    return out


@flow(name="audit", validate_parameters=False)
def audit_flow(config, run_dir: str | None = None) -> dict:
    """Inject canaries into a copy of the pool, score and select it, and write audit.parquet, results.md and
    audit.png into the run dir (no card, no subset, no training)."""
    plan = resolve(config)
    run_dir = ensure_run_dir(plan.recipe, run_dir)
    out = wiring.audit(plan, run_dir)
    metrics = {"recipe": plan.recipe.name, "audit": out["meta"], "by_kind": best_by_kind(out["table"]),
               "results": out["paths"]["results.md"], "run_dir": run_dir}
    write_json(Path(run_dir) / "metrics.json", metrics)
    rows = out["table"].select("column", "kind", "auroc", "lo", "hi", "direction", "recall_at_budget", "n")
    publish_artifacts(plan.recipe.name, {"run_dir": run_dir}, rows.to_dicts())
    return metrics
