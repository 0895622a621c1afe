"""Clustering-based sensitivity sampling (Axiotis et al., ICML 2024, arXiv 2402.17327).

Cluster the embeddings with faiss k-means, evaluate the loss at ONE real example per cluster (the one
nearest its centroid), give every example the sensitivity `s(e) = loss(center(e)) + lam * ||e - c(e)||^z`,
draw m examples i.i.d. with replacement with p = s / sum(s), and weight each draw by `1 / (m p)`.
An example drawn r times gets weight `r / (m p)`, so `sum_j w_j loss_j` over the distinct sampled rows
is the Horvitz-Thompson estimate of the total loss (unbiased) and `sum_j w_j` estimates N.
How the paper chose `lam` and `k` is UNVERIFIED: both are parameters, and `estimate_lambda` fits
`lam` on a pilot sample.

What training sees: `TokenLossSFTTrainer` multiplies every response token's loss by its example's
weight and divides by the number of response tokens N of the batch (the accumulation window), i.e.
`sum_b w_b sum_t nll_bt / N`. The raw weights average about (pool size) / m, so they would scale
that loss (and the effective learning rate) by about pool/m; the selector therefore rescales the
kept weights to mean 1 by default (`normalize=True`): the relative importance weights, hence the
importance-weighted estimate up to that constant, are unchanged and the loss keeps the token-mean
scale of plain SFT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from pipeline.core.config import DEFAULT_MAX_LENGTH
from pipeline.core.registry import ConfigError
from pipeline.selectors import register_selector
from pipeline.selectors.base import SelectContext, Selector


@dataclass
class Clusters:
    """k-means result: centroids, each point's cluster and squared distance, and each cluster's center example."""

    centroids: np.ndarray  # (k, d) float32
    assign: np.ndarray  # (N,) int64 cluster of each point
    dist2: np.ndarray  # (N,) float32 squared L2 distance to its centroid
    centers: np.ndarray  # (k',) int64 index of the real example nearest each non-empty cluster's centroid
    center_of: np.ndarray  # (k,) int64 position in `centers` of each cluster (-1 when empty)


def _gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def cluster(embeddings: np.ndarray, k: int, seed: int = 0, niter: int = 20, gpu: bool | None = None,
            max_points_per_centroid: int = 256, batch: int = 262_144) -> Clusters:
    """faiss k-means (subsampled to max_points_per_centroid * k points) then a faiss assignment of all points."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    k = int(min(k, n))
    use_gpu = _gpu_available() if gpu is None else bool(gpu and _gpu_available())
    km = faiss.Kmeans(d, k, niter=niter, seed=int(seed) + 1, gpu=use_gpu, verbose=False,
                      max_points_per_centroid=max_points_per_centroid)
    km.train(x)
    index = km.index
    dist2 = np.empty(n, dtype=np.float32)
    assign = np.empty(n, dtype=np.int64)
    for start in range(0, n, batch):  # bounded memory for the (batch, 1) results
        dd, ii = index.search(x[start : start + batch], 1)
        dist2[start : start + batch], assign[start : start + batch] = dd[:, 0], ii[:, 0]
    np.maximum(dist2, 0.0, out=dist2)
    # nearest real example of each cluster: sort by (cluster, distance, index) and take the first of each
    order = np.lexsort((np.arange(n), dist2, assign))
    first = np.ones(n, dtype=bool)
    first[1:] = assign[order][1:] != assign[order][:-1]
    centers = order[first]
    center_of = np.full(k, -1, dtype=np.int64)
    center_of[assign[centers]] = np.arange(centers.size)
    return Clusters(km.centroids.copy(), assign, dist2, centers.astype(np.int64), center_of)


def sensitivities(clusters: Clusters, center_loss: np.ndarray, lam: float, z: float = 2.0) -> np.ndarray:
    """s(e) = loss(center(e)) + lam * ||e - c(e)||^z for every point."""
    center_loss = np.asarray(center_loss, dtype=np.float64)
    if np.any(center_loss < 0) or not np.all(np.isfinite(center_loss)):
        raise ValueError("sensitivity sampling needs finite non-negative losses")
    dist = clusters.dist2.astype(np.float64)
    dist_z = dist if z == 2 else np.power(np.sqrt(dist), z)
    return center_loss[clusters.center_of[clusters.assign]] + float(lam) * dist_z


