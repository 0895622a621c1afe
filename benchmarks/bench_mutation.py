"""Mutation score of the formula files: plant mutmut's one-token bugs, run the matching tests, count kills.

Run from the project root (not in CI: it takes hours on 2 cores):

    pip install mutmut==3.8.1
    python benchmarks/bench_mutation.py                       # every formula file ([tool.mutmut] in pyproject)
    python benchmarks/bench_mutation.py "pipeline.losses.dft*"  # mutants whose name matches (mutmut's globs)
    python benchmarks/bench_mutation.py --sample 200 --seed 0   # a seeded uniform sample of all the mutants
    python benchmarks/bench_mutation.py --sample 150 --seed 3 --survivors benchmarks/mutation-seed3.diff
    python benchmarks/bench_mutation.py --sample 150 --seed 4 --equivalent benchmarks/mutation-equivalent.txt

A full run needs hours on 2 cores; `--sample N` runs N mutants drawn uniformly (seeded) from every
mutant of the formula files and prints the score with its 95% Wilson interval: an unbiased estimate
of the full run's score, at a cost the machine can spend.

mutmut copies the package into `mutants/`, mutates only `only_mutate` (losses/, the model scorers,
sensitivity, dedup, decontaminate and CLEAR selectors, the trainer's packed body), and runs for each mutant only the tests of
`pytest_add_cli_args_test_selection` that cover the mutated function. Lines that only raise,
warn, log or record a metric are not mutated (`do_not_mutate_patterns`): a test of a message's
wording is a test of a constant. A timeout counts as killed (the bug made the test hang); a mutant
no test reaches counts as survived. The last line is `killed=K survived=S score=K/(K+S)`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

from scipy.stats import binomtest

DETECTED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
            255: "timeout", 37: "type check"}
UNDETECTED = {0: "survived", 5: "no tests", 33: "no tests"}


def run_mutmut(patterns: list[str], children: int) -> int:
    """`mutmut run` in the project root with one BLAS thread per worker (forked torch must not oversubscribe)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *patterns]
    return subprocess.run(cmd, env=env).returncode


def all_mutants() -> list[str]:
    """Generate the mutants (mutmut's own generation step, no test run) and return every mutant's name."""
    code = ("import os; os.makedirs('mutants', exist_ok=True)\n"
            "from mutmut.__main__ import (copy_also_copy_files, copy_src_dir, create_mutants, set_mutant_under_test,"
            " setup_source_paths)\n"
            "set_mutant_under_test('mutant_generation'); copy_src_dir(); copy_also_copy_files(); setup_source_paths();"
            " create_mutants(1)")
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
    return sorted(name for meta in Path("mutants").glob("**/*.py.meta")
                  for name in json.loads(meta.read_text())["exit_code_by_key"])


def tally(root: Path, prefix: str = "", names: set[str] | None = None) -> tuple[Counter, list[str]]:
    """Statuses of every mutant whose name starts with `prefix` (or is in `names`), and the undetected ones."""
    counts: Counter = Counter()
    survivors: list[str] = []
    for meta in sorted(root.glob("mutants/**/*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if not name.startswith(prefix) or (names is not None and name not in names):
                continue
            if code is None:
                counts["not run"] += 1
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


def read_equivalent(path: Path) -> dict[tuple[str, str], str]:
    """(file, mutated line) -> why the mutation changes no value, from `path | line | why` rows (# comments)."""
    table = {}
    for number, row in enumerate(path.read_text().splitlines(), start=1):
        if row.strip() and not row.lstrip().startswith("#"):
            parts = [x.strip() for x in row.split(" | ", 2)]
            if len(parts) != 3 or not all(parts):
                raise SystemExit(f"{path}:{number}: expected `path | mutated line | why`, got {row[:80]!r}")
            table[(parts[0], parts[1])] = parts[2]
    return table


def equivalent_reason(diff: str, table: dict[tuple[str, str], str]) -> str | None:
    """Why a survivor's diff (`mutmut show`) is value-preserving, when its file and added line are in `table`."""
    file = next((ln[4:].strip() for ln in diff.splitlines() if ln.startswith("+++ ")), "")
    added = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return next((table[(file, a)] for a in added if (file, a) in table), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("patterns", nargs="*", help="mutmut name globs (default: every mutant)")
    ap.add_argument("--sample", type=int, default=0, help="run N mutants drawn uniformly from all of them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--survivors", type=Path, help="write each survivor's diff (`mutmut show`) to this file, so a "
                    "read of them outlives the machine's mutants/ folder")
    ap.add_argument("--equivalent", type=Path, help="`path | mutated line | why` rows of value-preserving mutations: "
                    "survivors matching one are counted apart (score on value-changing mutants)")
    opts = ap.parse_args()
    children = int(os.environ.get("MUTMUT_CHILDREN", max(1, (os.cpu_count() or 2) - 1)))
    patterns, names, prefix = opts.patterns, None, ""
    if opts.sample:
        population = all_mutants()
        patterns = random.Random(opts.seed).sample(population, min(opts.sample, len(population)))
        names = set(patterns)
        print(f"sample: {len(patterns)} of {len(population)} mutants, seed {opts.seed}")
    elif len(patterns) == 1:
        prefix = patterns[0].rstrip("*")
    run_mutmut(patterns, children)
    counts, survivors = tally(Path.cwd(), prefix, names)
    by_file: Counter = Counter(s.split(".x")[0] for s in survivors)
    print(f"machine: {os.cpu_count()} cores; timeouts counted as killed: {counts['timeout']}; "
          f"suspicious (not counted): {counts['suspicious']}")
    for module, n in by_file.most_common():
        print(f"survivors in {module}: {n}")
    for name in survivors:
        print("survived:", name)
    diffs = [subprocess.run(["mutmut", "show", name.split()[0]], capture_output=True, text=True).stdout
             for name in survivors] if opts.survivors or opts.equivalent else []
    if opts.survivors:
        opts.survivors.write_text("".join(f"# {name}\n{diff}\n" for name, diff in zip(survivors, diffs, strict=True)))
        print(f"survivor diffs: {opts.survivors}")
    k, s = counts["killed"], counts["survived"]
    if names is not None and k + s:
        ci = binomtest(k, k + s).proportion_ci(method="wilson")
        print(f"not run: {counts['not run']}; score 95% Wilson interval [{ci.low:.3f}, {ci.high:.3f}] "
              f"(a sample: the interval is where the full run's score lies)")
    if opts.equivalent:
        table = read_equivalent(opts.equivalent)
        reasons = [equivalent_reason(diff, table) for diff in diffs]
        for name, why in zip(survivors, reasons, strict=True):
            print(f"{'value-preserving' if why else 'value-changing'}: {name}" + (f"  ({why})" if why else ""))
        changing = s - sum(r is not None for r in reasons)
        ci = binomtest(k, k + changing).proportion_ci(method="wilson") if k + changing else None
        low, high = (ci.low, ci.high) if ci else (0.0, 0.0)
        print(f"value-changing mutants: killed={k} survived={changing} score={k / max(k + changing, 1):.3f} "
              f"[{low:.3f}, {high:.3f}] ({s - changing} survivors listed in {opts.equivalent} as value-preserving)")
    print(f"killed={k} survived={s} score={k / max(k + s, 1):.3f}")


if __name__ == "__main__":
    main()
