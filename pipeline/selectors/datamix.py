"""Data-mix optimization (Li, Liu, Xing, ICML 2025, arXiv 2508.11953).

Per-domain validation loss under a budget of N0 examples with mixture weights w:
`L_i(w) = C_i * (w_i N0 + k_i ((1 - w_i) N0)^alpha_i)^(-beta_i) + E_i` (the other domains' data is
pooled into an effective amount). The 5 parameters per domain are fitted from small proxy runs
(equal mix, then one domain at a time at n/3, n/2, 2n, 3n examples, renormalized) with a Huber
trust-region fit from several starts; the mix minimizing `sum_i L_i(w)` on the simplex is found with
SLSQP under a floor so no domain goes to zero; a mixture with exact per-domain counts is sampled.
N0 is measured in examples and rescaled internally by the median proxy budget (`scale`).

Each proxy trains ONE epoch over exactly its N0 examples (steps proportional to N0): the fit's N0
dependence is only meaningful if a proxy's data is its mixture; a fixed step count (formerly 20
steps, ~160 examples whatever N0) makes it noise. The validation rows that measure the proxies are
never selected: they are dropped with a reason naming their role and the budget comes from the rest.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.optimize import least_squares, minimize

from pipeline.core.config import DEFAULT_MAX_LENGTH
from pipeline.core.hashing import config_hash, fingerprint
from pipeline.selectors import register_selector
from pipeline.selectors.base import SelectContext, Selector

PARAMS = ("C", "k", "alpha", "beta", "E")
FACTORS = (1 / 3, 1 / 2, 2.0, 3.0)


def loss_model(w: np.ndarray | float, n0: np.ndarray | float, p: Sequence[float]) -> np.ndarray:
    """L(w, N0) for one domain with parameters (C, k, alpha, beta, E) in scaled units."""
    c, k, alpha, beta, e = p
    w, n0 = np.asarray(w, dtype=np.float64), np.asarray(n0, dtype=np.float64)
    eff = w * n0 + k * np.power(np.clip((1.0 - w) * n0, 0.0, None), alpha)
    return c * np.power(np.maximum(eff, 1e-12), -beta) + e


def _jacobian(w: np.ndarray, n0: np.ndarray, p: Sequence[float]) -> np.ndarray:
    """d L / d (C, k, alpha, beta, E): analytic, so the multi-start fit stays fast."""
    c, k, alpha, beta, _ = p
    u = np.clip((1.0 - w) * n0, 0.0, None)
    u_a = np.power(u, alpha)
    log_u = np.log(np.where(u > 0, u, 1.0))
    eff = np.maximum(w * n0 + k * u_a, 1e-12)
    pw = np.power(eff, -beta)
    d_eff = -beta * c * pw / eff
    return np.column_stack([pw, d_eff * u_a, d_eff * k * u_a * log_u, -c * pw * np.log(eff), np.ones_like(w)])


def proxy_plan(domains: Sequence[str], n: int, factors: Sequence[float] = FACTORS) -> list[dict[str, Any]]:
    """Proxy mixtures: equal mix of n per domain, then each domain at n*f (f in factors) with the rest at n."""
    domains = list(domains)
    plan = []
    for name, amounts in [("equal", dict.fromkeys(domains, int(n)))] + [
        (f"{d}x{f:.3g}", {**dict.fromkeys(domains, int(n)), d: max(1, round(n * f))}) for d in domains for f in factors
    ]:
        total = sum(amounts.values())
        plan.append({"name": name, "amounts": amounts, "N0": total, "weights": {d: a / total for d, a in amounts.items()}})
    return plan


def _fit_one(w: np.ndarray, n0: np.ndarray, y: np.ndarray, starts: int, f_scale: float, seed: int) -> np.ndarray:
    """Best of several Huber/TRF least-squares fits of the 5 parameters of one domain."""
    e_hi = max(float(y.min()), 1e-6)
    lo = np.array([1e-6, 1e-6, 0.01, 0.01, 0.0])
    hi = np.array([1e4, 10.0, 2.0, 3.0, e_hi])
    rng = np.random.default_rng(seed)
    spread = max(float(y.max() - y.min()), 1e-3)
    inits = [np.array([spread, 0.3, 0.5, 0.5, 0.5 * e_hi])]
    for _ in range(max(0, starts - 1)):
        inits.append(np.array([10 ** rng.uniform(-2, 2), 10 ** rng.uniform(-3, 0.5), rng.uniform(0.1, 1.2),
                               rng.uniform(0.05, 1.5), rng.uniform(0.0, 0.95) * e_hi]))
    best, best_cost = inits[0], np.inf
    for x0 in inits:
        x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
        res = least_squares(lambda p: loss_model(w, n0, p) - y, x0, jac=lambda p: _jacobian(w, n0, p),
                            bounds=(lo, hi), loss="huber",
                            f_scale=f_scale, method="trf", max_nfev=300)
        if res.cost < best_cost:
            best, best_cost = res.x, res.cost
    return best


def fit_domain_curves(results: Sequence[dict[str, Any]], starts: int = 8, f_scale: float = 0.01,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Fit (C, k, alpha, beta, E) per domain from proxy results `{"weights", "N0", "losses"}`."""
    domains = sorted(results[0]["losses"])
    scale = float(np.median([r["N0"] for r in results]))
    n0 = np.array([r["N0"] for r in results], dtype=np.float64) / scale
    params = {}
    for i, d in enumerate(domains):
        w = np.array([r["weights"][d] for r in results], dtype=np.float64)
        y = np.array([r["losses"][d] for r in results], dtype=np.float64)
        p = _fit_one(w, n0, y, starts, f_scale, seed + i)
        params[d] = {**dict(zip(PARAMS, map(float, p), strict=True)), "scale": scale}
    return params


