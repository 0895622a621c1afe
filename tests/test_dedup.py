"""dedup: copies and near-copies dropped naming the kept row, templated conversations kept, MinHash vs
exact Jaccard and datasketch, clusters, determinism and accounting."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from pipeline.core.registry import ConfigError
from pipeline.selectors import SELECTORS, SelectContext, compose, get_selector, run_selector
from pipeline.selectors.base import summarize
from pipeline.selectors.dedup import (
    Dedup,
    band_keys,
    conversation_text,
    lsh_params,
    minhash_signatures,
    resolve,
    shingle_hashes,
    text_table,
)

RESPONSE = ("The tide rolls in with a silver hush, and gulls wheel over the harbour while the fishing boats "
            "come home under a low red sun; on the sand the children count shells and the old men mend nets.")
STORY = RESPONSE + (" Later the lamps are lit along the quay, a fiddler plays outside the inn, and the smell of "
                    "bread and tar drifts up the lane; the lighthouse keeper climbs his spiral stair, trims the "
                    "wick, and watches the last boat round the point before the fog comes in from the sea. "
                    "By midnight the village is asleep, the cats patrol the empty market, and only the bell "
                    "buoy speaks, slow and patient, to the dark water beyond the breakwater wall.")
TOPICS = {
    "ocean": "Salt wind lifts the foam, blue miles of restless water sing the moon to sleep.",
    "mountains": "Granite shoulders hold the snow, and pines climb slowly toward a thin cold sky.",
    "city": "Neon rivers flow through glass canyons where taxis hum beneath a sleepless skyline.",
    "forest": "Moss carpets hide the roots, and owls keep watch in the green cathedral of oaks.",
    "desert": "Dunes drift like amber waves while a lizard waits beside a cactus in the heat.",
}


def table(prompts: list[str], responses: list[str], messages: list[str | None] | None = None) -> pl.DataFrame:
    n = len(prompts)
    return pl.DataFrame({"id": [f"ex{i}" for i in range(n)], "prompt": prompts, "response": responses,
                         "messages": pl.Series(messages or [None] * n, dtype=pl.String)})


def run(rows: pl.DataFrame, seed: int = 0, **params) -> pl.DataFrame:
    return run_selector(get_selector("dedup", **params), rows.select("id"), seed=seed,
                        context=SelectContext(examples=rows))


def chat(*turns: tuple[str, str]) -> str:
    return json.dumps([{"role": r, "content": c} for r, c in turns])


def near_copies() -> pl.DataFrame:
    """Row 0 and variants of it (casing, whitespace, punctuation, two words changed), then an unrelated row."""
    words = STORY.split()
    edited = words.copy()
    edited[5], edited[60] = "golden", "storm"
    return table(
        ["Describe an evening at a small fishing harbour."] * 5 + ["How do I sort a list in Python?"],
        [STORY, STORY.upper(), "  ".join(words), STORY.replace(",", "").replace(";", " ;"),
         " ".join(edited), "Use sorted(xs) for a new list, or xs.sort() to sort in place."],
    )


def test_exact_copies_dropped_naming_the_kept_row():
    rows = near_copies()
    sel = run(rows, method="exact")
    assert sel["kept"].to_list() == [True, False, False, False, True, True]
    assert sel["reason"][1] == "dropped: dedup (exact); duplicate of ex0"
    assert sel["reason"][0] == "kept: dedup (exact)"


def test_minhash_drops_near_copies_and_names_the_kept_row():
    rows = near_copies()
    sel = run(rows)  # default: minhash, threshold 0.8
    assert sel["kept"].to_list() == [True, False, False, False, False, True]
    x, y = (shingles(f"user: {p}\nassistant: {r}") for p, r in rows.select("prompt", "response").rows()[0:5:4])
    assert 0.8 < len(x & y) / len(x | y) < 0.9  # 2 of 120 words changed: 10 of 124 shingles
    for reason in sel["reason"][1:5]:
        assert reason.startswith("dropped: dedup (minhash); duplicate of ex0 (jaccard=")
        assert float(reason.split("jaccard=")[1].rstrip(")")) >= 0.8
    assert sel["reason"][5] == "kept: dedup (minhash)"


def templated() -> pl.DataFrame:
    return table([f"Write a short poem about the {t}." for t in TOPICS], list(TOPICS.values()))


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_templated_distinct_conversations_are_kept(method):
    sel = run(templated(), method=method)
    assert sel["kept"].all(), sel.filter(~pl.col("kept"))["reason"].to_list()


def test_templated_prompts_with_short_distinct_answers_are_kept():
    cities = ["Paris", "Madrid", "Rome", "Berlin", "Lisbon", "Vienna"]
    countries = ["France", "Spain", "Italy", "Germany", "Portugal", "Austria"]
    rows = table([f"What is the capital of {c}?" for c in countries], [f"The capital is {c}." for c in cities])
    assert run(rows)["kept"].all()


def test_chats_sharing_first_turns_are_not_exact_duplicates():
    base = [("user", "Hi, can you help me plan a trip to Japan?"), ("assistant", "Of course! How many days?")]
    rows = table(["-"] * 3, ["-"] * 3, [
        chat(*base, ("user", "Ten days, in April."), ("assistant", "Start in Tokyo, then Kyoto and Osaka.")),
        chat(*base, ("user", "Three days in winter."), ("assistant", "Stay in Sapporo for the snow festival.")),
        chat(*base, ("user", "Ten days, in April."), ("assistant", "Start in Tokyo, then Kyoto and Osaka.")),
    ])
    sel = run(rows, method="exact")
    assert sel["kept"].to_list() == [True, True, False]
    assert sel["reason"][2] == "dropped: dedup (exact); duplicate of ex0"


def test_text_is_every_turn_and_a_plain_row_equals_the_same_chat():
    rows = table(["What is 2+2?", "user: What is 2+2?"], ["4", "4"],
                 [None, chat(("user", "What is 2+2?"), ("assistant", "4"))])
    texts = conversation_text(text_table(rows.select("id"), SelectContext(examples=rows))).to_list()
    assert texts == ["user: What is 2+2?\nassistant: 4"] * 2
    assert run(rows, method="exact")["kept"].to_list() == [True, False]


def test_message_contents_that_are_lists_of_parts():
    parts = json.dumps([{"role": "user", "content": [{"type": "text", "text": "Name a prime."}]},
                        {"role": "assistant", "content": "Seven."}])
    rows = table(["x", "y"], ["Seven.", "Seven."], [parts, chat(("user", "Name a prime."), ("assistant", "Seven."))])
    texts = conversation_text(text_table(rows.select("id"), SelectContext(examples=rows))).to_list()
    assert texts == ["user: Name a prime.\nassistant: Seven."] * 2


def test_python_fallback_gives_the_text_polars_gives():
    """A list-of-parts row sends the table through the Python decoder; a turn with no role must read the same
    there (`: text`) as on the polars path, or the same chat would hash differently by what sits beside it."""
    no_role = json.dumps([{"content": "Name a prime."}, {"role": "assistant", "content": "Seven."}])
    parts = json.dumps([{"role": "user", "content": [{"type": "text", "text": "Name a prime."}]}])

    def texts(rows: pl.DataFrame) -> list[str]:
        return conversation_text(text_table(rows.select("id"), SelectContext(examples=rows))).to_list()

    alone = texts(table(["x"], ["y"], [no_role]))
    assert alone == [": Name a prime.\nassistant: Seven."]
    assert texts(table(["x", "x"], ["y", "y"], [no_role, parts]))[0] == alone[0]


def shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    """The exact shingle set the minhash method estimates the Jaccard of (normalized words, k-grams)."""
    norm = pl.DataFrame({"t": [text]}).select(
        pl.col("t").str.to_lowercase().str.replace_all(r"\p{P}+", "").str.replace_all(r"\s+", " ")
        .str.strip_chars()).item().split(" ")
    return {tuple(norm[i : i + k]) for i in range(max(len(norm) - k + 1, 1))}


def test_minhash_estimate_is_close_to_the_exact_jaccard():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]
    base = list(rng.choice(vocab, 200))
    pairs = []
    for changes in (2, 5, 10, 20, 40, 80):
        other = base.copy()
        for i in rng.choice(len(base), changes, replace=False):
            other[i] = f"x{i}"
        pairs.append((" ".join(base), " ".join(other)))
    texts = pl.Series([t for p in pairs for t in p])
    sig = minhash_signatures(texts, seed=3)
    for i, (x, y) in enumerate(pairs):
        sx, sy = shingles(x), shingles(y)
        exact = len(sx & sy) / len(sx | sy)
        estimate = float((sig[2 * i] == sig[2 * i + 1]).mean())
        assert abs(estimate - exact) <= 4 * math.sqrt(exact * (1 - exact) / 128) + 0.02, (exact, estimate)


def test_signatures_equal_datasketch_minhash():
    from datasketch import MinHash

    texts = pl.Series(["The quick brown fox jumps over the lazy dog, again and again.", "hi", "",
                       "one two three four five", RESPONSE])
    hv, seg = shingle_hashes(texts, 5)
    assert np.array_equal(np.bincount(seg), [len(shingles(t)) for t in texts.to_list()])
    sig = minhash_signatures(texts, num_perm=64, seed=11)
    for i in range(texts.len()):
        m = MinHash(num_perm=64, seed=11, scheme="affine32", hashfunc=lambda h: h)
        m.update_batch(hv[seg == i].tolist())
        assert np.array_equal(m.hashvalues, sig[i])


def test_lsh_buckets_equal_datasketch_minhash_lsh():
    from datasketch import MinHash, MinHashLSH

    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(300)]
    base = [list(rng.choice(vocab, 40)) for _ in range(6)]
    texts = []
    for b in base:
        for changes in (0, 1, 3, 6, 12):
            t = b.copy()
            for i in rng.choice(40, changes, replace=False):
                t[i] = "zz"
            texts.append(" ".join(t))
    texts_s = pl.Series(texts)
    sig = minhash_signatures(texts_s, seed=5)
    bands, rows = lsh_params(0.8, 128)
    keys = band_keys(sig, bands, rows)
    assert keys.shape == (len(texts), bands)
    lsh = MinHashLSH(threshold=0.8, num_perm=128, weights=(0.05, 0.95))
    assert (lsh.b, lsh.r) == (bands, rows) == (16, 8)
    hv, seg = shingle_hashes(texts_s, 5)
    sketches = []
    for i in range(len(texts)):
        m = MinHash(num_perm=128, seed=5, hashfunc=lambda h: h)
        m.update_batch(hv[seg == i].tolist())
        lsh.insert(i, m)
        sketches.append(m)
    for i, m in enumerate(sketches):
        ours = {j for j in range(len(texts)) if (keys[i] == keys[j]).any()}
        assert ours == set(lsh.query(m))


def test_embedding_method_with_a_fake_embedding_column():
    v = np.array([[1, 0, 0, 0], [0.999, 0.02, 0, 0], [0, 1, 0, 0], [2, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    scores = pl.DataFrame({"id": ["a", "b", "c", "d", "e"], "embedding": v.tolist()})
    sel = run_selector(get_selector("dedup", method="embedding"), scores)
    assert sel["kept"].to_list() == [True, False, True, False, True]
    assert sel["reason"][1] == "dropped: dedup (embedding); duplicate of a (cosine=1.00)"
    assert sel["reason"][3] == "dropped: dedup (embedding); duplicate of a (cosine=1.00)"
    sel = run_selector(get_selector("dedup", method="embedding", threshold=0.99999), scores)
    assert sel["kept"].to_list() == [True, True, True, False, True]


def test_embedding_method_needs_the_column():
    with pytest.raises(ConfigError, match="column: dedup .embedding. needs the score column 'embedding'"):
        compose(pl.DataFrame({"id": ["a"], "ppl": [1.0]}), [{"rule": "dedup", "method": "embedding"}])


def test_chained_duplicates_keep_every_row_no_kept_row_matches():
    """a~b and b~c but not a~c: a kept, b dropped naming a, c kept (its only match is dropped), d~c dropped naming c."""
    theta = math.acos(0.96)
    angles = [0.0, theta, 2 * theta, 2 * theta + 0.01]
    v = np.array([[math.cos(t), math.sin(t)] for t in angles], dtype=np.float32)
    scores = pl.DataFrame({"id": ["a", "b", "c", "d"], "embedding": v.tolist()})
    sel = run_selector(get_selector("dedup", method="embedding"), scores)
    assert sel["kept"].to_list() == [True, False, True, False]
    assert "duplicate of a" in sel["reason"][1] and "duplicate of c" in sel["reason"][3]


def test_resolve_keeps_the_first_row_of_a_component():
    sim = np.array([[1, .9, .9, 0], [.9, 1, .9, 0], [.9, .9, 1, 0], [0, 0, 0, 1]])
    dup_of, score = resolve(4, np.array([2, 1]), np.array([1, 0]), lambda i, j: sim[i, j], 0.8)
    assert dup_of.tolist() == [-1, 0, 0, -1]
    assert score[1] == pytest.approx(0.9)


def test_resolve_counts_a_similarity_equal_to_the_threshold_as_a_duplicate():
    """`similarity >= threshold` is a duplicate, at the first confirmation and against the component's root."""
    sim = np.array([[1, .8, 0], [.8, 1, .8], [0, .8, 1]])
    dup_of, score = resolve(3, np.array([1, 2]), np.array([0, 1]), lambda i, j: sim[i, j], 0.8)
    assert dup_of.tolist() == [-1, 0, -1] and score[1] == pytest.approx(0.8)  # row 2 is 0.8 from 1, 0 from kept 0


