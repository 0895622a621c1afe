"""Information gain filtration, IGF (Antonello et al., arXiv 2010.00050).

For a random sample of examples, `IG(X) = L_obj(theta) - L_obj(theta'_X)`, theta'_X being the
model after ONE optimizer step on X alone and L_obj the mean response NLL (or perplexity, as in
the reference code: `measure="ppl"`) on a fixed objective set. The model is restored from a saved
copy of its parameters after every step (the reference code deep-copies the model per example).
Measured IG is z-scored over the sample; a scikit-learn regressor on sentence embeddings (the
paper's "secondary learner", there a small conv net) is fit on (embedding, z) and predicts IG for
all examples. Its held-out R^2 and Spearman correlation go into the table's metadata.

Defaults (sample_size, objective_size, SGD with lr 1e-3) are UNVERIFIED choices for small models.
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
    value = float(tokens.mean())
    return float(np.exp(value)) if measure == "ppl" else value


def one_step(model, enc: dict, lr: float, optimizer: str) -> None:
    """One optimizer step on one example's response tokens (fresh optimizer state)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    dev = params[0].device
    ids = torch.tensor([enc["input_ids"]], device=dev)
    labels = ids.masked_fill(torch.tensor([enc["completion_mask"]], device=dev) == 0, -100)
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=labels, fused_lm_head=True).loss.backward()
    opt.step()
    model.zero_grad(set_to_none=True)


def measure_ig(model, encoded: list[dict], objective: list[dict], lr: float, optimizer: str, measure: str,
               max_tokens: int, pad_id: int) -> tuple[np.ndarray, float]:
    """Raw IG of each encoded example and the objective loss before any step; the model ends unchanged."""
    ensure_fused_head(model)
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    before = objective_loss(model, objective, max_tokens, pad_id, measure)
    gains = []
    for enc in encoded:
        one_step(model, enc, lr, optimizer)
        gains.append(before - objective_loss(model, objective, max_tokens, pad_id, measure))
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    return np.asarray(gains, dtype=np.float64), before


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std, zeros when std is 0."""
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


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


def _objective_rows(examples: pl.DataFrame, objective: str | Path | None, objective_size: int,
                    rng: np.random.Generator) -> tuple[pl.DataFrame, np.ndarray]:
    """The objective set (a given parquet/JSONL file, or a seeded sample of the candidates) and the rest's indices."""
    if objective is not None:
        path = Path(objective)
        table = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)
        return table, np.arange(examples.height)
    n_obj = min(objective_size, max(examples.height - 2, 1))
    perm = rng.permutation(examples.height)
    return examples[np.sort(perm[:n_obj]).tolist()], np.sort(perm[n_obj:])


@register_scorer("information_gain")
class InformationGain(Scorer):
    """Columns: id, information_gain (z; measured where sampled, else predicted), ig_measured, ig_raw,
    ig_predicted, ig_sampled. Metadata: learner R^2/Spearman on held-out sampled examples, objective loss."""

    version = "1"
    shardable = False
    model_params = ("embedder",)

    def __init__(self, sample_size: int = 64, objective_size: int = 16, objective: str | Path | None = None,
                 lr: float = 1e-3, optimizer: Literal["sgd", "adamw"] = "sgd",
                 measure: Literal["nll", "ppl"] = "nll", learner: Literal["ridge", "gbr"] = "ridge",
                 holdout: float = 0.25, embedder: str = DEFAULT_EMBEDDER,
                 field: Literal["both", "prompt", "response"] = "both"):
        if optimizer not in ("sgd", "adamw") or measure not in ("nll", "ppl"):
            raise ValueError("optimizer must be sgd|adamw and measure nll|ppl")
        self.sample_size, self.objective_size, self.objective = sample_size, objective_size, objective
        self.lr, self.optimizer, self.measure, self.learner = lr, optimizer, measure, learner
        self.holdout, self.embedder, self.field = holdout, embedder, field

    def columns(self) -> list[str]:
        return ["information_gain", "ig_measured", "ig_raw", "ig_predicted", "ig_sampled"]

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> tuple[pl.DataFrame, dict]:
        """Measured IG on a seeded sample, z-scored, and a learner's prediction of it for every example."""
        rng = np.random.default_rng(ctx.seed)
        tok = ctx.tokenizer()
        pad_id = tok.pad_token_id or 0
        obj_table, pool = _objective_rows(examples, self.objective, self.objective_size, rng)
        sampled = np.sort(rng.choice(pool, size=min(self.sample_size, pool.size), replace=False))
        objective_enc = encode_examples(tok, obj_table, ctx.max_length)
        sample_enc = encode_examples(tok, examples[sampled.tolist()], ctx.max_length)

        model = load_model(ctx.model_name, dtype=torch.float32)  # own fp32 copy: the step must not hit bf16 rounding
        torch.manual_seed(ctx.seed)
        raw, before = measure_ig(model, sample_enc, objective_enc, self.lr, self.optimizer, self.measure,
                                 ctx.max_tokens, pad_id)
        del model
        z = zscore(raw)

        x = embed_texts(example_texts(examples, self.field), *ctx.embedder(self.embedder))
        fitted, stats = fit_learner(x[sampled], z, self.learner, self.holdout, ctx.seed)
        predicted = fitted.predict(x).astype(np.float64)

        n = examples.height
        measured = np.full(n, np.nan)
        raw_all = np.full(n, np.nan)
        measured[sampled], raw_all[sampled] = z, raw
        is_sampled = np.zeros(n, dtype=bool)
        is_sampled[sampled] = True
        table = pl.DataFrame({
            "id": examples.get_column("id"),
            "information_gain": np.where(is_sampled, measured, predicted),
            "ig_measured": measured,
            "ig_raw": raw_all,
            "ig_predicted": predicted,
            "ig_sampled": is_sampled,
        }).with_columns(pl.col("ig_measured", "ig_raw").fill_nan(None))
        meta = {
            "information_gain": {
                **stats,
                "n_sampled": int(sampled.size),
                "objective_ids": obj_table.get_column("id").to_list(),
                "objective_loss_before": before,
                "measure": self.measure,
                "ig_raw_mean": float(raw.mean()) if raw.size else None,
                "ig_raw_std": float(raw.std()) if raw.size else None,
            }
        }
        return table, meta
