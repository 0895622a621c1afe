"""`dedup`: drop duplicate conversations, keeping the first row of every cluster of duplicates.

The text of a row is its conversation: with `messages`, every turn as `role: content` on its own
line; without, `user: <prompt>` and `assistant: <response>` (so a plain row and the same two-turn
chat are the same text). Normalization (`normalize`): lowercase, Unicode punctuation (`\\p{P}`:
`.,;:!?'"()[]{}-_/*#%&@` ...) deleted, every run of whitespace one space, ends stripped; symbols
such as `+ = < > $ ^` and all letters and digits stay. Words are the normalized text split on spaces.

Methods (one threshold each):

- `exact`: rows whose normalized texts are equal (grouped by the text itself, no hash collisions).
- `minhash` (default): MinHash of the word 5-gram shingles (a text of fewer words is one shingle),
  `num_perm` 128, banded LSH with the (bands, rows) datasketch's `MinHashLSH` picks for the
  threshold with false negatives weighted 0.95 (16 x 8 at 0.8: a pair at Jaccard 0.8 becomes a
  candidate with probability 0.95), every candidate pair confirmed by the estimated Jaccard
  `>= threshold` (0.8). The signatures are datasketch's
  `MinHash(num_perm, seed, scheme="affine32")` ones, computed vectorized with numpy (tested equal,
  bit for bit): each shingle's 32-bit hash is premixed with the MurmurHash3 finalizer and every
  permutation is `a * h + b mod 2**32`. The permutations use datasketch's default seed 1 whatever the
  run's seed: duplicates are a property of the data, so every seed of a study drops the same rows.
  A shingle's hash: polars' 64-bit hash of each word, a polynomial over the 5 words, the MurmurHash3
  64-bit finalizer, its top 32 bits. Polars keeps its string hash stable within a version only, so
  an upgrade may move the pairs that sit at the threshold.
- `embedding`: cosine similarity `>= threshold` (0.95) of the score table's `embedding` column
  (faiss inner product on L2-normalized vectors, the 32 nearest neighbours of each row; brute force,
  so quadratic in rows).

Clusters: the confirmed pairs are joined into connected components; the first row of a component
(lowest position in the score table) is kept, every row that is a duplicate of it is dropped naming
it, and the rare rows joined only through a chain of duplicates are decided in table order (dropped
as a duplicate of the first kept row of their component they match, else kept). So every dropped
row names a kept row that precedes it and matches it at the threshold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

import numpy as np
import polars as pl

from pipeline.core.registry import ConfigError
from pipeline.selectors import register_selector
from pipeline.selectors.base import SelectContext, Selector

Method = Literal["exact", "minhash", "embedding"]
DEFAULT_THRESHOLD = {"minhash": 0.8, "embedding": 0.95}
TEXT_COLUMNS = ("prompt", "response", "messages")
WORD_HASH_SEED = 0  # polars' hash of a word (stable within one polars version)
KNN = 32  # neighbours per row searched by the embedding method
# MinHashLSH's (false positive, false negative) weights: candidates are confirmed by their estimated
# Jaccard, so a false positive costs one comparison and a false negative a missed duplicate. At 0.8:
# 16 bands of 8 rows, a pair at Jaccard 0.8 is a candidate with probability 0.95 (0.40 with equal weights).
LSH_WEIGHTS = (0.05, 0.95)
TURNS = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))  # a `messages` JSON string, decoded
_BLOCK_ROWS = 128  # rows per block of the signature kernel: ~50 shingles x 128 perms x 4 B, in cache
_CHUNK_ROWS = 16_384  # rows tokenized at once (small chunks stay in cache: faster than big ones)
_U64 = np.uint64
_POLY = _U64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial n-gram hash

# ---------------------------------------------------------------------------------------------
# text


def normalize(text: pl.Expr) -> pl.Expr:
    """Lowercase, punctuation deleted, whitespace runs collapsed to one space, ends stripped."""
    return (text.str.to_lowercase().str.replace_all(r"\p{P}+", "")
            .str.replace_all(r"\s+", " ").str.strip_chars())


def _strings(value: Any) -> list[str]:
    """The strings of a turn's content: itself, or of a list of parts (`{"type": "text", "text": ...}`)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() if k != "type" for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def decode_turns(messages: str) -> list[tuple[str, str]]:
    """(role, content) of each turn of a `messages` JSON string; non-string contents give their strings."""
    turns = json.loads(messages)
    if not isinstance(turns, list):
        raise ValueError(f"messages is not a list: {messages[:80]!r}")
    return [(str(t.get("role", "")), " ".join(_strings(t.get("content")))) for t in turns if isinstance(t, dict)]


