"""Wall time of a whole study on an empty stage cache, split by phase (issue 28 item 3).

Runs `pipeline run <recipe>` (default: the shipped `study`) in a fresh process with an empty stage
cache (`cache_dir`; converted models are reused) and its own run folder, and reads back what the study wrote: the wall time of the invocation and the
compute minutes per phase (data, scoring, selection, training, evaluation: `compute_minutes` in the
study's study.json, each stage counted once as timed when it ran). Goal: the shipped study under 15
minutes, the full study under 60, on this machine; the load average is printed beside the figures
because two shared cores make wall time depend on what else runs.

    python benchmarks/bench_study.py                      # recipes/study.yaml
    python benchmarks/bench_study.py study-noisy --set seeds=[0]

Last line: `recipe=R wall_min=W scoring_min=S training_min=T evaluation_min=E goal_min=G met=yes|no`.
CUDA: the same command runs the GPU path (not run: no GPU was lent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS_MIN = {"study": 15, "study-full": 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default="study")
    ap.add_argument("--set", action="append", default=[], help="recipe overrides, as `pipeline run --set`")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "pipeline.cli", "run", args.recipe, "--run-dir", str(run_dir),
               "--set", f"cache_dir={tmp}/stages", *(x for o in args.set for x in ("--set", o))]
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = (time.perf_counter() - t0) / 60
        study = json.loads((run_dir / "study.json").read_text())
    minutes = study["compute_minutes"]
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs; load at start {load0:.1f}, at end "
          f"{os.getloadavg()[0]:.1f}; seeds {study['seeds']}; variants {study['variants']}")
    print("compute minutes by phase: " + ", ".join(f"{k} {v}" for k, v in minutes.items()))
    goal = GOALS_MIN.get(args.recipe)
    met = "n/a" if goal is None else ("yes" if wall <= goal else "no")
    print(f"recipe={args.recipe} wall_min={wall:.1f} scoring_min={minutes.get('scoring', 0)} "
          f"training_min={minutes.get('training', 0)} evaluation_min={minutes.get('evaluation', 0)} "
          f"goal_min={goal} met={met}")


if __name__ == "__main__":
    main()
