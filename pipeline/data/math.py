"""Math data: reasoning-gym's gsm_symbolic offline, GSM8K online, and final-answer normalization."""

from __future__ import annotations

import re

import polars as pl

from pipeline.data.examples import SCHEMA, Raw, Validator

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


def load_math(
    dataset: str = "gsm_symbolic", n_train: int = 128, n_val: int = 32, n_test: int = 32, seed: int = 0
) -> dict[str, pl.DataFrame]:
    """Train/validation/test splits with disjoint questions.

    gsm_symbolic splits come from disjoint generator seeds; questions seen in a later split are
    removed from the earlier ones (test wins, then validation), so no question leaks.
    """
    if dataset == "gsm_symbolic":
        # Over-generate a little so that deduplication still leaves the requested sizes.
        raw = {
            "test": _gsm_symbolic(int(n_test * 1.1) + 8, seed * 1000 + 3),
            "validation": _gsm_symbolic(int(n_val * 1.1) + 8, seed * 1000 + 2),
            "train": _gsm_symbolic(int(n_train * 1.1) + 8, seed * 1000 + 1),
        }
    elif dataset == "gsm8k":
        train_all, test = _gsm8k("train"), _gsm8k("test")
        raw = {"test": test, "validation": train_all[-max(n_val, 1) :], "train": train_all[:-max(n_val, 1)]}
    else:
        raise ValueError(f"unknown math dataset {dataset!r}: use 'gsm_symbolic' or 'gsm8k'")
    seen_questions: set[str] = set()
    out: dict[str, pl.DataFrame] = {}
    sizes = {"train": n_train, "validation": n_val, "test": n_test}
    for split in ("test", "validation", "train"):
        validate = Validator(source=f"{dataset}:{split}", domain="math")
        rows = []
        for i, rec in enumerate(raw[split], start=1):
            if rec["prompt"] in seen_questions:
                continue
            row, bad = validate(Raw(f"{dataset}:{split}", i, None, record=rec))
            if row is None:
                continue
            seen_questions.add(rec["prompt"])
            row["answer"] = normalize_number(rec["answer"])
            rows.append(row)
            if len(rows) == sizes[split]:
                break
        out[split] = pl.DataFrame(rows, schema=SCHEMA)
    return {k: out[k] for k in ("train", "validation", "test")}