def conversation_text(table: pl.DataFrame) -> pl.Series:
    """The conversation of each row: `role: content` lines of `messages`, else `user:`/`assistant:` of prompt and response."""
    plain = pl.lit("user: ") + pl.col("prompt") + pl.lit("\nassistant: ") + pl.col("response")
    turn = (pl.element().struct.field("role").fill_null("") + ": "
            + pl.element().struct.field("content").fill_null(""))
    chat = pl.col("messages").str.json_decode(TURNS).list.eval(turn).list.join("\n")
    try:
        return table.select(pl.when(pl.col("messages").is_not_null()).then(chat).otherwise(plain)
                            .alias("text")).to_series()
    except pl.exceptions.PolarsError:  # a turn whose content is not a string: decode those rows in Python
        plain_text = table.select(plain.alias("text")).to_series()
        texts = [t if m is None else "\n".join(f"{r}: {c}" for r, c in decode_turns(m))
                 for t, m in zip(plain_text.to_list(), table.get_column("messages").to_list(), strict=True)]
        return pl.Series("text", texts, dtype=pl.String)


def text_table(scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
    """id, prompt, response, messages of the scored rows in score order (from `ctx.examples` when given)."""
    if ctx.examples is not None:
        have = [c for c in TEXT_COLUMNS if c in ctx.examples.columns]
        table = scores.select("id").join(ctx.examples.select(["id", *have]), on="id", how="left",
                                         maintain_order="left")
        where = "the example table (ctx.examples)"
    else:
        table = scores.select(["id", *[c for c in TEXT_COLUMNS if c in scores.columns]])
        where = "the score table (no ctx.examples)"
    missing = [c for c in ("prompt", "response") if c not in table.columns]
    if missing:
        raise ValueError(f"{where} has no {', '.join(missing)} column: the text of a row is its prompt "
                         "and response (or messages)")
    if "messages" not in table.columns:
        table = table.with_columns(pl.lit(None, dtype=pl.String).alias("messages"))
    lost = table.filter(pl.col("messages").is_null() & (pl.col("prompt").is_null() | pl.col("response").is_null()))
    if lost.height:
        raise ValueError(f"{lost.height} scored row(s) have no text in {where}, e.g. id {lost['id'][0]!r}")
    return table


def words(texts: pl.Series) -> tuple[pl.Series, np.ndarray]:
    """The normalized words of every text, flat, and how many each text has (an empty text is one empty word)."""
    split = pl.DataFrame({"t": texts}).select(normalize(pl.col("t")).str.split(" ").alias("w")).to_series()
    return split.explode(), split.list.len().to_numpy().astype(np.int64)


def word_hashes(flat: pl.Series) -> np.ndarray:
    """64-bit hash of each word."""
    return flat.hash(WORD_HASH_SEED).to_numpy()


# ---------------------------------------------------------------------------------------------
# hashing kernels


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection that spreads every input bit)."""
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch's affine schemes premix their input."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def ngram_hashes(hashes: np.ndarray, lengths: np.ndarray, n: int,
                 short: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash of every window of `n` consecutive words inside each segment.

    `hashes` are the word hashes of consecutive segments of `lengths` words. Returns (hash, segment,
    start) per window, in segment order. With `short`, a segment of fewer than n words gives one
    hash of all its words (so every segment has at least one); otherwise none.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    counts = np.maximum(lengths - n + 1, 1 if short else 0)
    seg = np.repeat(np.arange(lengths.size), counts)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    window_first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    start = first[seg] + (np.arange(seg.size) - window_first[seg])
    if not seg.size:
        return np.zeros(0, dtype=np.uint64), seg, start
    # every full window of the flat array (contiguous slices), then the windows inside segments
    padded = np.concatenate([hashes, np.zeros(n - 1, dtype=np.uint64)])
    full = np.zeros(hashes.size, dtype=np.uint64)
    for k in range(n):
        full *= _POLY
        full += padded[k : k + hashes.size]
    out = full[start]
    short_rows = np.flatnonzero(lengths < n) if short else np.zeros(0, dtype=np.int64)
    if short_rows.size:  # a short segment: the hash of its words alone
        lens, at = lengths[short_rows], first[short_rows]
        h = np.zeros(short_rows.size, dtype=np.uint64)
        for k in range(n):
            h = h * _POLY + np.where(k < lens, padded[np.minimum(at + k, hashes.size)], _U64(0))
        out[window_first[short_rows]] = h
    return fmix64(out), seg, start


def shingle_hashes(texts: pl.Series, shingle: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hash of every word `shingle`-gram of each text (the input datasketch's MinHash hashes), and its row."""
    flat, lengths = words(texts)
    h, seg, _ = ngram_hashes(word_hashes(flat), lengths, shingle, short=True)
    return (h >> _U64(32)).astype(np.uint32), seg