def predict(params: dict[str, dict[str, float]], weights: dict[str, float], n0: float) -> dict[str, float]:
    """Predicted per-domain loss of a mixture at budget n0 (examples)."""
    return {d: float(loss_model(weights[d], n0 / p["scale"], [p[k] for k in PARAMS])) for d, p in params.items()}


def optimize_mix(params: dict[str, dict[str, float]], n0: float, floor: float = 0.01) -> dict[str, float]:
    """Weights minimizing sum_i L_i(w) at budget n0 on the simplex, every weight >= floor (SLSQP, several starts)."""
    domains = sorted(params)
    d = len(domains)
    if floor * d > 1:
        raise ValueError(f"floor {floor} is infeasible for {d} domains")
    ps = [[params[x][k] for k in PARAMS] for x in domains]
    n_scaled = [n0 / params[x]["scale"] for x in domains]

    def total(w: np.ndarray) -> float:
        return float(sum(loss_model(w[i], n_scaled[i], ps[i]) for i in range(d)))

    starts = [np.full(d, 1.0 / d)] + [np.full(d, floor) + (1 - d * floor) * np.eye(d)[i] * 0.5 + (1 - d * floor) * 0.5 / d
                                      for i in range(d)]
    cons = [{"type": "eq", "fun": lambda w: float(w.sum() - 1.0)}]
    best, best_val = starts[0], total(starts[0])
    for x0 in starts:
        res = minimize(total, x0, method="SLSQP", bounds=[(floor, 1.0)] * d, constraints=cons,
                       options={"ftol": 1e-12, "maxiter": 500})
        w = np.clip(res.x, floor, 1.0)
        w = w / w.sum()
        if total(w) < best_val - 1e-12:
            best, best_val = w, total(w)
    return dict(zip(domains, map(float, best), strict=True))


def mixture_counts(weights: dict[str, float], budget: int, available: dict[str, int]) -> dict[str, int]:
    """Exact per-domain counts summing to `budget` (largest remainder), capped by what each domain has."""
    budget = int(min(budget, sum(available.values())))
    counts = dict.fromkeys(weights, 0)
    left = budget
    open_ = [d for d in sorted(weights) if available.get(d, 0) > 0]
    while left > 0 and open_:
        wsum = sum(weights[d] for d in open_) or 1.0
        raw = {d: left * weights[d] / wsum for d in open_}
        add = {d: int(np.floor(raw[d])) for d in open_}
        rest = left - sum(add.values())
        for d in sorted(open_, key=lambda d: (-(raw[d] - add[d]), d))[:rest]:
            add[d] += 1
        for d in open_:
            take = min(add[d], available[d] - counts[d])
            counts[d] += take
            left -= take
        open_ = [d for d in open_ if counts[d] < available[d]]
    return counts


