"""Information gain filtration, IGF (Antonello et al., arXiv 1905.12621 / 2010.00050).

For a random sample of examples, `IG(X) = L_obj(theta) - L_obj(theta'_X)`, theta'_X being the
model after ONE optimizer step on X alone and L_obj the perplexity (`measure="ppl"`, as the
reference code `igf.py` does; `"nll"` gives the mean response NLL) on a fixed objective set. The
model is restored from a saved copy of its parameters after every step (the reference code
deep-copies the model per example). Measured IG is z-scored over the sample; a scikit-learn
regressor on sentence embeddings (the paper's "secondary learner", there a small conv net) is fit
on (embedding, z) and predicts IG.

`information_gain` is that prediction for EVERY row, the sampled ones included: mixing measured
z-scores (std 1) with the learner's shrunken predictions made any top-k favour the sample. The
sampled rows' predictions are cross-fitted (each from a learner that never saw the row), else an
over-fitting learner would hand them back their own measured values and the bias would remain.
The measured values stay as audit columns (`ig_measured`, `ig_raw`).

Defaults follow `igf.py`: AdamW at lr 5e-5 (fresh state per step), gradient norm clipped at 3.0,
perplexity, 100 objective contexts (capped to what the candidates allow; the reason is in the
metadata). `sample_size` 64 and the ridge learner are UNVERIFIED small-scale choices (the
reference measures thousands of contexts and trains a conv net).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from pipeline.models.assets import DEFAULT_EMBEDDER
from pipeline.models.embedder import embed_texts
from pipeline.models.engine import ensure_fused_head, response_mask, token_nll
from pipeline.models.loading import encode_examples, load_model
from pipeline.scorers import register_scorer
from pipeline.scorers.base import ScoreContext, Scorer
from pipeline.scorers.embedding import example_texts


def objective_loss(model, objective: list[dict], max_tokens: int, pad_id: int, measure: str = "nll") -> float:
    """Token-weighted mean response NLL on the objective set (or its exp with measure='ppl')."""
    nlls = token_nll(model, objective, max_tokens=max_tokens, pad_id=pad_id, progress=False)
    tokens = np.concatenate([n[response_mask(e)] for n, e in zip(nlls, objective, strict=True)])
    value = float(tokens.astype(np.float64).mean())
    return float(np.exp(value)) if measure == "ppl" else value


def one_step(model, enc: dict, lr: float, optimizer: str, max_grad_norm: float | None = 3.0) -> None:
    """One optimizer step on one example's response tokens (fresh optimizer state).

    The gradient's global norm is clipped to `max_grad_norm` first (`igf.py` clips at 3.0; None
    skips it). With SGD that bounds the step at `lr * max_grad_norm`; a fresh AdamW state's first
    step is about `lr * sign(g)` whatever the gradient's scale, so there clipping changes little.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    dev = params[0].device
    ids = torch.tensor([enc["input_ids"]], device=dev)
    labels = ids.masked_fill(torch.tensor([enc["completion_mask"]], device=dev) == 0, -100)
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=labels, fused_lm_head=True).loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    model.zero_grad(set_to_none=True)


def measure_ig(model, encoded: list[dict], objective: list[dict], lr: float, optimizer: str, measure: str,
               max_tokens: int, pad_id: int, max_grad_norm: float | None = 3.0) -> tuple[np.ndarray, float]:
    """Raw IG of each encoded example and the objective loss before any step; the model ends unchanged."""
    ensure_fused_head(model)
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    before = objective_loss(model, objective, max_tokens, pad_id, measure)
    gains = []
    for enc in encoded:
        one_step(model, enc, lr, optimizer, max_grad_norm)
        gains.append(before - objective_loss(model, objective, max_tokens, pad_id, measure))
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    return np.asarray(gains, dtype=np.float64), before


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std, zeros when std is 0 up to rounding (equal values can give std ~1e-17, not 0)."""
    if x.size == 0:
        return np.zeros_like(x)
    std = x.std()
    return (x - x.mean()) / std if std > 1e-12 * max(1.0, float(np.abs(x).max())) else np.zeros_like(x)


def make_learner(name: str, seed: int):
    """The secondary learner: ridge regression (default) or gradient boosting."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge

    if name == "ridge":
        return Ridge(alpha=1.0)
    if name == "gbr":
        return GradientBoostingRegressor(random_state=seed)
    raise ValueError(f"learner must be 'ridge' or 'gbr', got {name!r}")