MINHASH_SEED = 1  # datasketch's default; fixed, so dedup does not vary with the run's seed


@cache
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutations (a odd, b) for `num_perm` and `seed`, as uint32 arrays."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


def signatures(hv: np.ndarray, seg: np.ndarray, n_rows: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n_rows, num_perm) uint32 MinHash signatures: min over a row's shingles of `a * fmix32(h) + b`.

    `seg` (sorted) gives each shingle's row; every row must have one at least.
    """
    x = fmix32(hv.astype(np.uint32, copy=False))
    bounds = np.searchsorted(seg, np.arange(0, n_rows + 1, dtype=np.int64))
    if (np.diff(bounds) == 0).any():
        raise ValueError("every row needs at least one shingle")
    out = np.empty((n_rows, a.size), dtype=np.uint32)
    for r0 in range(0, n_rows, _BLOCK_ROWS):  # (perm, shingle) blocks: the reduction runs along memory
        r1 = min(r0 + _BLOCK_ROWS, n_rows)
        s0, s1 = bounds[r0], bounds[r1]
        phv = a[:, None] * x[None, s0:s1]
        phv += b[:, None]
        out[r0:r1] = np.minimum.reduceat(phv, bounds[r0:r1] - s0, axis=1).T
    return out


@cache
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) datasketch's MinHashLSH picks for `threshold` with `LSH_WEIGHTS`."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    return int(lsh.b), int(lsh.r)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: one hash of each band of `rows` signature values."""
    keys = np.zeros((sig.shape[0], bands), dtype=np.uint64)
    for i in range(bands):
        h = np.zeros(sig.shape[0], dtype=np.uint64)
        for j in range(i * rows, (i + 1) * rows):
            h = h * _POLY + sig[:, j].astype(np.uint64)
        keys[:, i] = fmix64(h ^ _U64(i))
    return keys