def sample_mix(examples: pl.DataFrame, weights: dict[str, float], budget: int, seed: int = 0) -> pl.DataFrame:
    """Selection over `examples`: a seeded uniform sample with the exact per-domain counts."""
    available = dict(examples.group_by("domain").len().iter_rows())
    counts = mixture_counts({d: weights.get(d, 0.0) for d in available}, budget, available)
    key = np.random.default_rng(seed).random(examples.height)
    rank = pl.struct(pl.col("_key"), pl.col("id")).rank("ordinal").over("domain") - 1
    quota = pl.col("domain").replace_strict(counts, return_dtype=pl.Int64)
    target = pl.col("domain").replace_strict({d: weights.get(d, 0.0) for d in available}, return_dtype=pl.Float64)
    reason = pl.lit("datamix domain=") + pl.col("domain") + pl.lit(" w=") + target.round(4).cast(pl.String) \
        + pl.lit(" count=") + quota.cast(pl.String)
    return examples.with_columns(pl.Series("_key", key)).select(
        "id",
        (rank < quota).alias("kept"),
        pl.lit(1.0).alias("weight"),
        pl.when(rank < quota).then(pl.lit("kept: ") + reason).otherwise(pl.lit("dropped: ") + reason + pl.lit("; quota filled"))
        .alias("reason"),
    )


