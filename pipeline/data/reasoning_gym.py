"""Offline reasoning-gym domains with numeric answers as math SFT data (`data.dataset: rg:<name>`).

A domain is named `rg:<reasoning_gym dataset>`, optionally with generator settings after semicolons:
`rg:chain_sum;max_terms=2;max_digits=1` (values are YAML scalars; a tuple setting such as
`operators` takes `+|-`). Semicolons, not `?`/`&`/`,`, so the name survives a YAML flow list
(`--set 'data.dataset=[gsm_symbolic, rg:chain_sum;max_digits=1]'`).

Only domains whose gold answer is one plain number are offered (`NUMERIC_DOMAINS`): evaluation
scores `final_answer(generated) == normalize_number(gold)`, which cannot compare fractions, lists,
hex strings or words. Every response ends with `#### <answer>` (GSM8K convention), preceded by one
short worked line built from the record's metadata where the domain's metadata allows it.

Splits are cut from ONE generator stream per domain and seed, test first, then validation, then
train, skipping any question already taken: reasoning-gym seeds item i of a dataset with
`Random(seed + i)`, so streams from nearby seeds share most of their items and must not be used as
separate splits.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import yaml

PREFIX = "rg:"
SPEC = re.compile(r"rg:([a-z0-9_]+)((?:;[A-Za-z_][A-Za-z0-9_]*=[^;]*)*)")
PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
STREAM_SEED = 1_000_000  # base seed of split seed s: s * STREAM_SEED (streams of different seeds never overlap)


def _expression(q: str, a: str, md: dict) -> str | None:
    return f"{md['expression']} = {a}" if md.get("expression") else None


def _leg_counting(q: str, a: str, md: dict) -> str | None:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    animals = md.get("animals") or {}
    if not animals or any(name not in ANIMALS for name in animals):
        return None
    legs = {name: n * ANIMALS[name] for name, n in animals.items()}
    if str(sum(legs.values())) != a:
        return None
    lines = [f"{name}: {n} × {ANIMALS[name]} = {legs[name]}" for name, n in animals.items()]
    return "\n".join([*lines, f"Total: {' + '.join(str(v) for v in legs.values())} = {a}"])


def _gcd(q: str, a: str, md: dict) -> str | None:
    return f"GCD({', '.join(str(n) for n in md['numbers'])}) = {a}" if md.get("numbers") else None


def _lcm(q: str, a: str, md: dict) -> str | None:
    import math

    numbers = md.get("numbers") or []
    if len(numbers) == 2 and all(numbers):
        x, y = numbers
        return f"LCM({x}, {y}) = {x} × {y} / GCD({x}, {y}) = {x * y} / {math.gcd(x, y)} = {a}"
    return f"LCM({', '.join(str(n) for n in numbers)}) = {a}" if numbers else None


def _count_bits(q: str, a: str, md: dict) -> str | None:
    binary = md.get("binary")
    return f"{md['number']} in binary is {binary}, which has {a} ones." if binary and binary.count("1") == int(a) else None


def _simple_equations(q: str, a: str, md: dict) -> str | None:
    return f"{md['equation']}, so {md['variable']} = {a}" if md.get("equation") and md.get("variable") else None


def _letter_counting(q: str, a: str, md: dict) -> str | None:
    letter, span = md.get("target_letter"), md.get("span") or []
    counts = [(w, w.lower().count(letter)) for w in span] if letter else []
    hits = [(w, c) for w, c in counts if c]
    if not letter or str(sum(c for _, c in hits)) != a:
        return None
    return f'"{letter}" appears in: ' + ", ".join(f"{w} ({c})" for w, c in hits) + f"; total {a}"


def _number_sequence(q: str, a: str, md: dict) -> str | None:
    return f"The rule is: {md['rule']}." if md.get("rule") else None


# Domains whose answer is one plain number -> the worked line from (question, answer, metadata), or None
# for answer-only responses. Checked on 200 generated records each (reasoning-gym 0.1.19): every answer
# matched `PLAIN_NUMBER`. Left out: coin_flip and power_function (e-notation answers), base_conversion
# (letters), dice and fraction_simplification (fractions), prime_factorization, complex_arithmetic, ...
NUMERIC_DOMAINS: dict[str, Callable[[str, str, dict], str | None] | None] = {
    "basic_arithmetic": _expression,
    "chain_sum": _expression,
    "decimal_chain_sum": _expression,
    "products": _expression,
    "leg_counting": _leg_counting,
    "gcd": _gcd,
    "lcm": _lcm,
    "count_bits": _count_bits,
    "simple_equations": _simple_equations,
    "letter_counting": _letter_counting,
    "number_sequence": _number_sequence,
    "decimal_arithmetic": None,
    "count_primes": None,
    "rectangle_count": None,
    "simple_geometry": None,
    "aiw": None,
}


def is_rg(spec: str) -> bool:
    return spec.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`rg:chain_sum;max_terms=2;max_digits=1` -> ('chain_sum', {'max_terms': 2, 'max_digits': 1}), or ValueError."""
    m = SPEC.fullmatch(spec)
    if not m:
        raise ValueError(f"{spec!r} is not rg:<name> or rg:<name>;key=value;... (e.g. rg:chain_sum;max_digits=1)")
    name, settings = m.group(1), {}
    if name not in NUMERIC_DOMAINS:
        raise ValueError(f"rg:{name}: not a numeric-answer reasoning-gym domain; use one of "
                         f"{', '.join(sorted(NUMERIC_DOMAINS))} (accuracy compares one final number)")
    for item in filter(None, m.group(2).split(";")):
        key, value = item.split("=", 1)
        if key in settings:
            raise ValueError(f"{spec!r}: setting {key!r} given twice")
        settings[key] = yaml.safe_load(value) if value.strip() else None
    return name, settings


