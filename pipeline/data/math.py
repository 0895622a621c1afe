"""Math data: reasoning-gym's gsm_symbolic and numeric domains offline, GSM8K online, mixtures of them,
and final-answer normalization."""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

from pipeline.data.examples import SCHEMA, Raw, Validator
from pipeline.data.reasoning_gym import NUMERIC_DOMAINS, is_rg, parse_spec, rg_stream

_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def normalize_number(text: str | None) -> str | None:
    """Canonical form of a numeric answer: '1,680.0' -> '1680', '0.50' -> '0.5'."""
    if text is None:
        return None
    m = _NUMBER.search(text.replace("$", ""))
    if not m:
        return None
    s = m.group(0).replace(",", "").rstrip(".")
    try:
        value = float(s)
    except ValueError:
        return None
    if value == int(value):
        return str(int(value))
    return repr(value)


def final_answer(text: str) -> str | None:
    """The normalized number after the last '####' (GSM8K convention), else the last number."""
    if "####" in text:
        return normalize_number(text.rsplit("####", 1)[1])
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def _gsm_symbolic(size: int, seed: int) -> list[dict]:
    import reasoning_gym

    return [
        {"prompt": x["question"], "response": x["metadata"]["answer_cot"], "answer": x["answer"]}
        for x in reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    ]


def _gsm8k(split: str) -> list[dict]:
    import datasets

    ds = datasets.load_dataset("openai/gsm8k", "main", split=split)
    return [{"prompt": x["question"], "response": x["answer"], "answer": final_answer(x["answer"])} for x in ds]


def dataset_domain(spec: str) -> str:
    """The domain name of one `data.dataset` entry: `gsm_symbolic`, `gsm8k`, or the reasoning-gym name of `rg:<name>;...`."""
    return parse_spec(spec)[0] if is_rg(spec) else spec


def load_math(
    dataset: str | Sequence[str] = "gsm_symbolic", n_train: int = 128, n_val: int = 32, n_test: int = 32, seed: int = 0
) -> dict[str, pl.DataFrame]:
    """Train/validation/test splits with disjoint questions.

    `dataset` is `gsm_symbolic`, `gsm8k`, `rg:<reasoning_gym numeric domain>[;key=value...]`
    (`pipeline.data.reasoning_gym`), or a list of them: a mixture where each split's count is shared
    out evenly over the domains (the first ones take the remainder) and rows alternate between
    domains, so `test.head(k)` covers every domain. A row's `domain` is its dataset's name
    (`chain_sum` for `rg:chain_sum;max_digits=1`); a lone `gsm_symbolic` or `gsm8k` keeps `math`.

    gsm_symbolic splits come from disjoint generator seeds; reasoning-gym domains cut test,
    validation and train from one stream; in both, questions seen in a later split are removed from
    the earlier ones (test wins, then validation), also across the domains of a mixture, so no
    question leaks.
    """
    specs = [dataset] if isinstance(dataset, str) else list(dataset)
    if not specs:
        raise ValueError("data.dataset: an empty list; give a dataset name or a list of them")
    names = [dataset_domain(s) if s in ("gsm_symbolic", "gsm8k") or is_rg(s) else None for s in specs]
    for spec, name in zip(specs, names, strict=True):
        if name is None:
            raise ValueError(f"unknown math dataset {spec!r}: use 'gsm_symbolic', 'gsm8k' or 'rg:<name>' "
                             f"with a numeric reasoning-gym domain ({', '.join(sorted(NUMERIC_DOMAINS))})")
    if len(set(names)) < len(names):
        raise ValueError(f"data.dataset: a domain appears twice in {specs}; each domain once")
    mixture = not isinstance(dataset, str)
    seen: set[str] = set()
    parts = []
    for i, (spec, name) in enumerate(zip(specs, names, strict=True)):
        sizes = {k: _share(n, len(specs), i) for k, n in (("train", n_train), ("validation", n_val), ("test", n_test))}
        domain = name if mixture or is_rg(spec) else "math"
        parts.append(_domain_splits(spec, sizes, seed, seen, domain))
    return {split: pl.DataFrame(_alternate([p[split] for p in parts]), schema=SCHEMA)
            for split in ("train", "validation", "test")}


def _share(n: int, k: int, i: int) -> int:
    """Domain i's share of n examples over k domains: n // k, plus one for the first n % k domains."""
    return n // k + (1 if i < n % k else 0)


def _alternate(lists: list[list[dict]]) -> list[dict]:
    """Round-robin over the domains' rows: d1, d2, ..., d1, d2, ... (a shorter list simply ends)."""
    return [rows[j] for j in range(max((len(r) for r in lists), default=0)) for rows in lists if j < len(rows)]


def _take(raw: dict[str, list[dict]], sizes: dict[str, int], spec: str, domain: str,
          seen: set[str]) -> dict[str, list[dict]]:
    """Valid rows per split in the order test, validation, train, skipping questions already taken."""
    out: dict[str, list[dict]] = {}
    for split in ("test", "validation", "train"):
        validate = Validator(source=f"{spec}:{split}", domain=domain)
        rows: list[dict] = []
        for i, rec in enumerate(raw[split], start=1):
            if len(rows) >= sizes[split]:
                break
            if rec["prompt"] in seen:
                continue
            row, bad = validate(Raw(f"{spec}:{split}", i, None, record=rec))
            if row is None:
                continue
            seen.add(rec["prompt"])
            row["answer"] = normalize_number(rec["answer"])
            rows.append(row)
        out[split] = rows
    return out


def _domain_splits(spec: str, sizes: dict[str, int], seed: int, seen: set[str], domain: str) -> dict[str, list[dict]]:
    if spec == "gsm_symbolic":
        # Over-generate a little so that deduplication still leaves the requested sizes.
        raw = {
            "test": _gsm_symbolic(int(sizes["test"] * 1.1) + 8, seed * 1000 + 3),
            "validation": _gsm_symbolic(int(sizes["validation"] * 1.1) + 8, seed * 1000 + 2),
            "train": _gsm_symbolic(int(sizes["train"] * 1.1) + 8, seed * 1000 + 1),
        }
        return _take(raw, sizes, spec, domain, seen)
    if spec == "gsm8k":
        n_val = sizes["validation"]
        train_all, test = _gsm8k("train"), _gsm8k("test")
        raw = {"test": test, "validation": train_all[-max(n_val, 1) :], "train": train_all[:-max(n_val, 1)]}
        return _take(raw, sizes, spec, domain, seen)
    # reasoning-gym: one stream, cut test, then validation, then train from it
    result: dict[str, dict[str, list[dict]]] = {}

    def enough(records: list[dict]) -> bool:
        taken = set(seen)
        stream = {"test": records, "validation": records, "train": records}
        result["splits"] = _take(stream, sizes, spec, domain, taken)
        result["seen"] = taken
        return all(len(result["splits"][k]) == sizes[k] for k in sizes)

    rg_stream(spec, sum(sizes.values()), seed, enough)
    seen |= result["seen"]
    return result["splits"]
