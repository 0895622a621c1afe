"""Canary injection: each kind of defect is really made, labelled, and the pool itself is left alone."""

from __future__ import annotations

import difflib
import json
from collections import Counter

import polars as pl
import pytest

from pipeline.data.canaries import (
    CANARY,
    CANARY_OF,
    EMPTY_REPLIES,
    KINDS,
    OFF_TOPIC,
    REFUSALS,
    inject_canaries,
)
from pipeline.data.examples import SCHEMA, example_id
from pipeline.data.math import final_answer


def gsm_pool(n: int = 60) -> pl.DataFrame:
    rows = []
    for i in range(n):
        prompt = f"Q{i}: what is {i} plus {i}?"
        response = f"Some steps: we add {i} and {i} together to get the total sum.\n#### {2 * i}"
        rows.append({"id": example_id(prompt, response), "prompt": prompt, "response": response,
                     "source": "gsm", "domain": "math", "answer": str(2 * i), "messages": None,
                     "meta": json.dumps({"row": i})})
    return pl.DataFrame(rows, schema=SCHEMA)


def chat_pool(n: int = 24) -> pl.DataFrame:
    """Chat rows without any digit in them: nothing for a wrong answer to change."""
    words = ["apple", "river", "cloud", "stone", "maple", "tiger"]
    rows = []
    for i in range(n):
        topic = f"{words[i % 6]} {words[(i // 6) % 6]}"
        messages = [{"role": "user", "content": f"Tell me about the {topic}."},
                    {"role": "assistant", "content": f"The {topic} is a lovely thing that many people enjoy seeing."}]
        prompt, response = f"user: {messages[0]['content']}", messages[1]["content"]
        rows.append({"id": example_id(prompt, response, messages), "prompt": prompt, "response": response,
                     "source": "chat", "domain": "chat", "answer": None, "messages": json.dumps(messages),
                     "meta": None})
    return pl.DataFrame(rows, schema=SCHEMA)


@pytest.fixture(scope="module")
def pool() -> pl.DataFrame:
    return gsm_pool()


@pytest.fixture(scope="module")
def injected(pool) -> pl.DataFrame:
    return inject_canaries(pool, share=0.4, seed=0)  # 24 canaries: 3 of each of the 8 kinds


def canaries_of(out: pl.DataFrame, kind: str) -> list[tuple[dict, dict]]:
    """(canary, source row) pairs of one kind."""
    by_id = {r["id"]: r for r in out.filter(pl.col(CANARY).is_null()).iter_rows(named=True)}
    return [(c, by_id[c[CANARY_OF]]) for c in out.filter(pl.col(CANARY) == kind).iter_rows(named=True)]


def test_originals_first_and_unchanged_columns_and_ids(pool, injected):
    assert injected.columns == [*pool.columns, CANARY, CANARY_OF]
    assert injected.schema[CANARY] == pl.String and injected.schema[CANARY_OF] == pl.String
    assert injected.head(pool.height).drop(CANARY, CANARY_OF).equals(pool)
    assert injected.head(pool.height)[CANARY].null_count() == pool.height
    assert injected.head(pool.height)[CANARY_OF].null_count() == pool.height
    tail = injected.slice(pool.height)
    assert tail.height == 24 and tail[CANARY].null_count() == 0
    assert injected["id"].n_unique() == injected.height
    assert set(tail[CANARY_OF]) <= set(pool["id"])
    assert tail["source"].to_list() == [f"canary:{k}" for k in tail[CANARY]]


def test_counts_split_evenly_and_sources_distinct_per_kind(injected):
    assert Counter(injected[CANARY].drop_nulls()) == {k: 3 for k in KINDS}
    for kind in KINDS:
        sources = [s["id"] for _, s in canaries_of(injected, kind)]
        assert len(set(sources)) == len(sources)


def test_uneven_split_gives_remainder_to_first_kinds(pool):
    out = inject_canaries(pool, share=0.1, kinds=["empty", "refusal", "duplicate", "swapped"], seed=3)
    assert Counter(out[CANARY].drop_nulls()) == {"empty": 2, "refusal": 2, "duplicate": 1, "swapped": 1}
    assert out.height == pool.height + 6