def plot_curves(params: dict[str, dict[str, float]], results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """PNG: per domain, observed proxy losses vs w_i, the fit's predictions, and the curve at the median budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted(params)
    fig, axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.2), squeeze=False)
    grid = np.linspace(0.01, 0.99, 200)
    for ax, d in zip(axes[0], domains, strict=True):
        p = params[d]
        coef = [p[k] for k in PARAMS]
        w = np.array([r["weights"][d] for r in results])
        n0 = np.array([r["N0"] for r in results]) / p["scale"]
        ax.scatter(w, [r["losses"][d] for r in results], label="proxy runs", s=18)
        ax.scatter(w, loss_model(w, n0, coef), marker="x", label="fit at same N0")
        ax.plot(grid, loss_model(grid, 1.0, coef), lw=1, label=f"fit, N0={p['scale']:.0f}")
        ax.set(title=d, xlabel=f"w[{d}]", ylabel="validation loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


ProxyTrainFn = Callable[[pl.DataFrame, pl.DataFrame, int], dict[str, float]]

# What makes a proxy train on exactly its mixture (arXiv 2508.11953 fits L_i against N0, the proxy's
# data): one pass over its examples, no step cap. Applied after every other override.
PROXY_SCHEDULE: dict[str, Any] = {"epochs": 1, "max_steps": -1}


def proxy_overrides(train_cfg: dict | None) -> dict[str, Any]:
    """`train_fn` overrides of a proxy run: `train_cfg` (batch size, lr, ...) with `PROXY_SCHEDULE` on top."""
    return {**(train_cfg or {}), **PROXY_SCHEDULE}


def default_proxy_train_fn(train_fn: Callable[..., str], train_cfg: dict | None = None,
                           max_length: int = DEFAULT_MAX_LENGTH) -> ProxyTrainFn:
    """Proxy run: `train_fn(examples, seed, overrides)` (the select stage's reference trainer) for one epoch over
    exactly `examples` (`proxy_overrides`), then the token-weighted mean response NLL of the trained
    model per validation domain."""

    def proxy(train_examples: pl.DataFrame, validation: pl.DataFrame, seed: int) -> dict[str, float]:
        from pipeline.scorers import ScoreContext, get_scorer

        model_dir = train_fn(train_examples, seed, proxy_overrides(train_cfg))
        ctx = ScoreContext(model_name=model_dir, max_length=max_length, progress=False)
        table = get_scorer("perplexity")(validation, ctx).with_columns(validation.get_column("domain"))
        per_domain = table.group_by("domain").agg((pl.col("nll") * pl.col("n_tokens")).sum() / pl.col("n_tokens").sum())
        return dict(per_domain.iter_rows())

    return proxy


def _split(examples: pl.DataFrame, n_val: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Seeded per-domain shuffle of the pool; the first n_val rows of each domain are validation."""
    key = np.random.default_rng(seed + 7919).random(examples.height)
    shuffled = examples.with_columns(pl.Series("_key", key)).sort(["domain", "_key", "id"]).drop("_key")
    pos = pl.int_range(pl.len()).over("domain")
    return shuffled.filter(pos >= n_val), shuffled.filter(pos < n_val)


def run_proxies(pool: pl.DataFrame, validation: pl.DataFrame, plan: list[dict[str, Any]], proxy_train_fn: ProxyTrainFn,
                cache_dir: str | Path, seed: int = 0, key_extra: dict | None = None) -> list[dict[str, Any]]:
    """Run (or read from the JSON cache, keyed by config) every proxy mixture; nested per-domain prefixes of the pool."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    results = []
    for entry in plan:
        cfg = {"amounts": entry["amounts"], "seed": seed, "pool": fingerprint(pool), "val": fingerprint(validation),
               **(key_extra or {})}
        key = config_hash(cfg, 16)
        path = cache / f"proxy-{key}.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        pos = pl.int_range(pl.len()).over("domain")
        quota = pl.col("domain").replace_strict(entry["amounts"], default=0, return_dtype=pl.Int64)
        train_set = pool.filter(pos < quota)
        trained = dict(train_set.group_by("domain").len().iter_rows())
        if trained != {d: a for d, a in entry["amounts"].items() if a > 0}:
            raise ValueError(f"proxy {entry['name']}: the pool has {trained} rows for the planned {entry['amounts']}")
        losses = {d: float(v) for d, v in proxy_train_fn(train_set, validation, seed).items()}
        result = {**entry, "losses": losses, "trained": trained, "config": cfg}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
        tmp.replace(path)
        results.append(result)
    return results


def run_datamix(examples: pl.DataFrame, proxy_train_fn: ProxyTrainFn, cfg: dict | None, cache_dir: str | Path,
                seed: int = 0) -> pl.DataFrame:
    """Proxy runs -> fitted curves -> optimal mix -> sampled selection; writes datamix.json and curves.png to cache_dir.

    `cfg` holds `DataMix`'s parameters (missing keys take `DATAMIX_DEFAULTS`).
    """
    cfg = {**DATAMIX_DEFAULTS, **(cfg or {})}
    pool, validation = _split(examples, int(cfg["n_val_per_domain"]), seed)
    domains = sorted(set(examples.get_column("domain").to_list()))
    smallest = min(dict(pool.group_by("domain").len().iter_rows()).get(d, 0) for d in domains)
    n = int(cfg["proxy_n"] or smallest // max(3, int(np.ceil(max(cfg["factors"])))))
    if n < 1 or n * max(cfg["factors"]) > smallest:
        raise ValueError(f"proxy_n={n} needs {n * max(cfg['factors']):.0f} examples per domain, smallest has {smallest}")
    plan = proxy_plan(domains, n, cfg["factors"])
    results = run_proxies(pool, validation, plan, proxy_train_fn, cache_dir, seed,
                          {"train": cfg["train"], "schedule": PROXY_SCHEDULE})
    params = fit_domain_curves(results, int(cfg["starts"]), float(cfg["f_scale"]), seed)
    if cfg["budget"] is not None and int(cfg["budget"]) > pool.height:
        raise ValueError(f"datamix budget {cfg['budget']} exceeds the {pool.height} rows left after holding out "
                         f"{validation.height} validation rows")
    budget = int(cfg["budget"] or min(examples.height // 2, pool.height))
    weights = optimize_mix(params, budget, float(cfg["floor"]))
    plot_curves(params, results, Path(cache_dir) / "curves.png")
    summary = {"params": params, "weights": weights, "budget": budget, "proxy_n": n,
               "predicted": predict(params, weights, budget)}
    (Path(cache_dir) / "datamix.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    held_out = validation.select(
        "id", pl.lit(False).alias("kept"), pl.lit(1.0).alias("weight"),
        (pl.lit("dropped: datamix validation row (domain=") + pl.col("domain") + pl.lit(")")).alias("reason"))
    chosen = pl.concat([sample_mix(pool, weights, budget, seed), held_out])
    return examples.select("id").join(chosen, on="id", how="left", maintain_order="left")


@register_selector("datamix")
class DataMix(Selector):
    """Optimized domain mixture: proxy runs, fitted per-domain curves, the best mix, an exact-count sample.

    Needs a `domain` column (in the scores or `ctx.examples`) and `ctx.proxy_train_fn` or
    `ctx.train_fn`; caches proxy results in `ctx.run_dir/datamix`; seeded by `ctx.seed`.
    Parameters: `budget`, examples to select (None = half the pool); `proxy_n`, examples per domain in
    the equal proxy mix (None = a third of the smallest domain pool); `n_val_per_domain`, held-out rows
    per domain for the proxy validation losses; `factors`, the proxy amounts relative to `proxy_n`;
    `floor`, the smallest weight any domain may get; `starts`, fit restarts per domain; `f_scale`, the
    Huber transition in loss units; `train`, proxy training overrides for the default proxy_train_fn
    (batch size, lr, ...; None = none). Every proxy trains one epoch over its exact mixture
    (`PROXY_SCHEDULE`), so `train` may not set `epochs` or `max_steps`. The validation rows are never
    selected.
    """

    needs = frozenset({"trainer"})  # proxy runs fine-tune the base (training code keys the stage)

    def __init__(self, budget: int | None = None, proxy_n: int | None = None, n_val_per_domain: int = 16,
                 factors: tuple[float, ...] = FACTORS, floor: float = 0.01, starts: int = 8,
                 f_scale: float = 0.01, train: dict[str, Any] | None = None):
        fixed = sorted(set(train or {}) & set(PROXY_SCHEDULE))
        if fixed:
            raise ValueError(f"datamix train may not set {fixed}: each proxy trains one epoch over exactly its "
                             "mixture (arXiv 2508.11953 fits the loss against the proxy's data size N0)")
        self.budget, self.proxy_n, self.n_val_per_domain = budget, proxy_n, n_val_per_domain
        self.factors, self.floor, self.starts, self.f_scale, self.train = factors, floor, starts, f_scale, train

    def config(self) -> dict[str, Any]:
        """The `run_datamix` config: every parameter, `train` only when given (the defaults fill it)."""
        cfg = {k: getattr(self, k) for k in self.param_names()}
        if cfg["train"] is None:
            del cfg["train"]
        return cfg

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        source = ctx.examples if ctx.examples is not None else scores
        if "domain" not in source.columns:
            raise ValueError("datamix needs a domain column (in the scores or context.examples)")
        examples = scores.select("id").join(source, on="id", how="left", maintain_order="left")
        run_dir = Path(ctx.run_dir or ".") / "datamix"
        proxy = ctx.proxy_train_fn
        if proxy is None:
            if ctx.train_fn is None:
                raise ValueError("datamix needs context.proxy_train_fn or context.train_fn, (examples, seed, "
                                 "overrides) -> model folder: the select stage passes one to a selector that needs = {'trainer'}")
            proxy = default_proxy_train_fn(ctx.train_fn, {**ctx.train_cfg, **(self.train or {})}, ctx.max_length)
        return run_datamix(examples, proxy, self.config(), run_dir, ctx.seed)


PROXY_TRAIN_DEFAULTS: dict[str, Any] = {}  # proxies follow the context's train_cfg, then PROXY_SCHEDULE
DATAMIX_DEFAULTS: dict[str, Any] = {
    **{p.name: p.default for p in list(inspect.signature(DataMix.__init__).parameters.values())[1:]},
    "train": PROXY_TRAIN_DEFAULTS,
}
