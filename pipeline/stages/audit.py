"""Audit stages: a copy of the pool with labelled canaries, and the table of how well each score finds them.

The canaried pool is its own split (its own fingerprint), so its scores, selection and references live
apart from the real pool's in the cache; canaries never reach a card, a subset or training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.config import AuditSection
from pipeline.core.hashing import fingerprint
from pipeline.core.io import read_json, write_json, write_parquet
from pipeline.stages.base import Output, Selection, Split, Stage
from pipeline.stages.score import Scores


class CanaryPool(Output):
    """The pool with canaries (a split scorers read) and its labels (id, canary kind, the row it came from)."""

    pool: Split
    labels: str
    canaries: int

    def paths(self) -> list[str]:
        return [self.pool.path, self.labels]

    def identity(self) -> str:
        return self.pool.fingerprint


class InjectCanaries(Stage):
    """`audit.share` of the pool's size in canaries of `audit.kinds`, made from the pool's own rows."""

    kind = "canaries"
    layer = "data"
    train: Split
    audit: AuditSection
    seed: int

    def key_inputs(self) -> dict[str, Any]:
        inputs = super().key_inputs()
        inputs["audit"] = {k: inputs["audit"][k] for k in ("share", "kinds")}  # budget and n_boot come later
        return inputs

    def compute(self, folder: Path) -> list[str]:
        from pipeline.data.canaries import CANARY, CANARY_OF, KINDS, inject_canaries

        pool = inject_canaries(pl.read_parquet(self.train.path, glob=False), self.audit.share, self.audit.kinds or KINDS,
                               self.seed)
        write_parquet(folder / "pool.parquet", pool.drop(CANARY, CANARY_OF))
        write_parquet(folder / "labels.parquet", pool.select("id", CANARY, CANARY_OF))
        write_json(folder / "pool.json", {"rows": pool.height, "fingerprint": fingerprint(pool),
                                          "canaries": int(pool.get_column(CANARY).is_not_null().sum())})
        return ["pool.parquet", "labels.parquet", "pool.json"]

    def result(self, folder: Path) -> CanaryPool:
        info = read_json(folder / "pool.json")
        return CanaryPool(pool=Split(path=str(folder / "pool.parquet"), rows=info["rows"],
                                     fingerprint=info["fingerprint"]),
                          labels=str(folder / "labels.parquet"), canaries=info["canaries"])

    def describe(self, out: CanaryPool, reused: bool) -> str:
        return f"audit: {out.canaries} canaries added to {out.pool.rows - out.canaries} rows"


class Audited(Output):
    """The audit table (one row per score column and canary kind) and the budget its recall used."""

    path: str
    budget: float

    def paths(self) -> list[str]:
        return [self.path]


class AuditScores(Stage):
    """AUROC with a bootstrap CI, direction and recall at the budget of every score column per canary kind,
    plus what the recipe's own selection dropped of each kind (`pipeline.evaluation.audit`)."""

    kind = "audit"
    layer = "evaluation"
    scores: Scores
    pool: CanaryPool
    selection: Selection
    audit: AuditSection
    seed: int

    @property
    def budget(self) -> float:
        """`audit.budget`, else the share of the pool the recipe's selection kept."""
        kept = self.selection.kept / max(self.selection.read, 1)
        return self.audit.budget or min(max(kept, 1e-6), 1 - 1e-6)

    def compute(self, folder: Path) -> list[str]:
        from pipeline.evaluation.audit import audit_table

        table = audit_table(pl.read_parquet(self.scores.path, glob=False), pl.read_parquet(self.pool.labels, glob=False), self.budget,
                            self.audit.n_boot, self.seed, pl.read_parquet(self.selection.path, glob=False))
        write_parquet(folder / "audit.parquet", table)
        write_json(folder / "budget.json", {"budget": self.budget})
        return ["audit.parquet", "budget.json"]

    def result(self, folder: Path) -> Audited:
        return Audited(path=str(folder / "audit.parquet"), **read_json(folder / "budget.json"))