def bucket_edges(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (later, earlier) from LSH buckets: every member with the bucket's first member
    and with the member before it (linear in rows, however big a bucket is); unique, sorted."""
    n = keys.shape[0]
    pairs = []
    for i in range(keys.shape[1]):
        order = np.argsort(keys[:, i], kind="stable")  # by key, then position
        k = keys[order, i]
        same = np.concatenate([[False], k[1:] == k[:-1]])
        if not same.any():
            continue
        group_start = np.maximum.accumulate(np.where(~same, np.arange(n), 0))
        later = order[same]
        pairs.append(later * n + order[group_start[same]])  # with the bucket's first
        prev = order[np.flatnonzero(same) - 1]
        pairs.append(later * n + prev)  # with the previous member
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    uniq = np.unique(np.concatenate(pairs).astype(np.int64))
    return uniq // n, uniq % n


# ---------------------------------------------------------------------------------------------
# clusters


SimFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _pairwise(sim: SimFn, a: np.ndarray, b: np.ndarray, batch: int = 65_536) -> np.ndarray:
    out = np.empty(a.size, dtype=np.float64)
    for s in range(0, a.size, batch):
        out[s : s + batch] = sim(a[s : s + batch], b[s : s + batch])
    return out


def resolve(n: int, a: np.ndarray, b: np.ndarray, sim: SimFn, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep-first clusters: (duplicate_of, similarity) per row, duplicate_of -1 for kept rows.

    Candidate pairs (a, b) are confirmed by `sim >= threshold` and joined into connected components.
    The first row of a component is kept and its duplicates are dropped naming it; rows of the
    component that do not match it are decided in table order against the component's kept rows.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    dup_of = np.full(n, -1, dtype=np.int64)
    score = np.full(n, np.nan)
    if a.size:
        ok = _pairwise(sim, a, b) >= threshold
        a, b = a[ok], b[ok]
    if not a.size:
        return dup_of, score
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    root = first[label]
    member = np.flatnonzero(root != np.arange(n))
    s = _pairwise(sim, member, root[member])
    hit = s >= threshold
    dup_of[member[hit]], score[member[hit]] = root[member[hit]], s[hit]
    rest = member[~hit]  # joined to the root only through other rows: greedy, in table order
    kept: dict[int, list[int]] = {}
    for row in rest[np.lexsort((rest, label[rest]))].tolist():
        keep = kept.setdefault(int(root[row]), [int(root[row])])
        cand = np.asarray(keep, dtype=np.int64)
        s = sim(np.full(cand.size, row, dtype=np.int64), cand)
        match = np.flatnonzero(s >= threshold)
        if match.size:
            dup_of[row], score[row] = cand[match[0]], s[match[0]]
        else:
            keep.append(row)
    return dup_of, score


def selection(ids: pl.Series, dup_of: np.ndarray, score: np.ndarray | None, method: str,
              measure: str = "") -> pl.DataFrame:
    """The selection table: kept rows `kept: dedup (<method>)`; the others name the kept row they duplicate."""
    kept = dup_of < 0
    drop = np.flatnonzero(~kept)
    reasons = np.full(ids.len(), f"kept: dedup ({method})", dtype=object)
    if drop.size:
        named = ids.gather(dup_of[drop]).to_list()
        if score is None:
            reasons[drop] = [f"dropped: dedup ({method}); duplicate of {k}" for k in named]
        else:
            reasons[drop] = [f"dropped: dedup ({method}); duplicate of {k} ({measure}={s:.2f})"
                             for k, s in zip(named, score[drop].tolist(), strict=True)]
    return pl.DataFrame({"id": ids, "kept": pl.Series(kept, dtype=pl.Boolean),
                         "weight": pl.Series(np.ones(ids.len()), dtype=pl.Float64),
                         "reason": pl.Series(reasons.tolist(), dtype=pl.String)})


# ---------------------------------------------------------------------------------------------
# the three methods


def exact_duplicates(texts: pl.Series) -> np.ndarray:
    """duplicate_of per row (-1 for the first of its normalized text)."""
    first = (pl.DataFrame({"t": texts}).select(normalize(pl.col("t")).alias("t")).with_row_index("pos")
             .select(pl.col("pos").min().over("t")).to_series().to_numpy().astype(np.int64))
    return np.where(first == np.arange(first.size), -1, first)


def minhash_signatures(texts: pl.Series, shingle: int = 5, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """(n, num_perm) uint32 MinHash signatures of word `shingle`-grams of the normalized texts."""
    a, b = permutations(num_perm, seed)
    out = np.empty((texts.len(), num_perm), dtype=np.uint32)
    for r0 in range(0, texts.len(), _CHUNK_ROWS):
        chunk = texts.slice(r0, _CHUNK_ROWS)
        hv, seg = shingle_hashes(chunk, shingle)
        out[r0 : r0 + chunk.len()] = signatures(hv, seg, chunk.len(), a, b)
    return out


def minhash_duplicates(texts: pl.Series, threshold: float, shingle: int, num_perm: int,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate_of, estimated Jaccard) per row from MinHash + banded LSH."""
    sig = minhash_signatures(texts, shingle, num_perm, seed)
    bands, rows = lsh_params(threshold, num_perm)
    a, b = bucket_edges(band_keys(sig, bands, rows))

    def jaccard(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return (sig[i] == sig[j]).mean(axis=1)

    return resolve(texts.len(), a, b, jaccard, threshold)


def embedding_duplicates(vectors: np.ndarray, threshold: float, k: int = KNN,
                         batch: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate_of, cosine) per row: faiss inner product on L2-normalized vectors, k nearest neighbours."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    k = min(k + 1, n)
    pairs = []
    for s in range(0, n, batch):
        d, nb = index.search(x[s : s + batch], k)
        row = np.repeat(np.arange(s, s + d.shape[0]), k)
        nb, d = nb.reshape(-1), d.reshape(-1)
        ok = (nb >= 0) & (nb != row) & (d >= threshold - 1e-6)
        lo, hi = np.minimum(row[ok], nb[ok]), np.maximum(row[ok], nb[ok])
        pairs.append(hi * n + lo)
    uniq = np.unique(np.concatenate(pairs))

    def cosine(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x[i], x[j]).astype(np.float64)

    return resolve(n, uniq // n, uniq % n, cosine, threshold)


@register_selector("dedup")
class Dedup(Selector):
    """Keep the first row of every cluster of duplicate conversations; drop the others naming it.

    `method`: `exact` (equal normalized text), `minhash` (estimated Jaccard of word `shingle`-grams
    >= `threshold`, default 0.8; permutations seeded by the run's seed) or `embedding` (cosine of the
    score column `column` >= `threshold`, default 0.95). Text and normalization: see the module docstring.
    """

    def __init__(self, method: Method = "minhash", threshold: float | None = None, shingle: int = 5,
                 num_perm: int = 128, column: str = "embedding"):
        if method not in ("exact", "minhash", "embedding"):
            raise ConfigError("method", f"must be exact, minhash or embedding, not {method!r}")
        if method == "exact" and threshold is not None:
            raise ConfigError("threshold", "method exact has no threshold (equal normalized text)")
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ConfigError("threshold", f"must be in (0, 1], got {threshold}")
        if shingle < 1:
            raise ConfigError("shingle", f"must be >= 1, got {shingle}")
        if num_perm < 2:
            raise ConfigError("num_perm", f"must be >= 2, got {num_perm}")
        self.method, self.shingle, self.num_perm, self.column = method, shingle, num_perm, column
        self.threshold = DEFAULT_THRESHOLD.get(method) if threshold is None else float(threshold)

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        ids = scores.get_column("id").cast(pl.String)
        if not scores.height:
            return selection(ids, np.zeros(0, dtype=np.int64), None, self.method)
        if self.method == "embedding":
            if self.column not in scores.columns:
                raise ConfigError("column", f"dedup (embedding) needs the score column {self.column!r} "
                                            "(the embedding scorer's list[float32]); the score table has: "
                                            + ", ".join(c for c in scores.columns if c != "id"))
            from pipeline.selectors.sensitivity import embedding_matrix

            dup_of, score = embedding_duplicates(embedding_matrix(scores.get_column(self.column)), self.threshold)
            return selection(ids, dup_of, score, "embedding", "cosine")
        texts = conversation_text(text_table(scores, ctx))
        if self.method == "exact":
            return selection(ids, exact_duplicates(texts), None, "exact")
        dup_of, score = minhash_duplicates(texts, self.threshold, self.shingle, self.num_perm, MINHASH_SEED)
        return selection(ids, dup_of, score, "minhash", "jaccard")