def _config(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings checked against the domain's reasoning-gym config class (tuple fields take `a|b`)."""
    import reasoning_gym.factory

    fields = {f.name: f for f in dataclasses.fields(reasoning_gym.factory.DATASETS[name][1])}
    out = {}
    for key, value in settings.items():
        if key not in fields or key in ("seed", "size"):
            allowed = sorted(k for k in fields if k not in ("seed", "size"))
            raise ValueError(f"rg:{name}: unknown setting {key!r}; settings are {', '.join(allowed)}")
        default = fields[key].default
        if isinstance(default, (tuple, list)) and not isinstance(value, (tuple, list)):
            value = tuple(str(value).split("|"))
        out[key] = value
    return out


def rg_records(spec: str, size: int, seed: int) -> list[dict]:
    """`size` records {prompt, response, answer} of one stream of domain `spec`."""
    import reasoning_gym

    name, settings = parse_spec(spec)
    try:
        data = reasoning_gym.create_dataset(name, size=size, seed=seed, **_config(name, settings))
    except (TypeError, ValueError, AssertionError) as err:
        raise ValueError(f"{spec}: reasoning-gym rejected the settings: {err}") from None
    worked = NUMERIC_DOMAINS[name]
    out = []
    for x in data:
        answer = str(x["answer"]).strip()
        if not PLAIN_NUMBER.fullmatch(answer):
            raise ValueError(f"{spec}: record {x['metadata'].get('source_index')} has answer {answer!r}, not one "
                             "plain number (accuracy compares one final number)")
        line = worked(x["question"], answer, x["metadata"]) if worked else None
        out.append({"prompt": x["question"], "response": f"{line}\n#### {answer}" if line else f"#### {answer}",
                    "answer": answer})
    return out


def rg_stream(spec: str, needed: int, seed: int, accept: Callable[[list[dict]], bool]) -> list[dict]:
    """Records of one stream, over-generating (x4 each time) until `accept(records)` holds.

    ValueError when even a stream 64x the needed size is not enough (too few distinct questions).
    """
    size = int(needed * 1.2) + 16
    while True:
        records = rg_records(spec, size, seed * STREAM_SEED)
        if accept(records):
            return records
        if size >= 64 * needed + 1024:
            raise ValueError(f"{spec}: {size} generated records hold too few distinct questions for {needed} "
                             "disjoint examples; ask for fewer or widen the domain's settings")
        size *= 4