def fit_learner(x: np.ndarray, y: np.ndarray, name: str, holdout: float, seed: int) -> tuple[Any, dict]:
    """Held-out R^2 and Spearman on a split of the sample, then the learner refit on the whole sample."""
    from scipy.stats import spearmanr
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_hold = int(round(holdout * len(y)))
    stats: dict[str, Any] = {"learner": name, "n_train": len(y) - n_hold, "n_heldout": n_hold}
    if n_hold >= 3 and len(y) - n_hold >= 2:
        hold, fit = order[:n_hold], order[n_hold:]
        pred = make_learner(name, seed).fit(x[fit], y[fit]).predict(x[hold])
        stats["r2_heldout"] = float(r2_score(y[hold], pred))
        rho = spearmanr(y[hold], pred).statistic
        stats["spearman_heldout"] = None if np.isnan(rho) else float(rho)
    else:
        stats["r2_heldout"] = stats["spearman_heldout"] = None
    return make_learner(name, seed).fit(x, y), stats


def crossfit_predict(x: np.ndarray, y: np.ndarray, name: str, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold predictions for the sampled rows: row i predicted by a learner fit without it.

    An in-sample prediction of a flexible learner (ridge on a 384-d embedding with 64 rows fits
    almost exactly) is close to the row's own measured z-score, so it keeps the spread the
    unsampled rows' predictions lack; out-of-fold predictions come from the same kind of learner
    as theirs. Fewer than 2 rows per fold: the mean of the others (leave-one-out of a constant).
    """
    n = len(y)
    k = min(int(folds), n)
    if k < 2:
        return np.zeros(n)
    out = np.empty(n)
    parts = np.array_split(np.random.default_rng(seed + 1).permutation(n), k)
    for part in parts:
        rest = np.setdiff1d(np.arange(n), part)
        if rest.size < 2:
            out[part] = y[rest].mean() if rest.size else 0.0
        else:
            out[part] = make_learner(name, seed).fit(x[rest], y[rest]).predict(x[part])
    return out


def ig_columns(ids: pl.Series, x: np.ndarray, sampled: np.ndarray, raw: np.ndarray, learner: str, holdout: float,
               folds: int, seed: int) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The score table from embeddings `x` (every row), the sampled row indices and their raw IG.

    `information_gain` = `ig_predicted` for every row: the learner refit on the whole sample for
    the unsampled rows, the cross-fitted prediction (`crossfit_predict`) for the sampled ones, so
    a top-k is not tilted toward the sample. `ig_measured` (z) and `ig_raw` are audit columns.
    """
    z = zscore(raw)
    fitted, stats = fit_learner(x[sampled], z, learner, holdout, seed)
    predicted = fitted.predict(x).astype(np.float64)
    if sampled.size:
        predicted[sampled] = crossfit_predict(x[sampled], z, learner, folds, seed)
    n = len(ids)
    measured = np.full(n, np.nan)
    raw_all = np.full(n, np.nan)
    measured[sampled], raw_all[sampled] = z, raw
    is_sampled = np.zeros(n, dtype=bool)
    is_sampled[sampled] = True
    table = pl.DataFrame({
        "id": ids,
        "information_gain": predicted,
        "ig_measured": measured,
        "ig_raw": raw_all,
        "ig_predicted": predicted,
        "ig_sampled": is_sampled,
    }).with_columns(pl.col("ig_measured", "ig_raw").fill_nan(None))
    stats["crossfit_folds"] = min(int(folds), int(sampled.size))
    rest = predicted[~is_sampled]
    stats["predicted_std_sampled"] = float(predicted[is_sampled].std()) if sampled.size else None
    stats["predicted_std_unsampled"] = float(rest.std()) if rest.size else None
    return table, stats


def objective_count(n_rows: int, objective_size: int, sample_size: int) -> tuple[int, str | None]:
    """How many candidates become the objective set, and why it is fewer than asked (None if not).

    The objective rows are taken out of the candidates, so at least `min(sample_size, n_rows // 2)`
    rows (and 2) stay for the IG sample; `igf.py` uses 100 objective contexts.
    """
    reserve = max(2, min(int(sample_size), n_rows // 2))
    n_obj = max(1, min(int(objective_size), n_rows - reserve))
    if n_obj >= objective_size:
        return n_obj, None
    return n_obj, (f"objective_size {objective_size} capped to {n_obj}: {n_rows} candidates, "
                   f"{n_rows - n_obj} kept for the IG sample (sample_size {sample_size})")


def _objective_rows(examples: pl.DataFrame, objective: str | Path | None, n_obj: int,
                    rng: np.random.Generator) -> tuple[pl.DataFrame, np.ndarray]:
    """The objective set (a given parquet/JSONL file, or a seeded sample of n_obj candidates) and the rest's indices."""
    if objective is not None:
        path = Path(objective)
        table = pl.read_parquet(path, glob=False) if path.suffix == ".parquet" else pl.read_ndjson(path)
        return table, np.arange(examples.height)
    perm = rng.permutation(examples.height)
    return examples[np.sort(perm[:n_obj]).tolist()], np.sort(perm[n_obj:])


@register_scorer("information_gain")
class InformationGain(Scorer):
    """Columns: id, information_gain (the learner's prediction of the z-scored IG, for every row),
    ig_measured, ig_raw (audit: the sampled rows' measured values), ig_predicted (= information_gain),
    ig_sampled. Metadata: learner R^2/Spearman on held-out sampled examples, objective loss and size."""

    version = "2"  # 1: measured z where sampled; SGD 1e-3, NLL, 16 objective rows, no clipping
    shardable = False
    model_params = ("embedder",)

    def __init__(self, sample_size: int = 64, objective_size: int = 100, objective: str | Path | None = None,
                 lr: float = 5e-5, optimizer: Literal["sgd", "adamw"] = "adamw",
                 measure: Literal["nll", "ppl"] = "ppl", max_grad_norm: float | None = 3.0,
                 learner: Literal["ridge", "gbr"] = "ridge", holdout: float = 0.25, folds: int = 5,
                 embedder: str = DEFAULT_EMBEDDER, field: Literal["both", "prompt", "response"] = "both"):
        if optimizer not in ("sgd", "adamw") or measure not in ("nll", "ppl"):
            raise ValueError("optimizer must be sgd|adamw and measure nll|ppl")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        self.sample_size, self.objective_size, self.objective = sample_size, objective_size, objective
        self.lr, self.optimizer, self.measure, self.max_grad_norm = lr, optimizer, measure, max_grad_norm
        self.learner, self.holdout, self.folds = learner, holdout, folds
        self.embedder, self.field = embedder, field

    def columns(self) -> list[str]:
        return ["information_gain", "ig_measured", "ig_raw", "ig_predicted", "ig_sampled"]

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> tuple[pl.DataFrame, dict]:
        """Measured IG on a seeded sample, z-scored, and a learner's prediction of it for every example."""
        rng = np.random.default_rng(ctx.seed)
        tok = ctx.tokenizer()
        pad_id = tok.pad_token_id or 0
        n_obj, capped = objective_count(examples.height, self.objective_size, self.sample_size)
        obj_table, pool = _objective_rows(examples, self.objective, n_obj, rng)
        sampled = np.sort(rng.choice(pool, size=min(self.sample_size, pool.size), replace=False))
        objective_enc = encode_examples(tok, obj_table, ctx.max_length)
        sample_enc = encode_examples(tok, examples[sampled.tolist()], ctx.max_length)

        model = load_model(ctx.model_name, dtype=torch.float32)  # own fp32 copy: the step must not hit bf16 rounding
        torch.manual_seed(ctx.seed)
        raw, before = measure_ig(model, sample_enc, objective_enc, self.lr, self.optimizer, self.measure,
                                 ctx.max_tokens, pad_id, self.max_grad_norm)
        del model

        x = embed_texts(example_texts(examples, self.field), *ctx.embedder(self.embedder))
        table, stats = ig_columns(examples.get_column("id"), x, sampled, raw, self.learner, self.holdout,
                                  self.folds, ctx.seed)
        meta = {
            "information_gain": {
                **stats,
                "n_sampled": int(sampled.size),
                "objective_ids": obj_table.get_column("id").to_list(),
                "objective_size": obj_table.height,
                "objective_size_requested": None if self.objective is not None else self.objective_size,
                "objective_capped": None if self.objective is not None else capped,
                "objective_loss_before": before,
                "measure": self.measure,
                "optimizer": self.optimizer,
                "lr": self.lr,
                "max_grad_norm": self.max_grad_norm,
                "ig_raw_mean": float(raw.mean()) if raw.size else None,
                "ig_raw_std": float(raw.std()) if raw.size else None,
            }
        }
        return table, meta
