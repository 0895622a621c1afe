"""Canaries: labelled defective copies of a user's own SFT rows, injected into their pool.

An audit of a quality score needs ground truth on the user's own data, not on a benchmark: it
injects canaries made from the pool's rows (a wrong final answer, another prompt's response, a cut
or empty reply, a refusal, unrelated text, an exact or near copy), scores the pool, and measures
how well each score separates the canaries from the clean rows. This module only makes the
canaries: `inject_canaries` returns the pool unchanged, then the canary rows, labelled by the
`canary` (kind) and `canary_of` (source row id) columns, which are null for the user's own rows.

Each canary copies its source row (domain, answer, meta kept) and changes only its response; a chat
row's `messages` become null so the prompt and the changed response are what gets scored. Its
`source` is `canary:<kind>` and its id is the content hash of its text, or, when that id is already
taken (a `duplicate` always), a deterministic hash of kind, source id and index, so ids stay unique.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal

import numpy as np
import polars as pl

from pipeline.data.examples import example_id
from pipeline.data.math import final_answer, normalize_number

KINDS: tuple[str, ...] = ("wrong_answer", "swapped", "truncated", "refusal", "off_topic", "duplicate",
                          "near_duplicate", "empty")
CANARY = "canary"  # column: the canary's kind, null for the user's own rows
CANARY_OF = "canary_of"  # column: id of the row the canary was made from, null for own rows

TRUNCATE_SHARE = 0.3  # a truncated response keeps about this share of its characters
REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I am unable to provide an answer to this question.",
    "I apologize, but I cannot assist with this. Please consult a qualified professional.",
    "Sorry, I'm not able to answer that. Is there anything else I can help you with?",
)
OFF_TOPIC = (
    "The weather this weekend looks mild, with light winds from the west and a few clouds in the "
    "afternoon. Temperatures should stay pleasant, so it is a good time for a walk in the park.",
    "To make a simple tomato sauce, soften a chopped onion in olive oil, add crushed tomatoes and "
    "a pinch of salt, and let it simmer gently for twenty minutes before stirring in fresh basil.",
    "Regular stretching keeps muscles flexible and helps prevent injuries. A few minutes each "
    "morning, focusing on the back and legs, is enough to notice a difference within weeks.",
    "The old lighthouse on the northern cape was built more than a century ago. Visitors can climb "
    "its spiral staircase and enjoy a wide view of the coastline on clear days.",
)
EMPTY_REPLIES = ("", "OK", "Yes.")
FILLERS = ("also", "just", "really", "then", "simply")  # words a near-duplicate inserts

_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")  # the number pattern of pipeline.data.math.final_answer
_WORD = re.compile(r"\S+")
_SWAP_TRIES = 64  # random donor draws for a swapped canary before scanning the pool in order


def inject_canaries(examples: pl.DataFrame, share: float = 0.1, kinds: Sequence[str] = KINDS,
                    seed: int = 0) -> pl.DataFrame:
    """The pool plus round(share * n) canary rows (n = examples.height) spread as evenly as possible
    over `kinds` (the first kinds take the remainder).

    Returns every row of `examples` unchanged and in order, with `canary` and `canary_of` null,
    then the canary rows, kind by kind in the order of `kinds`; the columns are those of `examples`
    plus `canary` (the kind) and `canary_of` (the id of the source row), both String. Source rows
    are drawn with a numpy Generator seeded by `seed` (distinct rows within a kind while the pool
    allows), so one seed gives one frame and another seed other source rows.

    Raises ValueError for `share` outside (0, 1), unknown, repeated or no `kinds`, a pool of fewer
    than 2 rows or too small to give every kind a canary, and a kind no row of the pool can make
    (`wrong_answer` needs a response with a number, `truncated` one of 2+ characters, `swapped` two
    rows that differ in prompt and response).
    """
    kinds = _check(examples, share, kinds)
    n = examples.height
    total = round(share * n)
    rng = np.random.default_rng(seed)
    rows = examples.to_dicts()
    ids = examples["id"].to_list()
    taken = set(ids)
    canaries: list[dict] = []
    for i, kind in enumerate(kinds):
        count = total // len(kinds) + (1 if i < total % len(kinds) else 0)
        make = _MAKERS[kind]
        eligible = _eligible(kind, examples)
        for k, src in enumerate(_draw(rng, eligible, count)):
            row = rows[src]
            response = make(rng, src, rows)
            canary = {**row, "response": response, CANARY: kind, CANARY_OF: row["id"]}
            if "messages" in canary:
                canary["messages"] = None
            if "source" in canary:
                canary["source"] = f"canary:{kind}"
            canary["id"] = _unique_id(row["prompt"] or "", response, kind, row["id"], k, taken)
            canaries.append(canary)
    schema = {**examples.schema, CANARY: pl.String, CANARY_OF: pl.String}
    own = examples.with_columns(pl.lit(None, dtype=pl.String).alias(CANARY),
                                pl.lit(None, dtype=pl.String).alias(CANARY_OF))
    return pl.concat([own, pl.DataFrame(canaries, schema=schema)], how="vertical")


def _check(examples: pl.DataFrame, share: float, kinds: Sequence[str]) -> tuple[str, ...]:
    """The kinds as a tuple once every argument is valid; a ValueError naming the bad one otherwise."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise ValueError(f"share must be a number in the open interval (0, 1), got {share!r}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds:
        raise ValueError(f"kinds is empty; give one or more of {', '.join(KINDS)}")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"kinds: unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        raise ValueError(f"kinds: {', '.join(repeated)} given more than once; give each kind once")
    missing = [c for c in ("id", "prompt", "response") if c not in examples.columns]
    if missing:
        raise ValueError(f"examples: missing column(s) {', '.join(missing)}; expected the example table")
    clash = [c for c in (CANARY, CANARY_OF) if c in examples.columns]
    if clash:
        raise ValueError(f"examples already has column(s) {', '.join(clash)}: inject canaries into a "
                         "pool without canaries")
    n = examples.height
    if n < 2:
        raise ValueError(f"pool size: {n} row(s) is too small to make canaries from; need at least 2")
    if round(share * n) < len(kinds):
        need = max(2, math.ceil((len(kinds) - 0.5) / share))
        while round(share * need) < len(kinds):
            need += 1
        raise ValueError(f"pool size: {n} rows with share={share} give {round(share * n)} canaries, fewer "
                         f"than the {len(kinds)} kinds; need at least {need} rows for that share and kinds "
                         "(or raise share, or pass fewer kinds)")
    if examples["id"].n_unique() < n or examples["id"].null_count():
        raise ValueError("examples: ids are not unique (or some are null); canaries need a pool with unique ids")
    return kinds


