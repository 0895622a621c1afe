"""Which offline math domain moves greedy accuracy at 135M within sft-math's training budget?

For each domain (`data.dataset` names: gsm_symbolic or rg:<numeric reasoning-gym domain>[;k=v...];
`a+b` is the mixture [a, b], its train and test rows shared out evenly and alternating)
this loads one fixed test split (data seed 0) and a disjoint train split, evaluates the base model
(SmolLM2-135M-Instruct), fine-tunes it with sft-math's settings (batch 8, lr 1e-4, cosine, warmup
0.1, max_length 384, CE; `--steps` optimizer steps over `8 * steps` examples, one epoch) and
evaluates the tuned model the same way: greedy accuracy of the `#### number` on every test problem
(`evaluate_model` with n_generate = n_test, max_new_tokens 160, as sft-math), response NLL on all.
The accuracy difference tuned - base gets a paired bootstrap 95% CI over test problems (and over
training seeds when there are several: `pipeline.evaluation.stats.compare`).

Every finished piece is kept under `--out` (base and tuned per-example tables, a result JSON per
run; tuned weights are deleted after their evaluation), so a re-run only does what is missing and
`--table-only` reprints the table. Torch runs on `--threads` threads (default 1: the machine is
shared). Run, e.g.:

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/domain_accuracy.py \
        --domains 'rg:chain_sum;max_terms=2;max_digits=1' rg:leg_counting --steps 6 20 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "smollm2-135m-instruct"
BATCH = 8
DEFAULT_DOMAINS = ["gsm_symbolic", "rg:chain_sum", "rg:chain_sum;max_terms=2;max_digits=1",
                   "rg:basic_arithmetic;max_terms=2;max_digits=2", "rg:leg_counting;max_animals=3;max_instances=5"]
TRAIN = {"learning_rate": 1e-4, "batch_size": BATCH, "lr_scheduler": "cosine", "warmup_ratio": 0.1,
         "max_length": 384, "loss": "ce", "epochs": 1}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def log(msg: str) -> None:
    print(f"[domain_accuracy {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def splits(domain: str, n_train: int, n_test: int, folder: Path):
    """Train and test rows of `domain` (data seed 0), cached as parquet so every run shares them."""
    import polars as pl

    from pipeline.data import load_math

    paths = {k: folder / f"{k}.parquet" for k in ("train", "test")}
    if all(p.exists() for p in paths.values()) and pl.read_parquet(paths["train"]).height >= n_train:
        return {k: pl.read_parquet(p) for k, p in paths.items()}
    spec = domain.split("+") if "+" in domain else domain  # a+b: the mixture [a, b], as data.dataset takes it
    data = load_math(spec, n_train=n_train, n_val=1, n_test=n_test, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    for k, p in paths.items():
        data[k].write_parquet(p)
    return {k: data[k] for k in ("train", "test")}


def evaluate(model: str, test, path: Path) -> tuple[dict, float]:
    """Per-example table (NLL on all, greedy accuracy on all) of `model`, cached at `path`."""
    import polars as pl

    from pipeline.evaluation.heldout import evaluate_model

    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return json.loads(meta.read_text()), 0.0
    t0 = time.perf_counter()
    metrics, table = evaluate_model(model, test, {"n_generate": test.height}, progress=False)
    seconds = time.perf_counter() - t0
    metrics["eval_s"] = seconds
    table.write_parquet(path)
    meta.write_text(json.dumps(metrics, indent=1))
    assert pl.read_parquet(path).height == test.height
    return metrics, seconds


def run(domain: str, steps: int, seed: int, data: dict, folder: Path) -> dict:
    """Fine-tune on the first 8 * steps train rows with training seed `seed`, evaluate, return the result."""
    from pipeline.training.train import train

    result_path = folder / f"steps{steps}-seed{seed}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    work = folder / f"steps{steps}-seed{seed}"
    examples = data["train"].head(BATCH * steps)
    if examples.height < BATCH * steps:
        raise SystemExit(f"{domain}: only {examples.height} train rows for {steps} steps")
    log(f"{domain}: train {steps} steps, seed {seed}")
    t0 = time.perf_counter()
    info = train(MODEL, examples, work, {**TRAIN, "max_steps": steps}, seed=seed)
    train_s = time.perf_counter() - t0
    log(f"{domain}: evaluate tuned (train {train_s:.0f} s, loss {info['train_loss']:.3f})")
    metrics, eval_s = evaluate(info["model_dir"], data["test"], folder / f"steps{steps}-seed{seed}.parquet")
    shutil.rmtree(work, ignore_errors=True)  # 0.5 GB of weights per run; the table is what the report needs
    result = {"domain": domain, "steps": steps, "seed": seed, "train_s": train_s, "eval_s": eval_s,
              "train_loss": info["train_loss"], "accuracy": metrics["accuracy"], "nll": metrics["nll"],
              "date": time.strftime("%Y-%m-%d")}
    result_path.write_text(json.dumps(result, indent=1))
    return result


def summarize(domain: str, steps: int, seeds: list[int], folder: Path) -> dict | None:
    """One table row: base and tuned accuracy (mean over seeds), the paired difference with its 95% CI."""
    import polars as pl

    from pipeline.evaluation.stats import compare

    results = [folder / f"steps{steps}-seed{s}.json" for s in seeds]
    if not all(p.exists() for p in results) or not (folder / "base.parquet").exists():
        return None
    results = [json.loads(p.read_text()) for p in results]
    cols = ["id", "nll_sum", "n_tokens", "n_bytes", "correct", "generated"]
    base = pl.read_parquet(folder / "base.parquet").select(cols)
    parts = []
    for s in seeds:
        tuned = pl.read_parquet(folder / f"steps{steps}-seed{s}.parquet").select(cols)
        parts += [base.with_columns(pl.lit("base").alias("variant"), pl.lit(s).alias("seed")),
                  tuned.with_columns(pl.lit("tuned").alias("variant"), pl.lit(s).alias("seed"))]
    res = compare(pl.concat(parts), "base", n_boot=4000, seed=0)
    b, t = res.row(0, named=True), res.row(1, named=True)
    return {"domain": domain, "steps": steps, "seeds": ",".join(map(str, seeds)), "n_test": t["n_generated"],
            "base_acc": b["accuracy"], "tuned_acc": t["accuracy"], "d_acc": t["d_accuracy"],
            "d_lo": t["d_accuracy_lo"], "d_hi": t["d_accuracy_hi"], "base_nll": b["nll"], "tuned_nll": t["nll"],
            "train_s": sum(r["train_s"] for r in results) / len(results),
            "eval_s": sum(r["eval_s"] for r in results) / len(results),
            "date": max(r["date"] for r in results)}


def print_table(rows: list[dict]) -> None:
    print("| domain | steps | seeds | n_test | base acc | tuned acc | difference [95% CI] | NLL base -> tuned "
          "| train s | eval s | date |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['domain']}` | {r['steps']} | {r['seeds']} | {r['n_test']} | {r['base_acc']:.3f} | "
              f"{r['tuned_acc']:.3f} | {r['d_acc']:+.3f} [{r['d_lo']:+.3f}, {r['d_hi']:+.3f}] | "
              f"{r['base_nll']:.2f} -> {r['tuned_nll']:.2f} | {r['train_s']:.0f} | {r['eval_s']:.0f} | {r['date']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domains", nargs="+", default=DEFAULT_DOMAINS)
    ap.add_argument("--steps", nargs="+", type=int, default=[6])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--n-test", type=int, default=48)
    ap.add_argument("--out", default="runs/domain_accuracy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table-only", action="store_true", help="print the table from what --out holds")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = []
    for domain in args.domains:
        folder = out / slug(domain)
        if not args.table_only:
            data = splits(domain, BATCH * max(args.steps), args.n_test, folder)
            log(f"{domain}: {data['train'].height} train, {data['test'].height} test; evaluate base")
            evaluate(MODEL, data["test"], folder / "base.parquet")
            for steps in args.steps:
                for seed in args.seeds:
                    run(domain, steps, seed, data, folder)
        for steps in args.steps:
            row = summarize(domain, steps, args.seeds, folder)
            if row:
                rows.append(row)
                log(f"{domain}, {steps} steps: accuracy {row['base_acc']:.3f} -> {row['tuned_acc']:.3f}, "
                    f"difference {row['d_acc']:+.3f} [{row['d_lo']:+.3f}, {row['d_hi']:+.3f}]")
    print_table(rows)


if __name__ == "__main__":
    main()