def test_canaries_keep_domain_answer_and_meta_of_their_source(injected):
    for kind in KINDS:
        for canary, src in canaries_of(injected, kind):
            assert (canary["domain"], canary["answer"], canary["meta"]) == (src["domain"], src["answer"], src["meta"])
            assert canary["prompt"] == src["prompt"]


def test_wrong_answer_changes_the_final_number_only(injected):
    pairs = canaries_of(injected, "wrong_answer")
    assert pairs
    for canary, src in pairs:
        assert final_answer(canary["response"]) is not None
        assert final_answer(canary["response"]) != final_answer(src["response"])
        assert final_answer(canary["response"]) != src["answer"]
        before, _, _ = src["response"].rpartition("####")
        assert canary["response"].startswith(before + "####")  # the steps are untouched


def test_wrong_answer_without_hashes_changes_the_last_number():
    rows = [{"prompt": f"p{i}", "response": f"There are {i + 3} cats, so the answer is {i * 7}."} for i in range(10)]
    df = pl.DataFrame([{**r, "id": example_id(r["prompt"], r["response"])} for r in rows])
    out = inject_canaries(df, share=0.5, kinds=["wrong_answer"], seed=1)
    pairs = canaries_of(out, "wrong_answer")
    assert len(pairs) == 5
    for canary, src in pairs:
        assert final_answer(canary["response"]) != final_answer(src["response"])
        assert canary["response"].endswith(".")
        assert canary["response"].split(",")[0] == src["response"].split(",")[0]  # earlier numbers kept


def test_swapped_takes_another_rows_response(pool, injected):
    responses = set(pool["response"])
    for canary, src in canaries_of(injected, "swapped"):
        assert canary["response"] in responses
        assert canary["response"] != src["response"]
        donor = pool.filter(pl.col("response") == canary["response"]).row(0, named=True)
        assert donor["prompt"] != src["prompt"]


def test_truncated_is_a_short_strict_prefix(injected):
    for canary, src in canaries_of(injected, "truncated"):
        cut, full = canary["response"], src["response"]
        assert 1 <= len(cut) < len(full)
        assert full.startswith(cut)
        assert len(cut) <= 0.35 * len(full)
        assert full[len(cut)].isspace()  # cut between words


def test_refusal_and_off_topic_use_the_fixed_texts(injected):
    for canary, _ in canaries_of(injected, "refusal"):
        assert canary["response"] in REFUSALS
    for canary, src in canaries_of(injected, "off_topic"):
        assert canary["response"] in OFF_TOPIC
        assert final_answer(canary["response"]) is None or canary["response"] != src["response"]


def test_duplicate_is_an_exact_copy_under_a_new_id(injected):
    for canary, src in canaries_of(injected, "duplicate"):
        assert (canary["prompt"], canary["response"]) == (src["prompt"], src["response"])
        assert canary["id"] != src["id"]


def test_near_duplicate_is_a_small_edit(injected):
    for canary, src in canaries_of(injected, "near_duplicate"):
        assert canary["response"] != src["response"]
        assert difflib.SequenceMatcher(None, canary["response"], src["response"]).ratio() > 0.8
        assert final_answer(canary["response"]) == final_answer(src["response"])  # the answer is intact


def test_empty_has_at_most_one_word(injected):
    for canary, _ in canaries_of(injected, "empty"):
        assert len(canary["response"].split()) <= 1


def test_deterministic_per_seed_and_varies_across_seeds(pool):
    a = inject_canaries(pool, share=0.2, seed=7)
    assert a.equals(inject_canaries(pool, share=0.2, seed=7))
    b = inject_canaries(pool, share=0.2, seed=8)
    assert a[CANARY_OF].to_list() != b[CANARY_OF].to_list()