def _eligible(kind: str, examples: pl.DataFrame) -> np.ndarray:
    """Indices of the rows a canary of `kind` can be made from; ValueError naming the kind if none."""
    responses = examples["response"].fill_null("")
    if kind == "wrong_answer":
        mask = [final_answer(r) is not None for r in responses.to_list()]
        why = "no response has a final number to change"
    elif kind == "truncated":
        mask = (responses.str.len_chars() >= 2).to_list()
        why = "no response has 2 or more characters to cut"
    elif kind == "swapped":  # some other row differs in both prompt and response
        frame = pl.DataFrame({"p": examples["prompt"].fill_null(""), "r": responses})
        same_p = frame.select(pl.len().over("p")).to_series()
        same_r = frame.select(pl.len().over("r")).to_series()
        same_both = frame.select(pl.len().over("p", "r")).to_series()
        mask = ((examples.height - same_p - same_r + same_both) > 0).to_list()
        why = "no two rows differ in both prompt and response"
    else:
        return np.arange(examples.height)
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    if idx.size == 0:
        raise ValueError(f"kinds: cannot make {kind!r} canaries from this pool: {why}")
    return idx


def _draw(rng: np.random.Generator, eligible: np.ndarray, count: int) -> list[int]:
    """`count` source rows from `eligible`: distinct while there are enough, then again from the top."""
    out: list[int] = []
    while len(out) < count:
        take = min(count - len(out), eligible.size)
        out.extend(int(i) for i in rng.choice(eligible, size=take, replace=False))
    return out


def _unique_id(prompt: str, response: str, kind: str, source_id: str, k: int, taken: set[str]) -> str:
    """The canary's content hash, or when that id is taken a hash of kind, source and index."""
    cid = example_id(prompt, response)
    bump = 0
    while cid in taken:
        key = f"canary:{kind}:{source_id}:{k}" + (f":{bump}" if bump else "")
        cid = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
        bump += 1
    taken.add(cid)
    return cid


def _wrong_answer(rng: np.random.Generator, src: int, rows: list[dict]) -> str:
    """The response with its final number (after the last '####' when present, else the last
    number) replaced by a different one: the value plus a small nonzero offset, unlike the gold."""
    response = rows[src]["response"] or ""
    start = response.rfind("####") + 4 if "####" in response else 0
    matches = list(_NUMBER.finditer(response, start))
    m = matches[0] if "####" in response else matches[-1]
    core = m.group(0).rstrip(".,")  # a sentence's full stop or comma is not part of the number
    value = Decimal(core.replace(",", ""))
    before, after = response[: m.start()], response[m.start() + len(core):]
    avoid = {final_answer(response), normalize_number(rows[src].get("answer"))}
    sign = -1 if value >= 10 and rng.random() < 0.5 else 1  # small answers stay non-negative
    offsets = [sign * int(o) for o in rng.permutation(np.arange(1, 10))]
    for new in [value + o for o in offsets] + [-value - 1, value * 10 + 7]:
        text = f"{before}{new}{after}"
        if final_answer(text) not in avoid:
            return text
    raise RuntimeError(f"could not change the final number of {response!r}")  # not reachable


def _swapped(rng: np.random.Generator, src: int, rows: list[dict]) -> str:
    """The response of another row, one with a different prompt and a different response."""
    prompt, response = rows[src]["prompt"] or "", rows[src]["response"] or ""

    def fits(j: int) -> bool:
        return (rows[j]["prompt"] or "") != prompt and (rows[j]["response"] or "") != response

    for _ in range(_SWAP_TRIES):
        j = int(rng.integers(len(rows)))
        if fits(j):
            return rows[j]["response"] or ""
    start = int(rng.integers(len(rows)))
    j = next(j % len(rows) for j in range(start, start + len(rows)) if fits(j % len(rows)))
    return rows[j]["response"] or ""


