"""Benchmark: the audit flow against scoring the same pool once, measured in one run.

Both sides score the same generated math pool (`gsm_symbolic`, `--rows` rows) with `perplexity`, each
with an empty stage cache: the baseline runs the score stage alone; the audit runs `pipeline run
audit` (canaries at `--share`, scoring and selecting the canaried pool, AUROC with 1,000 bootstrap
replicates per column and kind, the report). Last line: `rows=N score_s=... audit_s=... ratio=...`.
Goal: ratio < 2 (canaries add `share` of the scoring; the rest is overhead). CPU here; on a GPU the
same script measures the GPU path (not run: no GPU was lent).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--dataset", default=None,
                        help="data.dataset of the pool (default: the audit recipe's gsm_symbolic); shorter rows, "
                             "e.g. 'rg:chain_sum;max_terms=3;max_digits=3', make a 10,000-row run affordable")
    args = parser.parse_args()

    from pipeline.flows.audit import audit_flow
    from pipeline.flows.recipe import resolve_recipe
    from pipeline.stages import ModelRef, Score, run_stage, wiring

    base = [f"data.n_train={args.rows}", "score.scorer=perplexity", f"audit.share={args.share}",
            *([f"data.dataset={args.dataset}"] if args.dataset else [])]
    with tempfile.TemporaryDirectory() as tmp:
        plan, _ = resolve_recipe("audit", [*base, f"cache_dir={tmp}/score"])
        data = wiring.load_data(plan)  # generating the data is not timed
        t0 = time.perf_counter()
        run_stage(Score(train=data.train, model=ModelRef.of(plan.recipe.model), score=plan.recipe.score,
                        seed=0, reference_train=plan.reference_train, scorers=plan.scorers), plan.cache_root)
        score_s = time.perf_counter() - t0

        plan, _ = resolve_recipe("audit", [*base, f"cache_dir={tmp}/audit"])
        wiring.load_data(plan)
        t0 = time.perf_counter()
        audit_flow(config=plan, run_dir=str(Path(tmp) / "run"))
        audit_s = time.perf_counter() - t0
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"dataset: {plan.recipe.data.dataset}")
    print(f"rows={args.rows} score_s={score_s:.1f} audit_s={audit_s:.1f} ratio={audit_s / score_s:.2f}")


if __name__ == "__main__":
    main()
