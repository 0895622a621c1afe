"""The wiring every flow shares: curate (load -> score -> select -> card), train, evaluate, publish.

Each function takes the plan (`pipeline.stages.plan`) and typed outputs, builds the stage with its
declared inputs and runs it through the one cached-stage mechanism (`pipeline.stages.base`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from prefect import task

from pipeline.stages.base import (
    TASK_OPTIONS,
    ModelRef,
    Output,
    Selection,
    Split,
    publish,
    run_stage,
)
from pipeline.stages.data import Data, LoadData
from pipeline.stages.evaluate import Evaluate, Evaluation
from pipeline.stages.plan import Plan
from pipeline.stages.score import Score, Scores
from pipeline.stages.select import Select
from pipeline.stages.train import Train, Trained


class Curated(Output):
    """What a curation produced: splits, scores, selection, the data card and the cache keys it records."""

    model: ModelRef
    data: Data
    scores: Scores
    selection: Selection
    card: str
    cache_keys: dict[str, str]


def load_data(plan: Plan) -> Data:
    return run_stage(LoadData(data=plan.recipe.data, seed=plan.recipe.split_seed), plan.cache_root)


def curate(plan: Plan, run_dir: str) -> Curated:
    """Load, score and select, publish the tables into the run and write the data card."""
    r, root = plan.recipe, plan.cache_root
    model = ModelRef.of(r.model)
    data = load_data(plan)
    scores = run_stage(Score(train=data.train, model=model, score=r.score, seed=r.seed,
                             reference_train=plan.reference_train, validation=data.validation,
                             scorers=plan.scorers), root)
    selection = run_stage(Select(scores=scores, train=data.train, model=model, select=plan.select_dicts(),
                                 seed=r.seed, reference_train=plan.reference_train, max_length=r.score.max_length,
                                 steps=plan.steps), root)
    run = Path(run_dir)
    for name in ("train", "validation", "test"):
        publish(getattr(data, name).path, run / "data" / f"{name}.parquet")
    if data.quarantine:  # records of the user's source that could not be read, with reasons
        publish(data.quarantine, run / "quarantine.parquet")
    publish(scores.path, run / "scores.parquet")
    publish(selection.path, run / "selection.parquet")
    keys = {"data": data.train.fingerprint, "scores": scores.key, "selection": selection.hash, "model": model.key}
    card = data_card(plan, data, scores, selection, run_dir, keys)
    return Curated(model=model, data=data, scores=scores, selection=selection, card=card, cache_keys=keys)


def audit(plan: Plan, run_dir: str) -> dict[str, Any]:
    """Canaries made from the pool's own rows, scored and selected like the pool would be; the audit table
    and its report (results.md, audit.png) written into the run. Nothing here writes a card."""
    from pipeline.reports.audit import write_audit
    from pipeline.stages.audit import AuditScores, InjectCanaries

    r, root = plan.recipe, plan.cache_root
    model = ModelRef.of(r.model)
    data = load_data(plan)
    pool = run_stage(InjectCanaries(train=data.train, audit=r.audit, seed=r.seed), root)
    scores = run_stage(Score(train=pool.pool, model=model, score=r.score, seed=r.seed,
                             reference_train=plan.reference_train, validation=data.validation,
                             scorers=plan.scorers), root)
    selection = run_stage(Select(scores=scores, train=pool.pool, model=model, select=plan.select_dicts(),
                                 seed=r.seed, reference_train=plan.reference_train, max_length=r.score.max_length,
                                 steps=plan.steps), root)
    audited = run_stage(AuditScores(scores=scores, pool=pool, selection=selection, audit=r.audit, seed=r.seed), root)
    table = pl.read_parquet(audited.path, glob=False)
    meta = {"recipe": r.name, "pool": data.train.rows, "canaries": pool.canaries, "share": r.audit.share,
            "scorers": [s.name for s in plan.scorers], "selection": plan.select_dicts(),
            "budget (kept share)": round(audited.budget, 4), "model": r.model, "seed": r.seed}
    paths = write_audit(run_dir, table, meta)
    publish(pool.labels, Path(run_dir) / "canaries.parquet")
    publish(scores.path, Path(run_dir) / "scores.parquet")
    return {"table": table, "paths": paths, "meta": meta}


def train(plan: Plan, train: Split, selection: Selection, model: ModelRef, scores: Scores | None = None) -> Trained:
    """Fine-tune on the kept rows with the plan's loss (and the columns its providers make)."""
    r = plan.recipe
    return run_stage(Train(train=train, selection=selection, model=model, settings=r.train, seed=r.seed,
                           scores=scores, loss=plan.loss, providers=plan.providers), plan.cache_root)


def evaluate(plan: Plan, model: ModelRef, test: Split, label: str) -> Evaluation:
    return run_stage(Evaluate(model=model, test=test, eval=plan.recipe.eval, label=label), plan.cache_root)


def publish_eval(run_dir: str, label: str, ev: Evaluation) -> None:
    """The metrics and per-example table of one evaluation, copied into run_dir/eval/."""
    publish(ev.path, Path(run_dir) / "eval" / f"{label}.json")
    publish(ev.table, Path(run_dir) / "eval" / f"{label}.parquet")


@task(name="data-card", **TASK_OPTIONS)
def data_card(plan: Plan, data: Data, scores: Scores, selection: Selection, run_dir: str,
              cache_keys: dict[str, str]) -> str:
    """Write the data card of the selected subset into `cards_dir` (cheap, so never cached)."""
    from pipeline.reports.cards import write_card

    r = plan.recipe
    score_table = pl.read_parquet(scores.path, glob=False)
    columns = [c for c in score_table.columns if c != "id" and score_table.schema[c].is_numeric()]
    main = next((s.params.get("column") for s in plan.steps if s.params.get("column")), None)
    columns = ([main] if main in columns else []) + [c for c in columns if c != main]
    name = f"{r.name}-{data.train.fingerprint}-{selection.hash[:8]}"
    path = write_card(
        Path(r.cards_dir) / name,
        name=name,
        examples=pl.read_parquet(data.train.path, glob=False),
        scores=score_table,
        selection=pl.read_parquet(selection.path, glob=False),
        source={"dataset": data.dataset, "split": "train", "seed": data.seed,
                "fingerprint": data.train.fingerprint, "rows": data.train.rows,
                **({"read": data.read, "quarantined": data.quarantined} if data.read is not None else {})},
        scorers=[{"name": s.name, "model": r.model, "params": s.params} for s in plan.scorers],
        rules=plan.select_dicts(),
        stages=selection.counts(),
        score_columns=columns[:3],
        run={"run_dir": run_dir, "recipe": r.name, "cache_keys": cache_keys, **_flow_run_id(),
             "config": r.model_dump(mode="json")},
        quarantine=pl.read_parquet(data.quarantine, glob=False) if data.quarantine else None,
    )
    publish(path, Path(run_dir) / "data_card")
    return str(path)


def _flow_run_id() -> dict[str, Any]:
    from prefect.runtime import flow_run

    return {"flow_run_id": str(flow_run.id)} if flow_run.id else {}
