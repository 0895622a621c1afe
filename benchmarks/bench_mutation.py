"""Mutation score of the formula files: plant mutmut's one-token bugs, run the matching tests, count kills.

Run from the project root (not in CI: it takes hours on 2 cores):

    pip install mutmut==3.8.1
    python benchmarks/bench_mutation.py                       # every formula file ([tool.mutmut] in pyproject)
    python benchmarks/bench_mutation.py "pipeline.losses.dft*"  # mutants whose name matches (mutmut's globs)

mutmut copies the package into `mutants/`, mutates only `only_mutate` (losses/, the model scorers,
sensitivity, dedup, decontaminate and CLEAR selectors), and runs for each mutant only the tests of
`pytest_add_cli_args_test_selection` that cover the mutated function. Lines that only raise,
warn, log or record a metric are not mutated (`do_not_mutate_patterns`): a test of a message's
wording is a test of a constant. A timeout counts as killed (the bug made the test hang); a mutant
no test reaches counts as survived. The last line is `killed=K survived=S score=K/(K+S)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

DETECTED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
            255: "timeout", 37: "type check"}
UNDETECTED = {0: "survived", 5: "no tests", 33: "no tests"}


def run_mutmut(patterns: list[str], children: int) -> int:
    """`mutmut run` in the project root with one BLAS thread per worker (forked torch must not oversubscribe)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *patterns]
    return subprocess.run(cmd, env=env).returncode


def tally(root: Path, prefix: str = "") -> tuple[Counter, list[str]]:
    """Statuses of every mutant whose name starts with `prefix`, and the names of the undetected ones."""
    counts: Counter = Counter()
    survivors: list[str] = []
    for meta in sorted(root.glob("mutants/**/*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if not name.startswith(prefix) or code is None:
                continue
            if code in DETECTED:
                counts["killed"] += 1
                counts[DETECTED[code]] += code not in (1, 3)
            elif code in UNDETECTED:
                counts["survived"] += 1
                survivors.append(f"{name}  ({UNDETECTED[code]})")
            else:
                counts["suspicious"] += 1
    return counts, survivors


def main() -> None:
    patterns = sys.argv[1:]
    children = int(os.environ.get("MUTMUT_CHILDREN", max(1, (os.cpu_count() or 2) - 1)))
    run_mutmut(patterns, children)
    prefix = patterns[0].rstrip("*") if len(patterns) == 1 else ""
    counts, survivors = tally(Path.cwd(), prefix)
    by_file: Counter = Counter(s.split(".x")[0] for s in survivors)
    print(f"machine: {os.cpu_count()} cores; timeouts counted as killed: {counts['timeout']}; "
          f"suspicious (not counted): {counts['suspicious']}")
    for module, n in by_file.most_common():
        print(f"survivors in {module}: {n}")
    for name in survivors:
        print("survived:", name)
    k, s = counts["killed"], counts["survived"]
    print(f"killed={k} survived={s} score={k / max(k + s, 1):.3f}")


if __name__ == "__main__":
    main()