def test_fmix64_is_murmurhash3s_finalizer():
    """Checked against MurmurHash3's fmix64 written with Python integers (mod 2**64)."""
    from pipeline.selectors.dedup import fmix64

    def reference(h: int) -> int:
        mask = 2**64 - 1
        h ^= h >> 33
        h = (h * 0xFF51AFD7ED558CCD) & mask
        h ^= h >> 33
        h = (h * 0xC4CEB9FE1A85EC53) & mask
        return h ^ (h >> 33)

    values = [0, 1, 2**33 + 5, 0xDEADBEEFCAFEBABE, 2**64 - 1]
    assert fmix64(np.array(values, dtype=np.uint64)).tolist() == [reference(v) for v in values]


def test_ngram_hashes_of_segments_shorter_than_n_are_empty_unless_short():
    from pipeline.selectors.dedup import ngram_hashes

    words = np.arange(1, 4, dtype=np.uint64)  # one segment of 3 words
    h, seg, start = ngram_hashes(words, np.array([3]), 5)
    assert h.size == seg.size == start.size == 0
    h, seg, start = ngram_hashes(words, np.array([3]), 5, short=True)
    assert h.size == seg.size == start.size == 1 and seg.tolist() == [0] and start.tolist() == [0]


def test_every_id_exactly_once_and_large_clusters():
    """2,000 copies of one text and 500 distinct rows: one copy kept, every id accounted for."""
    rng = np.random.default_rng(0)
    distinct = [" ".join(rng.choice([f"w{i}" for i in range(5000)], 30)) for _ in range(500)]
    rows = table(["Q"] * 2500, [RESPONSE] * 2000 + distinct)
    for method in ("exact", "minhash"):
        sel = run(rows, method=method)
        summary = summarize(sel)
        assert sel["id"].to_list() == rows["id"].to_list()
        assert summary["kept"] + summary["dropped"] == summary["read"] == 2500
        assert summary["kept"] == 501
        dropped = sel.filter(~pl.col("kept"))["reason"]
        assert dropped.str.contains("duplicate of ex0 ").all() if method == "minhash" else \
            dropped.str.ends_with("duplicate of ex0").all()


