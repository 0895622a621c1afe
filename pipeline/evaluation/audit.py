"""Which score catches which defect: AUROC of every score column against labelled canaries, with CIs.

For each numeric score column and each canary kind, the canaries of that kind are the positives and
the user's own rows the negatives. `auroc` is the area under the ROC curve of the column oriented
the way it separates best (`direction`: `high` when high values flag the defect, `low` when low
values do), so 0.5 is chance and 1.0 a perfect split; `lo`/`hi` a stratified bootstrap percentile
interval (positives and negatives resampled separately, the orientation fixed by the point estimate).
`recall_at_budget` is the share of that kind's canaries among the rows the column would drop at the
selection's budget (the pool's `1 - budget` most flagged rows, all canary kinds present), so it is the
best this column can do at that budget in its best direction; the `selection` rows give what the
recipe's own selection actually dropped of each kind.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

AUDIT_SCHEMA: dict[str, pl.DataType] = {
    "column": pl.String, "kind": pl.String, "auroc": pl.Float64, "lo": pl.Float64, "hi": pl.Float64,
    "direction": pl.String, "recall_at_budget": pl.Float64, "n": pl.Int64, "n_clean": pl.Int64,
}
SELECTION_ROW = "selection"  # the `column` of rows that report the recipe's own selection


def score_columns(scores: pl.DataFrame) -> list[str]:
    """The numeric, per-example columns of a score table (lists, strings and `id` are not scores)."""
    return [c for c, t in scores.schema.items() if c != "id" and t.is_numeric()]


def oriented_auroc(y: np.ndarray, x: np.ndarray) -> tuple[float, str]:
    """(AUROC in the better direction, `high` | `low`): `high` when high values of x flag y = 1."""
    auc = float(roc_auc_score(y, x))
    return (auc, "high") if auc >= 0.5 else (1.0 - auc, "low")


def rank_auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of positives vs negatives along the last axis (Mann-Whitney U with average ranks for ties):
    the vectorized form the bootstrap needs (one row per resample)."""
    both = np.concatenate([pos, neg], axis=-1)
    ranks = rankdata(both, axis=-1)
    n_pos, n_neg = pos.shape[-1], neg.shape[-1]
    return (ranks[..., :n_pos].sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auroc(y: np.ndarray, x: np.ndarray, direction: str, n_boot: int, seed: int,
                    level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the AUROC (in `direction`) over stratified bootstrap resamples."""
    rng = np.random.default_rng(seed)
    sign = 1.0 if direction == "high" else -1.0
    pos, neg = sign * x[y == 1], sign * x[y == 0]
    values = rank_auroc(pos[rng.integers(0, pos.size, (n_boot, pos.size))],
                        neg[rng.integers(0, neg.size, (n_boot, neg.size))])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def recall_at_budget(x: np.ndarray, kind_mask: np.ndarray, direction: str, budget: float) -> float:
    """Share of the rows in `kind_mask` among the `1 - budget` share of the pool most flagged by x."""
    n_drop = int(round((1 - budget) * x.size))
    order = np.argsort(-x if direction == "high" else x, kind="stable")
    dropped = np.zeros(x.size, dtype=bool)
    dropped[order[:n_drop]] = True
    return float((dropped & kind_mask).sum() / max(kind_mask.sum(), 1))


def audit_table(scores: pl.DataFrame, labels: pl.DataFrame, budget: float, n_boot: int = 1000, seed: int = 0,
                selection: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (score column, canary kind) with AUROC, its CI, direction and recall at `budget`.

    `labels`: id and `canary` (the kind, null for the user's rows). `selection` (id, kept), when given,
    adds one `selection` row per kind: the share of that kind the recipe's selection dropped.
    """
    if not 0 < budget < 1:
        raise ValueError(f"audit budget must be in (0, 1), got {budget}")
    table = scores.join(labels.select("id", "canary"), on="id", how="inner", maintain_order="left")
    kinds = sorted(table.get_column("canary").drop_nulls().unique().to_list())
    clean = table.get_column("canary").is_null().to_numpy()
    rows = []
    for column in score_columns(scores):
        values = table.get_column(column).cast(pl.Float64).to_numpy()
        finite = np.isfinite(values)
        for kind in kinds:
            is_kind = (table.get_column("canary") == kind).fill_null(False).to_numpy()
            use = finite & (clean | is_kind)
            y, x = is_kind[use].astype(int), values[use]
            row = {"column": column, "kind": kind, "n": int(y.sum()), "n_clean": int((y == 0).sum())}
            if y.sum() == 0 or (y == 0).sum() == 0 or np.unique(x).size < 2:
                rows.append({**row, "auroc": None, "lo": None, "hi": None, "direction": None,
                             "recall_at_budget": None})
                continue
            auc, direction = oriented_auroc(y, x)
            lo, hi = bootstrap_auroc(y, x, direction, n_boot, seed)
            pool = np.where(finite, values, -np.inf if direction == "high" else np.inf)
            rows.append({**row, "auroc": auc, "lo": lo, "hi": hi, "direction": direction,
                         "recall_at_budget": recall_at_budget(pool, is_kind, direction, budget)})
    if selection is not None:
        sel = table.select("id", "canary").join(selection.select("id", "kept"), on="id", how="left")
        for kind in kinds:
            part = sel.filter(pl.col("canary") == kind)
            dropped = int((~part.get_column("kept").fill_null(True)).sum())
            rows.append({"column": SELECTION_ROW, "kind": kind, "n": part.height, "n_clean": int(clean.sum()),
                         "auroc": None, "lo": None, "hi": None, "direction": None,
                         "recall_at_budget": dropped / max(part.height, 1)})
    return pl.DataFrame(rows, schema=AUDIT_SCHEMA)
