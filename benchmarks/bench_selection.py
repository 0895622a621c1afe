"""Benchmark: sensitivity sampling on 1,000,000 x 384 float32 embeddings, k=1024, vs scikit-learn MiniBatchKMeans.

Ours = the full `sensitivity_sampling` (faiss k-means with its default subsampling of
max_points_per_centroid=256 points per centroid, 20 iterations; faiss nearest-centroid assignment of
all 1M points; nearest real example per cluster; k loss calls; m draws with replacement).
sklearn = `MiniBatchKMeans(n_clusters=k, batch_size=1024, max_iter=5, n_init=1)` fit, clustering only,
with its default labels pass over all points (compute_labels=True). max_iter=5 epochs of 1M points is
about the number of point visits faiss makes (20 iterations x 262,144 points); its early stopping
(max_no_improvement=10) may stop it sooner.
Last line: `seconds=<ours, full sampling> ratio_vs_sklearn=<ours / sklearn clustering seconds>` (lower is better).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def mixture(n: int, d: int, n_modes: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """Gaussian mixture generated chunk by chunk into one preallocated float32 array."""
    rng = np.random.default_rng(seed)
    modes = rng.normal(0, 1, size=(n_modes, d)).astype(np.float32)
    scales = rng.uniform(0.2, 0.6, size=n_modes).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        which = rng.integers(0, n_modes, size=stop - start)
        noise = rng.standard_normal((stop - start, d), dtype=np.float32)
        x[start:stop] = modes[which] + noise * scales[which, None]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--m", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    from pipeline.selectors.sensitivity import cluster, sensitivity_sampling

    faiss.omp_set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"load avg {os.getloadavg()[0]:.2f}; faiss {faiss.__version__}, threads {args.threads}", flush=True)
    t = time.perf_counter()
    x = mixture(args.n, args.d, 2048, seed=0)
    print(f"generated {x.shape} float32 in {time.perf_counter() - t:.1f}s", flush=True)
    w = np.random.default_rng(1).normal(size=args.d).astype(np.float32)

    def loss_fn(idx: np.ndarray) -> np.ndarray:  # a smooth positive function of position
        return 1.0 + 0.5 * np.tanh(x[idx] @ w / np.sqrt(args.d))

    with threadpool_limits(args.threads):
        t0 = time.perf_counter()
        cl = cluster(x, args.k, seed=0)
        t1 = time.perf_counter()
        idx, weights = sensitivity_sampling(x, loss_fn, m=args.m, k=args.k, lam=1.0, seed=0, clusters=cl)
        ours = time.perf_counter() - t0
        print(f"ours: k-means + assignment {t1 - t0:.1f}s, loss+sampling {ours - t1 + t0:.2f}s, total {ours:.1f}s; "
              f"{idx.size} distinct of {args.m} draws, sum(weights)={weights.sum():.0f} (estimates N={args.n})", flush=True)
        if args.skip_sklearn:
            print(f"seconds={ours:.1f} ratio_vs_sklearn=nan")
            return
        from sklearn.cluster import MiniBatchKMeans

        t0 = time.perf_counter()
        mbk = MiniBatchKMeans(n_clusters=args.k, batch_size=1024, max_iter=5, n_init=1, random_state=0).fit(x)
        sk = time.perf_counter() - t0
        print(f"sklearn MiniBatchKMeans: {sk:.1f}s, {mbk.n_steps_} steps ({mbk.n_iter_} epochs), "
              f"load avg now {os.getloadavg()[0]:.2f}", flush=True)
    print(f"seconds={ours:.1f} ratio_vs_sklearn={ours / sk:.3f}")


if __name__ == "__main__":
    main()