def test_chat_pool_canaries_drop_messages_and_wrong_answer_needs_numbers():
    pool = chat_pool()
    kinds = [k for k in KINDS if k != "wrong_answer"]
    out = inject_canaries(pool, share=0.5, kinds=kinds, seed=2)
    tail = out.slice(pool.height)
    assert tail.height == 12 and tail["messages"].null_count() == tail.height
    assert out.head(pool.height).drop(CANARY, CANARY_OF).equals(pool)
    assert out["id"].n_unique() == out.height
    for canary, src in canaries_of(out, "near_duplicate"):
        assert canary["response"] != src["response"]
    with pytest.raises(ValueError, match="wrong_answer"):
        inject_canaries(pool, share=0.5, seed=2)


def test_canary_ids_stay_unique_when_their_text_is_already_in_the_pool():
    """Every (prompt, empty reply) pair is already a row, so every empty canary's content id is taken."""
    rows = [{"prompt": p, "response": r} for p in ("P0", "P1") for r in EMPTY_REPLIES]
    df = pl.DataFrame([{**r, "id": example_id(r["prompt"], r["response"])} for r in rows])
    out = inject_canaries(df, share=0.5, kinds=["empty", "duplicate"], seed=4)
    tail = out.slice(df.height)
    assert tail.height == 3 and out["id"].n_unique() == out.height
    assert not set(tail["id"]) & set(df["id"])
    assert out.equals(inject_canaries(df, share=0.5, kinds=["empty", "duplicate"], seed=4))


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"share": 0.0}, "share"),
        ({"share": 1.0}, "share"),
        ({"share": -0.2}, "share"),
        ({"share": float("nan")}, "share"),
        ({"kinds": []}, "kinds"),
        ({"kinds": ["empty", "gibberish"]}, "gibberish"),
        ({"kinds": ["empty", "empty"]}, "kinds"),
        ({"share": 0.05}, "pool size"),  # 60 rows * 0.05 = 3 canaries < 8 kinds
    ],
)
def test_bad_arguments_raise_naming_the_parameter(pool, kwargs, word):
    with pytest.raises(ValueError, match=word):
        inject_canaries(pool, **kwargs)


def test_unknown_kind_lists_the_known_ones(pool):
    with pytest.raises(ValueError, match="kinds.*gibberish.*wrong_answer"):
        inject_canaries(pool, kinds=["gibberish"])


def test_too_small_pools_raise_and_say_how_many_rows_are_needed(pool):
    with pytest.raises(ValueError, match="pool size.*at least 2"):
        inject_canaries(pool.head(1), share=0.5, kinds=["empty"])
    with pytest.raises(ValueError, match="pool size.*need at least 75 rows"):
        inject_canaries(pool, share=0.1)
    with pytest.raises(ValueError, match="pool size"):
        inject_canaries(gsm_pool(74), share=0.1)
    assert inject_canaries(gsm_pool(75), share=0.1).height == 75 + 8  # and 75 rows are indeed enough


def test_corrupt_replaces_rows_in_place_and_labels_them():
    """`data.noise`: the pool keeps its size, a share of rows become defects of each kind, copies sit beside
    the row they copy, and every other row is untouched."""
    from pipeline.data.canaries import NOISE, corrupt

    pool = gsm_pool(80)
    noisy = corrupt(pool, 0.4, seed=3)
    assert noisy.height == pool.height and noisy["id"].n_unique() == pool.height
    counts = Counter(noisy[NOISE].drop_nulls().to_list())
    assert sum(counts.values()) == 32 and set(counts.values()) == {4} and set(counts) == set(KINDS)
    clean = noisy.filter(pl.col(NOISE).is_null())
    assert clean.drop(NOISE).equals(pool.filter(pl.col("id").is_in(clean["id"].to_list())))  # untouched rows
    originals = set(pool["response"].to_list())
    for row in noisy.filter(pl.col(NOISE).is_not_null()).iter_rows(named=True):
        twins = noisy.filter(pl.col("prompt") == row["prompt"])
        if row[NOISE] in ("duplicate", "near_duplicate"):
            assert twins.height == 2  # the row it copies is still in the pool
        elif row[NOISE] in ("refusal", "off_topic", "empty", "wrong_answer", "truncated"):
            assert twins.height == 1 and row["response"] not in originals
    assert corrupt(pool, 0.4, seed=3).equals(noisy) and not corrupt(pool, 0.4, seed=4).equals(noisy)