def _center_losses(loss_fn: Callable[[np.ndarray], Any], clusters: Clusters) -> np.ndarray:
    losses = np.asarray(loss_fn(clusters.centers.copy()), dtype=np.float64).reshape(-1)
    if losses.size != clusters.centers.size:
        raise ValueError(f"loss_fn returned {losses.size} losses for {clusters.centers.size} centers")
    return losses


def draw(clusters: Clusters, center_loss: np.ndarray, m: int, lam: float, z: float = 2,
         seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """m i.i.d. draws with p = s / sum(s): (sorted distinct indices, their draw counts, p of every point)."""
    if m <= 0:
        raise ValueError(f"m must be positive, got {m}")
    s = sensitivities(clusters, center_loss, lam, z)
    total = s.sum()
    p = s / total if total > 0 else np.full(s.size, 1.0 / s.size)
    draws = np.random.default_rng(seed).choice(s.size, size=int(m), replace=True, p=p)
    idx, counts = np.unique(draws, return_counts=True)
    return idx.astype(np.int64), counts.astype(np.int64), p


def sensitivity_sampling(embeddings: np.ndarray, loss_fn: Callable[[np.ndarray], Any], m: int, k: int,
                         lam: float, z: float = 2, seed: int = 0, niter: int = 20,
                         clusters: Clusters | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct sampled indices and their importance weights (multiplicity / (m p)).

    `loss_fn(idx)` is called once, with the indices of the k center examples only.
    """
    clusters = clusters if clusters is not None else cluster(embeddings, k, seed=seed, niter=niter)
    idx, counts, p = draw(clusters, _center_losses(loss_fn, clusters), m, lam, z, seed)
    return idx, counts / (int(m) * p[idx])


def estimate_lambda(embeddings: np.ndarray, loss_fn: Callable[[np.ndarray], Any], k: int, n_pilot: int = 256,
                    z: float = 2, seed: int = 0, niter: int = 20, clusters: Clusters | None = None,
                    center_loss: np.ndarray | None = None) -> float:
    """Least-squares slope through the origin of |loss(e) - loss(c(e))| against ||e - c(e)||^z on a pilot sample.

    The paper's choice is UNVERIFIED; this estimator makes `lam * dist^z` the typical size of the
    loss gap between an example and its cluster center. Calls `loss_fn` for the centers (unless
    `center_loss` is given), then once for the pilot rows.
    """
    clusters = clusters if clusters is not None else cluster(embeddings, k, seed=seed, niter=niter)
    if center_loss is None:
        center_loss = _center_losses(loss_fn, clusters)
    n = clusters.assign.size
    pilot = np.sort(np.random.default_rng(seed).choice(n, size=min(int(n_pilot), n), replace=False))
    pilot_loss = np.asarray(loss_fn(pilot), dtype=np.float64).reshape(-1)
    gap = np.abs(pilot_loss - center_loss[clusters.center_of[clusters.assign[pilot]]])
    dist = clusters.dist2[pilot].astype(np.float64)
    dist_z = dist if z == 2 else np.power(np.sqrt(dist), z)
    denom = float(dist_z @ dist_z)
    return float(gap @ dist_z / denom) if denom > 0 else 0.0


def embedding_matrix(col: pl.Series) -> np.ndarray:
    """(N, d) float32 matrix from a list or array column of equal-length vectors."""
    if col.null_count():
        raise ValueError(f"embedding column {col.name!r} has {col.null_count()} missing vectors")
    flat = col.explode().cast(pl.Float32).to_numpy() if col.len() else np.zeros(0, dtype=np.float32)
    if col.len() and flat.size % col.len():
        raise ValueError(f"embedding column {col.name!r} has vectors of different lengths")
    return np.ascontiguousarray(flat.reshape(col.len(), -1), dtype=np.float32)


def _rows(scores: pl.DataFrame, context: SelectContext | None) -> pl.DataFrame:
    """Rows handed to a context loss function: the examples (joined by id, in score order) or the scores."""
    if context is not None and context.examples is not None:
        ex = context.examples.drop([c for c in context.examples.columns if c != "id" and c in scores.columns])
        return scores.select("id").join(ex, on="id", how="left", maintain_order="left")
    return scores


def model_loss_fn(model_name: str, max_length: int = DEFAULT_MAX_LENGTH) -> Callable[[pl.DataFrame], np.ndarray]:
    """Default loss: the base model's mean response NLL of each row (through the perplexity scorer)."""

    def loss(rows: pl.DataFrame) -> np.ndarray:
        from pipeline.scorers import ScoreContext, get_scorer

        ctx = ScoreContext(model_name=model_name, max_length=max_length, progress=False)
        return get_scorer("perplexity")(rows, ctx).get_column("nll").to_numpy()

    return loss


def _loss_fn(scores: pl.DataFrame, loss_column: str | None, context: SelectContext | None) -> Callable:
    """Index -> losses from the score table's loss column, `context.loss_fn(rows)`, or the context model."""
    if loss_column is not None:
        values = scores.get_column(loss_column).cast(pl.Float64).to_numpy()
        return lambda idx: values[idx]
    row_fn = context.loss_fn if context is not None else None
    if row_fn is None and context is not None and context.model_name:
        row_fn = model_loss_fn(context.model_name, context.max_length)
    if row_fn is None:
        raise ValueError("sensitivity needs a loss column (loss=...), context.loss_fn or context.model_name")
    rows = _rows(scores, context)
    return lambda idx: row_fn(rows[idx])


@register_selector("sensitivity")
class Sensitivity(Selector):
    """Keep the rows drawn by sensitivity sampling with weight multiplicity/(m p); the rest weight 0.

    `lam="auto"` estimates lambda from a pilot sample; `normalize=True` (default) rescales kept weights to
    mean 1, so the trainer's token-mean loss keeps its scale (see the module docstring); `False` keeps the
    raw `r / (m p)` (sum about the pool size: the loss is scaled by about pool / m).
    `loss` names a loss column of the score table; without it the losses come from `ctx.loss_fn(rows)`
    or the base model `ctx.model_name`. Clustering and draws are seeded by `ctx.seed`.
    Extra column `draws`: how many of the m draws landed on the row.
    """

    def __init__(self, m: int, k: int = 64, lam: float | Literal["auto"] = "auto", z: float = 2.0,
                 column: str = "embedding", loss: str | None = None, n_pilot: int = 256, niter: int = 20,
                 normalize: bool = True):
        if m <= 0:
            raise ConfigError("m", f"must be positive, got {m}")
        self.m, self.k, self.lam, self.z, self.column, self.loss = m, k, lam, z, column, loss
        self.n_pilot, self.niter, self.normalize = n_pilot, niter, normalize

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        m, k, z, seed = self.m, self.k, self.z, ctx.seed
        emb = embedding_matrix(scores.get_column(self.column))
        fn = _loss_fn(scores, self.loss, ctx)
        clusters = cluster(emb, k, seed=seed, niter=self.niter)
        center_loss = _center_losses(fn, clusters)
        lam = self.lam
        if lam == "auto":
            lam = estimate_lambda(emb, fn, k, n_pilot=self.n_pilot, z=z, seed=seed, clusters=clusters,
                                  center_loss=center_loss)
        idx, counts, p = draw(clusters, center_loss, m, float(lam), z, seed)
        w = np.zeros(p.size)
        w[idx] = counts / (int(m) * p[idx])
        if self.normalize and idx.size:
            w[idx] *= idx.size / w[idx].sum()
        draws = np.zeros(p.size, dtype=np.int64)
        draws[idx] = counts
        return _selection(scores, w, draws, m, float(lam), k)


def _selection(scores: pl.DataFrame, w: np.ndarray, draws: np.ndarray, m: int, lam: float, k: int) -> pl.DataFrame:
    """Selection rows: drawn rows kept with their weight and draw count, the rest dropped with weight 0."""
    kept = draws > 0
    rule = f"sensitivity m={m} k={k} lam={lam:.4g}"
    return scores.select("id").with_columns(
        pl.Series("kept", kept),
        pl.Series("weight", w),
        pl.when(pl.Series(kept)).then(pl.lit(f"kept: {rule}; weight=") + pl.Series(w).round(4).cast(pl.String))
        .otherwise(pl.lit(f"dropped: {rule}; not drawn")).alias("reason"),
        pl.Series("draws", draws),
    )