def test_deterministic_and_order_independent_kept_texts():
    rows = pl.concat([near_copies(), templated()]).with_columns(
        pl.format("ex{}", pl.int_range(pl.len())).alias("id"))
    for method in ("exact", "minhash"):
        first = run(rows, seed=4, method=method)
        assert first.equals(run(rows, seed=4, method=method))
        shuffled = rows.sample(fraction=1.0, shuffle=True, seed=7)
        again = run(shuffled, seed=4, method=method)
        assert again["kept"].sum() == first["kept"].sum()
        if method == "exact":  # the same texts survive, whichever copy comes first
            def kept_texts(sel, src):
                ids = sel.filter(pl.col("kept"))["id"]
                norm = pl.col("response").str.to_lowercase().str.replace_all(r"\p{P}+", "").str.replace_all(r"\s+", " ")
                return set(src.filter(pl.col("id").is_in(ids.implode())).select(norm).to_series().to_list())

            assert kept_texts(first, rows) == kept_texts(again, shuffled)


def test_text_from_the_score_table_without_examples_and_errors():
    rows = near_copies()
    sel = run_selector(get_selector("dedup", method="exact"), rows)
    assert sel["kept"].sum() == 3
    with pytest.raises(ValueError, match="has no prompt, response column"):
        run_selector(get_selector("dedup"), rows.select("id"))
    with pytest.raises(ValueError, match="1 scored row.s. have no text .* id 'zz'"):
        run_selector(get_selector("dedup"), pl.DataFrame({"id": ["ex0", "zz"]}), context=SelectContext(examples=rows))