def _truncated(rng: np.random.Generator, src: int, rows: list[dict]) -> str:
    """The first ~30% of the response's characters, cut back to a word boundary when there is one."""
    response = rows[src]["response"] or ""
    keep = min(max(1, round(TRUNCATE_SHARE * len(response))), len(response) - 1)
    head = response[:keep]
    space = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    if keep < len(response) and response[keep].isspace():
        space = keep  # the cut already falls between words
    cut = response[:space].rstrip() if space >= keep // 2 else ""  # not a cut far short of ~30%
    return cut or head


def _near_duplicate(rng: np.random.Generator, src: int, rows: list[dict]) -> str:
    """The response with a small edit: two adjacent short words swapped, else a word inserted.

    Only alphabetic words move and a word goes only before an alphabetic word (or at the start),
    so numbers and the '####' answer stay where they are."""
    response = rows[src]["response"] or ""
    words = list(_WORD.finditer(response))
    pairs = [i for i in range(len(words) - 1)
             if words[i].group(0).isalpha() and words[i + 1].group(0).isalpha()
             and words[i].group(0) != words[i + 1].group(0)
             and len(words[i].group(0)) + len(words[i + 1].group(0)) <= 0.1 * len(response)]
    if pairs and rng.random() < 0.5:
        i = pairs[int(rng.integers(len(pairs)))]
        a, b = words[i], words[i + 1]
        return (response[: a.start()] + b.group(0) + response[a.end(): b.start()] + a.group(0)
                + response[b.end():])
    spots = [w.start() for w in words if w.group(0).isalpha()] or [0]
    at = spots[int(rng.integers(len(spots)))]
    filler = FILLERS[int(rng.integers(len(FILLERS)))]
    return f"{response[:at]}{filler} {response[at:]}"


def _fixed(choices: tuple[str, ...]) -> Callable[[np.random.Generator, int, list[dict]], str]:
    """A maker that replaces the response with one of `choices`, picked with the rng."""

    def make(rng: np.random.Generator, src: int, rows: list[dict]) -> str:
        return choices[int(rng.integers(len(choices)))]

    return make


def _duplicate(rng: np.random.Generator, src: int, rows: list[dict]) -> str:
    """The response unchanged: an exact copy of the row (under its own id)."""
    return rows[src]["response"] or ""


_MAKERS: dict[str, Callable[[np.random.Generator, int, list[dict]], str]] = {
    "wrong_answer": _wrong_answer,
    "swapped": _swapped,
    "truncated": _truncated,
    "refusal": _fixed(REFUSALS),
    "off_topic": _fixed(OFF_TOPIC),
    "duplicate": _duplicate,
    "near_duplicate": _near_duplicate,
    "empty": _fixed(EMPTY_REPLIES),
}


NOISE = "noise"  # column: the kind of defect a corrupted training row carries, null for clean rows


COPIES = ("duplicate", "near_duplicate")  # kinds that only mean something beside the row they copy


def corrupt(examples: pl.DataFrame, share: float, kinds: Sequence[str] = KINDS, seed: int = 0) -> pl.DataFrame:
    """The pool with round(share * n) of its rows replaced, in place, by canaries of `kinds` (evenly over the
    kinds, distinct rows): a noisy pool for benchmarks (`data.noise`), where a `noise` column keeps each
    corrupted row's kind so a study can count how many of them a selection kept.

    A canary replaces the row it was made from, except an exact or near copy: it replaces another clean
    row, so the pool then holds the original and its copy, as a pool with copies does.
    """
    kinds = _check(examples, share, kinds)
    total = round(share * examples.height)
    rng = np.random.default_rng(seed)
    replaced: dict[str, dict] = {}  # id of the row a canary replaces -> the canary
    copied: set[str] = set()  # rows a copy was made from: they stay, unreplaced
    for i, kind in enumerate(kinds):
        count = total // len(kinds) + (1 if i < total % len(kinds) else 0)
        clean = examples.filter(~pl.col("id").is_in([*replaced, *copied]))
        if count == 0:
            continue
        made = inject_canaries(clean, count / clean.height, (kind,), seed + i)
        made = made.filter(pl.col(CANARY).is_not_null()).head(count)
        sources = set(made[CANARY_OF].to_list())
        for row in made.iter_rows(named=True):
            target = row[CANARY_OF]
            if kind in COPIES:
                copied.add(target)
                free = [r for r in clean["id"].to_list() if r not in replaced and r not in copied and r not in sources]
                target = free[int(rng.integers(len(free)))]
            replaced[target] = {**{k: row[k] for k in examples.columns}, NOISE: kind}
    rows = [replaced.get(r["id"], {**r, NOISE: None}) for r in examples.iter_rows(named=True)]
    return pl.DataFrame(rows, schema={**examples.schema, NOISE: pl.String})
