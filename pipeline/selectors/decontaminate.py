"""`decontaminate`: drop training rows that contain text of an evaluation set.

The evaluation sources (`against`) are read with the project's readers (`iter_source`: JSON Lines,
JSON, CSV/TSV, parquet, a folder of them, a saved `datasets` folder, a hub name) and EVERY string of
every record is used, recursively (nested objects, lists, chat messages' contents), each with its
file, line (JSON/JSON Lines; the record number for parquet and datasets, the row + 1 for CSV) and
field path (`question`, `messages[1].content`). A line that is not JSON is one text, field `(line)`.

Texts are normalized like `dedup`'s (lowercase, punctuation deleted, whitespace collapsed) and split
on spaces into words. A training row's texts are its prompt and response, or, when it has `messages`,
the content of every message; n-grams never span two texts.

- `ngram` (default): the row is contaminated when any `n`-gram (13) of its texts is an `n`-gram of an
  evaluation text. An evaluation text shorter than `n` words but of at least `min_words` (8) words
  counts as a whole: the row is contaminated when it contains those words in a row. Shorter
  evaluation texts (answers, labels, ids) are ignored. N-grams are compared by 64-bit hash (polars
  word hashes, a polynomial over the words): a chance collision in 1M rows x 100 n-grams against
  1M evaluation n-grams has probability about 1e-5.
- `embedding`: the row's `column` (the embedding scorer's unit vectors) against each evaluation
  record (its strings joined by newlines) embedded with `embedder` (`pipeline.models.embedder`, or
  `ctx.extras["embed_fn"](texts) -> (N, d) array` when given); contaminated when the cosine with
  the nearest record is `>= threshold` (0.9).

Reasons name the evaluation record: `dropped: decontaminate; 13-gram "w1 ... w13" matches
eval.jsonl:17 (field question)`, `dropped: decontaminate (embedding); cosine=0.93 with eval.jsonl:17`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from pipeline.core.config import DEFAULT_EMBEDDER
from pipeline.core.registry import ConfigError
from pipeline.data.examples import _looks_like_path, iter_source
from pipeline.selectors import register_selector
from pipeline.selectors.base import SelectContext, Selector
from pipeline.selectors.dedup import (
    TURNS,
    decode_turns,
    ngram_hashes,
    text_table,
    word_hashes,
    words,
)

_CHUNK_ROWS = 16_384  # training rows tokenized at once (small chunks stay in cache)


@dataclass(frozen=True)
class EvalText:
    """One string of an evaluation record and where it is."""

    source: str
    line: int
    field: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _fields(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, string) of every string inside a record, depth first."""
    if isinstance(value, str):
        yield path or "(record)", value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _fields(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _fields(v, f"{path}[{i}]")


def check_sources(against: list[str]) -> None:
    """A `ConfigError` naming the first local path that does not exist (hub names are checked when read)."""
    for src in against:
        if not Path(src).expanduser().exists() and _looks_like_path(src):
            raise ConfigError("against", f"{src}: no such file")


def eval_texts(against: list[str]) -> list[EvalText]:
    """Every string of every record of the evaluation sources, with file, line and field."""
    out: list[EvalText] = []
    for src in against:
        path = Path(src).expanduser()
        try:
            for raw in iter_source(path if path.exists() else src):
                record = raw.record
                if record is None:
                    text = raw.text if raw.text is not None else raw.raw_bytes.decode("utf-8", "replace")
                    try:
                        record = json.loads(text) if raw.error is None else None
                    except json.JSONDecodeError:
                        record = None
                    if record is None:
                        out.append(EvalText(raw.source, raw.line, "(line)", text))
                        continue
                out.extend(EvalText(raw.source, raw.line, f, t) for f, t in _fields(record))
        except (OSError, ValueError) as err:  # missing file, unloadable hub name, unreadable format
            raise ConfigError("against", (str(err).splitlines() or [type(err).__name__])[0]) from None
    return out


@dataclass
class NgramIndex:
    """Hashes of the evaluation n-grams by window length (n first), each with its first text."""

    texts: list[EvalText]
    tables: dict[int, pl.DataFrame]  # length -> (hash u64, item i64), one row per hash

    def __len__(self) -> int:
        return sum(t.height for t in self.tables.values())


def build_index(texts: list[EvalText], n: int = 13, min_words: int = 8) -> NgramIndex:
    """Every n-gram of the evaluation texts, and each text of min_words..n-1 words whole."""
    tables: dict[int, pl.DataFrame] = {}
    if texts:
        flat, lengths = words(pl.Series([t.text for t in texts], dtype=pl.String))
        wh = word_hashes(flat)
        for length in [n, *range(n - 1, min_words - 1, -1)]:
            h, seg, _ = ngram_hashes(wh, lengths, length)
            if length < n:
                keep = lengths[seg] == length
                h, seg = h[keep], seg[keep]
            if h.size:
                tables[length] = (pl.DataFrame({"hash": h, "item": seg.astype(np.int64)})
                                  .unique("hash", keep="first", maintain_order=True))
    return NgramIndex(texts, tables)


def row_texts(table: pl.DataFrame) -> pl.DataFrame:
    """(row, text) of every text of the rows: prompt and response, or every message's content; row order."""
    t = table.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    plain = (t.filter(pl.col("messages").is_null())
             .select("row", pl.concat_list("prompt", "response").alias("text")).explode("text"))
    chat_rows = t.filter(pl.col("messages").is_not_null())
    try:
        chat = (chat_rows.select("row", pl.col("messages").str.json_decode(TURNS)
                                 .list.eval(pl.element().struct.field("content").fill_null("")).alias("text"))
                .explode("text").drop_nulls("text"))
    except pl.exceptions.PolarsError:  # non-string contents: decode those rows in Python
        pairs = [(r, c) for r, m in zip(chat_rows["row"].to_list(), chat_rows["messages"].to_list(), strict=True)
                 for _, c in decode_turns(m)]
        chat = pl.DataFrame(pairs, schema={"row": pl.Int64, "text": pl.String}, orient="row")
    return pl.concat([plain, chat]).sort("row", maintain_order=True)


def ngram_matches(table: pl.DataFrame, index: NgramIndex, chunk_rows: int = _CHUNK_ROWS) -> pl.DataFrame:
    """The first evaluation match of each contaminated row: row, length, item (index of its EvalText), words."""
    found: list[pl.DataFrame] = []
    lookup = {length: tab.get_column("hash") for length, tab in index.tables.items()}
    for r0 in range(0, table.height, chunk_rows):
        texts = row_texts(table.slice(r0, chunk_rows))
        if not texts.height or not lookup:
            continue
        flat, lengths = words(texts.get_column("text"))
        wh = word_hashes(flat)
        text_row = texts.get_column("row").to_numpy() + r0
        done = np.zeros(0, dtype=np.int64)
        for length, hashes in lookup.items():  # n first: a row's reason shows its n-gram when it has one
            h, seg, start = ngram_hashes(wh, lengths, length)
            hit = np.flatnonzero(pl.Series(h).is_in(hashes.implode()).to_numpy())
            if not hit.size:
                continue
            rows = text_row[seg[hit]]
            rows, first = np.unique(rows, return_index=True)  # each row's first window (text order)
            new = ~np.isin(rows, done)
            rows, hit = rows[new], hit[first[new]]
            if not rows.size:
                continue
            done = np.concatenate([done, rows])
            gathered = flat.gather((start[hit][:, None] + np.arange(length)).reshape(-1)).to_list()
            phrase = [" ".join(gathered[i * length : (i + 1) * length]) for i in range(rows.size)]
            found.append(pl.DataFrame({"row": rows, "length": np.full(rows.size, length, dtype=np.int64),
                                       "hash": h[hit], "words": phrase})
                         .join(index.tables[length], on="hash", how="left").drop("hash"))
    schema = {"row": pl.Int64, "length": pl.Int64, "words": pl.String, "item": pl.Int64}
    if not found:
        return pl.DataFrame(schema=schema)
    return pl.concat(found).select(list(schema)).sort("row")


def _default_embed(name: str) -> Callable[[list[str]], np.ndarray]:
    def embed(texts: list[str]) -> np.ndarray:
        from pipeline.models.embedder import embed_texts, load_embedder

        tok, model = load_embedder(name)
        return embed_texts(texts, tok, model)

    return embed


@register_selector("decontaminate")
class Decontaminate(Selector):
    """Drop rows that contain an n-gram (or, with `method: embedding`, the meaning) of an evaluation record.

    `against`: evaluation files, folders or dataset names. `n` (13): words per n-gram; `min_words` (8):
    evaluation texts of min_words..n-1 words match whole. `threshold` (0.9), `column` (`embedding`),
    `embedder`: the embedding method. See the module docstring.
    """

    def __init__(self, against: list[str] | str, method: Literal["ngram", "embedding"] = "ngram", n: int = 13,
                 min_words: int = 8, threshold: float = 0.9, column: str = "embedding",
                 embedder: str = DEFAULT_EMBEDDER):
        against = [against] if isinstance(against, str) else [str(a) for a in against]
        if not against:
            raise ConfigError("against", "give at least one evaluation file, folder or dataset name")
        if method not in ("ngram", "embedding"):
            raise ConfigError("method", f"must be ngram or embedding, not {method!r}")
        if n < 1:
            raise ConfigError("n", f"must be >= 1, got {n}")
        if min_words < 1:
            raise ConfigError("min_words", f"must be >= 1, got {min_words}")
        if not 0.0 < threshold <= 1.0:
            raise ConfigError("threshold", f"must be in (0, 1], got {threshold}")
        check_sources(against)
        self.against, self.method, self.n, self.min_words = against, method, n, min_words
        self.threshold, self.column, self.embedder = threshold, column, embedder

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        ids = scores.get_column("id").cast(pl.String)
        texts = eval_texts(self.against)
        reasons = np.full(ids.len(), "kept: decontaminate", dtype=object)
        if self.method == "embedding":
            rows, why = self._embedding(scores, texts, ctx)
        else:
            index = build_index(texts, self.n, self.min_words)
            hits = ngram_matches(text_table(scores, ctx), index)
            rows = hits.get_column("row").to_numpy()
            why = [f'dropped: decontaminate; {length}-gram "{w}" matches {index.texts[i].where} '
                   f"(field {index.texts[i].field})"
                   for length, w, i in hits.select("length", "words", "item").iter_rows()]
        if len(rows):
            reasons[rows] = why
        kept = np.ones(ids.len(), dtype=bool)
        kept[rows] = False
        return pl.DataFrame({"id": ids, "kept": pl.Series(kept, dtype=pl.Boolean),
                             "weight": pl.Series(np.ones(ids.len()), dtype=pl.Float64),
                             "reason": pl.Series(reasons.tolist(), dtype=pl.String)})

    def _embedding(self, scores: pl.DataFrame, texts: list[EvalText],
                   ctx: SelectContext) -> tuple[np.ndarray, list[str]]:
        """Rows whose embedding has cosine >= threshold with an evaluation record, and their reasons."""
        import faiss

        from pipeline.selectors.sensitivity import embedding_matrix

        if self.column not in scores.columns:
            raise ConfigError("column", f"decontaminate (embedding) needs the score column {self.column!r} "
                                        "(the embedding scorer's list[float32]); the score table has: "
                                        + ", ".join(c for c in scores.columns if c != "id"))
        records: dict[tuple[str, int], list[str]] = {}
        for t in texts:
            records.setdefault((t.source, t.line), []).append(t.text)
        if not records or not scores.height:
            return np.zeros(0, dtype=np.int64), []
        where = [f"{s}:{line}" for s, line in records]
        embed = ctx.extras.get("embed_fn") or _default_embed(self.embedder)
        ev = np.ascontiguousarray(embed(["\n".join(v) for v in records.values()]), dtype=np.float32)
        x = embedding_matrix(scores.get_column(self.column)).copy()
        if ev.ndim != 2 or ev.shape[1] != x.shape[1]:
            raise ValueError(f"evaluation embeddings have shape {ev.shape}, the rows' {self.column!r} "
                             f"has {x.shape[1]} dimensions: embed both with the same embedder")
        faiss.normalize_L2(ev)
        faiss.normalize_L2(x)
        index = faiss.IndexFlatIP(ev.shape[1])
        index.add(ev)
        cos, nearest = index.search(x, 1)
        rows = np.flatnonzero(cos[:, 0] >= self.threshold)
        why = [f"dropped: decontaminate (embedding); cosine={cos[r, 0]:.2f} with {where[nearest[r, 0]]}"
               for r in rows.tolist()]
        return rows, why