def test_parameters_are_checked():
    assert SELECTORS.get("dedup") is Dedup
    assert get_selector("dedup").threshold == 0.8
    assert get_selector("dedup", method="embedding").threshold == 0.95
    with pytest.raises(ConfigError, match="select.method"):
        get_selector("dedup", method="fuzzy")
    with pytest.raises(ConfigError, match="select.threshold: method exact has no threshold"):
        get_selector("dedup", method="exact", threshold=0.5)
    with pytest.raises(ConfigError, match="select.threshold: must be in"):
        get_selector("dedup", threshold=1.5)
    with pytest.raises(ConfigError, match="select.shingel"):
        get_selector("dedup", shingel=3)


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_empty_and_single_row_tables(method):
    rows = near_copies()
    assert run(rows.head(0), method=method).height == 0
    assert run(rows.head(1), method=method)["kept"].to_list() == [True]


def test_signatures_do_not_depend_on_the_chunk_size(monkeypatch):
    """Rows are hashed in chunks; a pool longer than a chunk gets the signatures of one pass."""
    import pipeline.selectors.dedup as dedup

    texts = pl.Series([STORY, RESPONSE, "", "one two three", STORY.upper(), "a b c d e f g", RESPONSE + " end"])
    whole = minhash_signatures(texts, seed=2)
    monkeypatch.setattr(dedup, "_CHUNK_ROWS", 3)
    assert np.array_equal(minhash_signatures(texts, seed=2), whole)


def test_embedding_pair_found_only_from_the_later_row():
    """Row 0's one searched neighbour is row 1, yet row 2 (cosine 0.958 with row 0, 0.952 with row 1)
    still joins row 0: a pair counts from either side, neighbour 0 included."""
    from pipeline.selectors.dedup import embedding_duplicates

    v = np.array([[math.cos(t), math.sin(t)] for t in (0.0, 0.02, -0.29)], dtype=np.float32)
    dup_of, _ = embedding_duplicates(v, threshold=0.955, k=1)
    assert dup_of.tolist()[1:] == [0, 0]


def test_parameter_edges_are_accepted():
    assert get_selector("dedup", num_perm=2).num_perm == 2
    assert get_selector("dedup", threshold=1.0).threshold == 1.0
    with pytest.raises(ConfigError, match="select.num_perm"):
        get_selector("dedup", num_perm=1)
    with pytest.raises(ConfigError, match="select.shingle"):
        get_selector("dedup", shingle=0)
