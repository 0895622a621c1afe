"""Benchmark: the non-model curation stages on 1,000,000 rows in one process, with its peak memory.

A synthetic corpus (JSON Lines: Alpaca-style records and multi-turn chats over many topics, with
exact copies, near copies, records copied from an evaluation file and broken lines) goes through
what `pipeline run curate` runs when no model scores it: ingest (with quarantine), a cheap score
column (response length), `select: [dedup exact, dedup minhash, decontaminate, quantile]`, the data
card, and `pipeline inspect` of the card (summary and the dropped rows sorted by id). Generating the corpus is
not timed (it streams to disk before the clock starts).
Last line: `rows=<records read> seconds=<all timed stages> peak_rss_gb=<max RSS of this process>`.
Goals on the 2-core CPU: seconds <= 180 and peak_rss_gb <= 4.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import tempfile
import time
from pathlib import Path

WORDS = ("alpha beta gamma delta river stone cloud market garden silver number engine planet music "
         "harbor window forest signal paper bridge winter summer copper violet lantern meadow canyon "
         "orbit pixel kettle falcon marble thunder velvet quartz ember willow tundra").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_corpus(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """`corpus.jsonl` with n lines and `eval.jsonl` with 2,000 records; returns both paths."""
    rng = random.Random(seed)
    eval_records = [{"question": f"Question {i}: {sentence(rng, 20)}?", "answer": sentence(rng, 5)}
                    for i in range(2000)]
    eval_path = folder / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(r) + "\n" for r in eval_records))
    path, recent = folder / "corpus.jsonl", []
    with open(path, "w") as f:
        for i in range(n):
            kind, fresh = rng.random(), False
            if kind < 0.05 and recent:  # an exact copy of a recent record
                line = rng.choice(recent)
            elif kind < 0.10 and recent:  # a near copy: different case and spacing, one word changed
                rec = json.loads(rng.choice(recent))
                key = "output" if "output" in rec else None
                if key:
                    words = rec[key].split()
                    words[rng.randrange(len(words))] = rng.choice(WORDS)
                    rec[key] = "  ".join(words).upper()
                line = json.dumps(rec)
            elif kind < 0.105:  # a record copied from the evaluation set
                ev = rng.choice(eval_records)
                line = json.dumps({"instruction": ev["question"], "input": "", "output": ev["answer"]})
            elif kind < 0.106:  # a broken record
                line = '{"instruction": "unterminated'
            elif kind < 0.5:  # a two-turn chat
                fresh = True
                topic = f"{sentence(rng, 3)} #{i}"
                line = json.dumps({"messages": [
                    {"role": "system", "content": "You are concise."},
                    {"role": "user", "content": f"Tell me about {topic}."},
                    {"role": "assistant", "content": sentence(rng, 30)},
                    {"role": "user", "content": "And more briefly?"},
                    {"role": "assistant", "content": sentence(rng, 10)}], "domain": "chat"})
            else:  # Alpaca
                fresh = True
                line = json.dumps({"instruction": f"Write about {sentence(rng, 4)} (item {i}).", "input": "",
                                   "output": sentence(rng, 40), "domain": "instruct"})
            f.write(line + "\n")
            if fresh:
                recent.append(line)
                if len(recent) > 1000:
                    recent.pop(rng.randrange(len(recent)))
    return path, eval_path


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    import polars as pl

    from pipeline.data import ingest
    from pipeline.reports.cards import write_card
    from pipeline.reports.inspect import inspect_run, query_report
    from pipeline.selectors import SelectContext, compose

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    corpus, eval_path = make_corpus(work, args.n)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load avg "
          f"{os.getloadavg()[0]:.2f}; polars {pl.__version__}; corpus {corpus.stat().st_size / 1e6:.0f} MB "
          f"generated in {time.perf_counter() - t:.0f}s (not timed)", flush=True)

    times: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        times[name] = time.perf_counter() - t0
        print(f"{name:<28} {times[name]:7.1f} s   peak RSS {peak_rss_gb():.2f} GB", flush=True)

    t0 = time.perf_counter()
    examples, quarantine = ingest(corpus)
    step("ingest", t0)

    t0 = time.perf_counter()
    scores = examples.select("id", pl.col("response").str.len_chars().cast(pl.Float64).alias("n_chars"))
    steps = [{"rule": "dedup", "method": "exact"}, {"rule": "dedup", "method": "minhash"},
             {"rule": "decontaminate", "against": [str(eval_path)]},
             {"rule": "quantile", "column": "n_chars", "keep": [0.01, 1.0]}]
    selection, stage_counts = compose(scores, steps, seed=0, context=SelectContext(examples=examples))
    step("select (4 stages)", t0)
    for st in stage_counts:
        print(f"  {st['stage']:<40} read {st['read']:>8}  kept {st['kept']:>8}  dropped {st['dropped']:>8}")

    t0 = time.perf_counter()
    card = write_card(work / "card", name="bench", examples=examples, scores=scores, selection=selection,
                      source={"dataset": str(corpus)}, scorers=[], rules=steps, stages=stage_counts,
                      score_columns=["n_chars"], quarantine=quarantine)
    step("card", t0)

    t0 = time.perf_counter()
    summary = inspect_run(card)
    query = query_report(card, subset="dropped", sort="id", n=5)  # the card alone: no run to join scores from
    step("inspect (summary + query)", t0)

    facts = json.loads((card / "card.json").read_text())["counts"]
    read = facts["read"]
    assert facts["kept"] + facts["dropped"] + facts["quarantined"] == read == args.n, (facts, args.n)
    print(f"accounted: kept {facts['kept']} + dropped {facts['dropped']} + quarantined {facts['quarantined']} "
          f"= read {read}; inspect kept {summary['counts']['kept']}, query matched {query.get('matched', '?')}")
    print(f"rows={read} seconds={sum(times.values()):.1f} peak_rss_gb={peak_rss_gb():.2f}")


if __name__ == "__main__":
    main()
