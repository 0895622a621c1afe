"""The canonical SFT example table, its readers and validation.

Every example is a row of `SCHEMA`: a content-hash `id`, `prompt`, `response`, `source`, `domain`,
optional gold `answer`, optional chat `messages` (strict JSON) and free `meta` (strict JSON); `ingest`
adds `data_weight` when a record carries a loss weight (`pipeline.data.weights`).
Readers turn JSON Lines, JSON, CSV/TSV (each optionally .gz/.bz2/.xz), parquet, a folder of such
files, a `datasets` name or folder, or the bundled math data into (examples, quarantine) where the
quarantine holds every rejected record with its line, field, reason and raw text (plus its exact
bytes when they were not UTF-8): rows kept + rows quarantined = records read.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import json
import lzma
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.config import DEFAULT_MAX_CHARS
from pipeline.core.io import MAX_DEPTH, nesting_depth
from pipeline.data.weights import DATA_WEIGHT, canonical_turn, chat_weight_problem, parse_weight

SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String,
    "prompt": pl.String,
    "response": pl.String,
    "source": pl.String,
    "domain": pl.String,
    "answer": pl.String,
    "messages": pl.String,
    "meta": pl.String,
}
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String,
    "line": pl.Int64,
    "field": pl.String,
    "reason": pl.String,
    "raw": pl.String,
    "raw_b64": pl.String,  # base64 of the record's exact bytes when they were not UTF-8, else null
}

# Field names accepted for prompt and response when a record does not use ours.
PROMPT_ALIASES = ("prompt", "instruction", "question", "input", "query")
RESPONSE_ALIASES = ("response", "completion", "output", "answer_cot", "solution", "answer")

COMPRESSIONS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
CSV_SEPARATORS = {".csv": ",", ".tsv": "\t"}
# Keys under which a top-level JSON object may hold its list of records (the split name first).
RECORD_LIST_KEYS = ("data", "examples", "train", "records", "rows", "instances", "items")
FORMATS = (".jsonl, .ndjson, .json (lines, an array, or an object with its records under 'data'), "
           ".csv, .tsv (these also as .gz, .bz2, .xz), .parquet, a folder of them, "
           "a datasets.save_to_disk folder, or a hub dataset name")
INGEST_CHUNK = 50_000  # rows validated into one columnar frame at a time
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class DataError(ValueError):
    """A bad record, reported as `file:line: field: reason`."""

    def __init__(self, source: str, line: int, field: str, reason: str):
        self.source, self.line, self.field, self.reason = source, line, field, reason
        super().__init__(f"{source}:{line}: {field}: {reason}")


def example_id(prompt: str, response: str, messages: list | None = None) -> str:
    """Stable content hash of an example: same text, same id, on every machine.

    A chat's id also covers its whole conversation (`messages`: every turn, every key), so two chats
    that differ anywhere, an earlier assistant turn included, get different ids.
    """
    h = hashlib.sha256()
    h.update(prompt.encode("utf-8"))
    h.update(b"\x00")
    h.update(response.encode("utf-8"))
    if messages is not None:
        h.update(b"\x00messages\x00")
        h.update(json.dumps(_jsonable(messages), sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                            allow_nan=False).encode("utf-8"))
    return h.hexdigest()[:16]



def empty_examples() -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMA)


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


@dataclass
class Raw:
    """One record as read, before validation: where it came from and its text."""

    source: str
    line: int
    text: str | None  # None when the bytes were not valid UTF-8
    raw_bytes: bytes = b""
    record: Any = None  # already-parsed object (parquet / datasets rows)
    error: str | None = None  # the reader's reason when the record could not be cut out cleanly


@dataclass
class Validator:
    """Turns raw records into canonical rows, or quarantine rows with a reason."""

    source: str
    domain: str = "default"
    fields: dict[str, str] = field(default_factory=dict)  # canonical name -> field in the record
    max_chars: int = DEFAULT_MAX_CHARS
    seen: set[str] = field(default_factory=set)

    def rename(self, rec: dict) -> dict:
        """The record under our field names where `fields` maps them: a mapped `messages` field becomes
        `messages`, a mapped `id` is kept in meta as `source_id` (our `id` is the content hash)."""
        out = dict(rec)
        for canon, target in (("messages", "messages"), ("id", "source_id")):
            name = self.fields.get(canon)
            if name and name != target and name in out:
                out[target] = out.pop(name)
        return out

    def __call__(self, raw: Raw) -> tuple[dict | None, dict | None]:
        """Return (row, None) for a good record or (None, quarantine_row)."""

        def bad(fld: str, reason: str) -> tuple[None, dict]:
            text, b64 = raw.text, None
            if text is None and raw.record is not None:
                text = _dumps(raw.record)
            elif text is None:  # not UTF-8: readable text here, the exact bytes in raw_b64
                text = raw.raw_bytes.decode("utf-8", "backslashreplace")
                b64 = base64.b64encode(raw.raw_bytes).decode("ascii")
            return None, {"source": raw.source, "line": raw.line, "field": fld, "reason": reason, "raw": text,
                          "raw_b64": b64}

        if raw.error is not None:
            return bad("*", raw.error)
        if raw.record is None and raw.text is None:
            return bad("*", "not_utf8: bytes are not valid UTF-8")
        rec = raw.record
        if rec is None:
            try:
                rec = json.loads(raw.text)
            except json.JSONDecodeError as e:
                return bad("*", f"bad_json: {e.msg} at column {e.colno}")
            except RecursionError:
                return bad("*", f"bad_json: nested deeper than {MAX_DEPTH} levels")
        if problem := _json_problem(rec):
            return bad("*", problem)
        if not isinstance(rec, dict):
            return bad("*", f"not_object: expected a JSON object, got {type(rec).__name__}")
        rec = self.rename(rec)

        chat_key = next((k for k in CHAT_FIELDS if rec.get(k) is not None), None)
        chat = None
        if chat_key is not None:  # a chat is the example: prompt and response summarize it
            chat = _chat(rec[chat_key])
            if isinstance(chat, str):
                return bad(chat_key, chat)
            if problem := chat_weight_problem(chat):  # a turn's loss_weight (pipeline.data.weights)
                return bad(chat_key, problem)
            prompt, response = _chat_summary(chat)
            rec = {**{k: v for k, v in rec.items() if k != chat_key}, "prompt": prompt, "response": response,
                   "messages": chat}

        values: dict[str, str] = {}
        merged: set[str] = set()  # fields folded into the prompt, so not repeated in meta
        for canon, aliases in (("prompt", PROMPT_ALIASES), ("response", RESPONSE_ALIASES)):
            name = canon if chat is not None else self.fields.get(canon) or next((a for a in aliases if a in rec), None)
            if name is None or name not in rec:
                return bad(self.fields.get(canon, canon), "missing_field")
            value = rec[name]
            if value is None:
                return bad(name, "missing_field: value is null")
            if not isinstance(value, str):
                return bad(name, f"wrong_type: expected string, got {type(value).__name__}")
            if not value.strip():
                return bad(chat_key or name, f"empty_field: the chat's {canon} is empty" if chat else "empty_field")
            if canon == "prompt" and name == "instruction" and rec.get("input") is not None:
                extra = rec["input"]  # Alpaca: the prompt is the instruction, a blank line, the input
                if not isinstance(extra, str):
                    return bad("input", f"wrong_type: expected string, got {type(extra).__name__}")
                if extra.strip():
                    value = f"{value}\n\n{extra}"
                    merged.add("input")
            if len(value) > self.max_chars:
                return bad(chat_key or name, f"too_long: {len(value)} chars > max_chars={self.max_chars}")
            values[canon] = value

        weight_field = self.fields.get("weight", "weight")  # the per-example loss weight (pipeline.data.weights)
        data_weight = None if rec.get(weight_field) is None else parse_weight(rec[weight_field])
        if isinstance(data_weight, str):
            return bad(weight_field, f"bad_weight: {weight_field} {data_weight}")
        if data_weight == 0:
            return bad(weight_field, f"zero_weight: {weight_field} is 0, nothing of this example to train")
        ex_id = example_id(values["prompt"], values["response"], chat)
        if ex_id in self.seen:
            same = "conversation" if chat else "prompt and response"
            return bad("id", f"duplicate_id: {ex_id} (same {same} seen before)")
        self.seen.add(ex_id)
        answer = rec.get(self.fields.get("answer", "answer"))
        meta = {k: v for k, v in rec.items() if k not in {"prompt", "response", "messages", weight_field, *merged}}
        row = {
            "id": ex_id,
            "prompt": values["prompt"],
            "response": values["response"],
            "source": str(rec.get("source") or self.source),
            "domain": str(rec.get(self.fields.get("domain", "domain")) or self.domain),
            "answer": None if answer is None else str(answer),
            "messages": _dumps(chat) if chat is not None else None,
            "meta": _dumps(meta) if meta else None,
            DATA_WEIGHT: data_weight,
        }
        return row, None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_problem(value: Any) -> str | None:
    """Why a parsed record cannot be kept as text: nested deeper than MAX_DEPTH, or a string holding a lone
    surrogate (`"\\ud800"` is valid JSON but not Unicode text); None when it is fine. Walks without recursion."""
    if nesting_depth(value) > MAX_DEPTH:
        return f"bad_json: nested deeper than {MAX_DEPTH} levels"
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return "bad_json: a string holds a lone surrogate escape (\\ud800-\\udfff), which is not Unicode text"
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _jsonable(value: Any) -> Any:
    """`value` as plain JSON types (NaN/inf -> null, containers recursed), so dumps are strict JSON."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [_jsonable(v) for v in sorted(value, key=repr)]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars, without importing numpy
        return _jsonable(value.tolist())
    return str(value)  # dates, decimals, ...: their text, as before


def _dumps(value: Any) -> str:
    """Strict JSON text of a value (no NaN, no Python reprs): what `meta` and `messages` hold."""
    return json.dumps(_jsonable(value), ensure_ascii=False, allow_nan=False)


# Fields holding a chat, ours first, then ShareGPT's; a turn is role/content or ShareGPT's from/value.
CHAT_FIELDS = ("messages", "conversations")
CHAT_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def _chat(messages: Any) -> list[dict] | str:
    """A chat as a list of {role, content, ...} turns, or a reason string.

    Turns are ours (`role`, `content`) or ShareGPT's (`from`, `value`); roles human/gpt become
    user/assistant; other keys of a turn are kept. JSON text holding a list is read (a parquet column).
    """
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            return "wrong_type: messages must be a list of turns, got a string that is not JSON"
    if not isinstance(messages, list) or not messages:
        return "wrong_type: messages must be a non-empty list"
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"wrong_type: turn {i} is a {type(m).__name__}, not an object"
        role_key = next((k for k in ("role", "from") if k in m), None)
        content_key = next((k for k in ("content", "value") if k in m), None)
        if role_key is None or content_key is None:
            return f"missing_field: turn {i} needs role and content (or from and value)"
        role = CHAT_ROLES.get(m[role_key]) if isinstance(m[role_key], str) else None
        if role is None:
            return f"unknown_role: turn {i} has role {m[role_key]!r}; known: {', '.join(CHAT_ROLES)}"
        if not isinstance(m[content_key], str):
            return f"wrong_type: turn {i}: content must be a string, got {type(m[content_key]).__name__}"
        if role != "system" and not m[content_key].strip():
            return f"empty_field: turn {i} ({role}) has empty content"
        extra = {k: v for k, v in m.items() if k not in (role_key, content_key)}
        turn = canonical_turn({"role": role, "content": m[content_key], **extra}, i)  # peers' turn-weight keys
        if isinstance(turn, str):
            return turn
        turns.append(turn)
    if not any(t["role"] == "assistant" for t in turns):
        return "missing_field: the chat has no assistant turn"
    if turns[-1]["role"] != "assistant":
        return "missing_field: last message is not from the assistant"
    if turns[0]["role"] == "assistant":
        return "bad_order: the chat starts with an assistant turn, with nothing before it to answer"
    return turns


def _chat_summary(turns: list[dict]) -> tuple[str, str]:
    """(prompt, response) for display: `role: content` lines of every turn but the last, and the last reply."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns[:-1]), turns[-1]["content"]


def _open_bytes(path: Path) -> Any:
    """Open a file for reading bytes, decompressing .gz, .bz2 and .xz by suffix (any case)."""
    opener = COMPRESSIONS.get(path.suffix.lower())
    return opener(path, "rb") if opener else open(path, "rb")  # the caller closes it


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes in chunks: decompressed, a UTF-8 BOM dropped, UTF-16 (with BOM) as UTF-8."""
    try:
        with _open_bytes(path) as f:
            head = f.read(4)
            if head.startswith(_UTF16_BOMS):  # e.g. PowerShell's `>`: the whole file in UTF-16
                yield (head + f.read()).decode("utf-16").encode("utf-8")
                return
            yield head.removeprefix(_BOM)
            while chunk := f.read(1 << 20):
                yield chunk
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: starts with a UTF-16 byte order mark but is not UTF-16: {e.reason}") from e
    except (OSError, EOFError, lzma.LZMAError) as e:  # unreadable, or a broken/truncated archive
        raise ValueError(f"{path}: cannot read: {e}") from e


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines of a byte stream ended by \\n, \\r\\n or a lone \\r (old Mac), without their endings."""
    tail = b""
    for chunk in chunks:
        lines = (tail + chunk).splitlines(keepends=True)  # bytes split only on \r, \n, \r\n
        tail = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""  # unfinished, or \r + ?
        for line in lines:
            yield line.rstrip(b"\r\n")
    yield from tail.splitlines()


def _line_raws(source: str, chunks: Iterable[bytes]) -> Iterator[Raw]:
    """One Raw per non-blank line (1-based line numbers); lines that are not UTF-8 keep their bytes."""
    for i, line in enumerate(_split_lines(chunks), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError:
            yield Raw(source, i, None, raw_bytes=stripped)
            continue
        yield Raw(source, i, text)


def iter_jsonl(path: Path) -> Iterator[Raw]:
    """Yield every line of a JSONL file as a Raw record (1-based line numbers, blank lines skipped)."""
    yield from _line_raws(str(path), _chunks(Path(path)))


class _Lines:
    """1-based line number of a position in a text, counting \\n, \\r\\n and lone \\r; positions rise."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        t, a = self.text, self.pos
        self.line += t.count("\n", a, pos) + t.count("\r", a, pos) - t.count("\r\n", a, pos)
        self.pos = pos
        return self.line


def _span_raw(source: str, line: int, span: str, record: Any = None, error: str | None = None) -> Raw:
    """A Raw for a piece of a JSON document; bytes that were not UTF-8 come back exactly."""
    try:
        span.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the file's non-UTF-8 bytes (surrogateescape)
        return Raw(source, line, None, raw_bytes=span.encode("utf-8", "surrogateescape"), error=error)
    return Raw(source, line, span, record=record, error=error)


def _space(text: str, pos: int) -> int:
    """Position of the first non-whitespace character at or after `pos` (JSON whitespace)."""
    m = _JSON_SPACE.match(text, pos)
    return m.end() if m else pos


def _walk_array(source: str, text: str, pos: int, lines: _Lines) -> tuple[list[Raw], int, bool]:
    """Elements of the JSON array starting at `pos` as Raws at their starting lines.

    Returns (raws, end, complete). A syntax error ends the walk: the rest of the text becomes one
    bad_json record, so nothing is lost and nothing is guessed.
    """
    raws: list[Raw] = []
    pos = _space(text, pos + 1)
    while not text.startswith("]", pos):
        try:
            record, end = _DECODER.raw_decode(text, pos)
        except RecursionError:  # too deep for the decoder: skip exactly this element when its brackets close
            end = _value_end(text, pos)
            rest = "" if end is not None else "; the rest of the file is this one record"
            raws.append(_span_raw(source, lines.at(pos), text[pos:end], error=f"bad_json: nested deeper than "
                                                                                f"{MAX_DEPTH} levels{rest}"))
            if end is None:
                return raws, len(text), False
        except json.JSONDecodeError as e:
            line = lines.at(pos)
            reason = f"bad_json: {e.msg} at line {lines.at(e.pos)}; the rest of the file is this one record"
            raws.append(_span_raw(source, line, text[pos:], error=reason))
            return raws, len(text), False
        else:
            raws.append(_span_raw(source, lines.at(pos), text[pos:end], record=record))
        pos = _space(text, end)
        if text.startswith(",", pos):
            pos = _space(text, pos + 1)  # a trailing comma before ']' is forgiven
        elif not text.startswith("]", pos):
            line = lines.at(pos)
            reason = (f"bad_json: expected ',' or ']' after an element at line {line}; "
                      "the rest of the file is this one record")
            raws.append(_span_raw(source, line, text[pos:], error=reason))
            return raws, len(text), False
    return raws, pos + 1, True


def _value_end(text: str, pos: int) -> int | None:
    """End of the JSON array or object starting at `pos`, by its brackets (strings skipped), without
    recursion; None when they never close."""
    depth, i, n = 0, pos, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _records_key(source: str, obj: dict, split: str) -> str | None:
    """The key under which a top-level JSON object holds its records, or None if it is one record."""
    if any(k in obj for k in (*PROMPT_ALIASES, *RESPONSE_ALIASES, *CHAT_FIELDS)):
        return None
    lists = [k for k, v in obj.items() if isinstance(v, list)]
    if split in lists:
        return split
    named = [k for k in RECORD_LIST_KEYS if k in lists]
    if len(named) > 1:
        raise ValueError(f"{source}: a JSON object with several lists ({', '.join(named)}): "
                         "keep one, or give the records as JSON Lines or a JSON array")
    if named:
        return named[0]
    holders = [k for k in lists if obj[k] and all(isinstance(x, dict) for x in obj[k])]
    if holders:
        raise ValueError(f"{source}: a JSON object holding its records under {holders[0]!r}; put them "
                         f"under one of {', '.join(RECORD_LIST_KEYS)}, or use JSON Lines or a JSON array")
    return None


def _member_start(text: str, pos: int, key: str) -> int:
    """Position of the value of `key` in the (valid) JSON object starting at `pos`."""
    pos = _space(text, pos + 1)
    while True:
        name, pos = _DECODER.raw_decode(text, pos)
        pos = _space(text, _space(text, pos) + 1)  # past ':'
        if name == key:
            return pos
        _, pos = _DECODER.raw_decode(text, pos)
        pos = _space(text, _space(text, pos) + 1)  # past ','


def _json_document(source: str, data: bytes, split: str) -> list[Raw] | None:
    """Records of a .json file holding one JSON value (an array, or an object), or None for JSON Lines."""
    text = data.decode("utf-8", "surrogateescape")  # non-UTF-8 bytes survive, per record
    start = _space(text, 0)
    lines = _Lines(text)
    if text.startswith("[", start):
        raws, end, complete = _walk_array(source, text, start, lines)
        return None if complete and text[end:].strip() else raws  # `[..]` then more lines: JSON Lines
    if not text.startswith("{", start):
        return None
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except (json.JSONDecodeError, RecursionError):
        return None  # e.g. JSON Lines whose first line is broken (or too deep): read line by line
    if text[end:].strip():
        return None  # one object per line
    key = _records_key(source, obj, split)
    if key is None:
        return [_span_raw(source, lines.at(start), text[start:end], record=obj)]
    pos = _member_start(text, start, key)
    if not text.startswith("[", pos):
        raise ValueError(f"{source}: {key!r} holds a {type(obj[key]).__name__}, not a list of records")
    return _walk_array(source, text, pos, lines)[0]


def iter_json(path: Path, split: str = "train") -> Iterator[Raw]:
    """Records of a .json file: a JSON array, an object with its records under a key, or JSON Lines."""
    data = b"".join(_chunks(path))
    raws = _json_document(str(path), data, split)
    yield from _line_raws(str(path), [data]) if raws is None else raws


def iter_csv(path: Path, separator: str) -> Iterator[Raw]:
    """Rows of a CSV/TSV file with a header, all as strings; line = row number + 1 (the header)."""
    data = b"".join(_chunks(path))
    if not data.strip():
        return
    try:
        df = pl.read_csv(io.BytesIO(data), separator=separator, infer_schema=False,
                         quote_char='"' if separator == "," else None)
    except pl.exceptions.PolarsError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: cannot read as {'CSV' if separator == ',' else 'TSV'}: {first}") from e
    for i, row in enumerate(df.iter_rows(named=True), start=2):
        yield Raw(str(path), i, _dumps(row), record=row)


def iter_rows(name: str, rows: Any) -> Iterator[Raw]:
    """Yield parsed rows (parquet, datasets) as Raw records numbered from 1."""
    for i, row in enumerate(rows, start=1):
        yield Raw(name, i, _dumps(row), record=row)


def _reader(path: Path, split: str) -> Callable[[], Iterator[Raw]] | None:
    """How to read a file, chosen by its suffix (any case, after .gz/.bz2/.xz), or None if unknown."""
    name = path.name.lower()
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), None)
    fmt = Path(name.removesuffix(compression or "")).suffix
    if fmt in {".jsonl", ".ndjson"}:
        return lambda: iter_jsonl(path)
    if fmt == ".json":
        return lambda: iter_json(path, split)
    if fmt in CSV_SEPARATORS:
        return lambda: iter_csv(path, CSV_SEPARATORS[fmt])
    if fmt == ".parquet" and compression is None:
        return lambda: iter_rows(str(path), pl.read_parquet(path, glob=False).iter_rows(named=True))
    return None


def _is_saved_dataset(path: Path) -> bool:
    """True for a folder written by `datasets` save_to_disk (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))


def _looks_like_path(source: str) -> bool:
    """True when `source` is meant as a file, not a hub name like 'org/name' or 'org/name-2.5'."""
    if source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1:
        return True
    if "/" in source and Path(source).parent.is_dir():
        return True
    return re.fullmatch(r"\.[A-Za-z][A-Za-z0-9]*", Path(source.partition(":")[0]).suffix) is not None


def _iter_folder(path: Path, split: str) -> Iterator[Raw]:
    """Records of every data file in a folder and its subfolders, file by file in path order (hidden files
    and folders skipped); files of a format the readers do not take are named on stderr as skipped."""
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    readers, skipped = [], []
    for p in files:
        read = _reader(p, split)
        (readers if read is not None else skipped).append(read or p)
    if skipped:
        import sys

        shown = ", ".join(str(p.relative_to(path)) for p in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        print(f"[pipeline] note: {path}: skipped {len(skipped)} file(s) not in a readable format: {shown}{more} "
              f"(supported: {FORMATS})", file=sys.stderr, flush=True)
    if not readers:
        raise ValueError(f"{path}: a folder with no data files; supported: {FORMATS}")
    for read in readers:
        yield from read()


def iter_source(source: str | Path, split: str = "train") -> Iterator[Raw]:
    """Raw records from a file (see FORMATS), a folder of files, a saved `datasets` folder, or a hub name."""
    path = Path(source)
    if path.is_dir() and not _is_saved_dataset(path):
        yield from _iter_folder(path, split)
        return
    if path.is_file():
        read = _reader(path, split)
        if read is None:
            kind = "".join(path.suffixes[-2:]) or "a file without suffix"
            raise ValueError(f"{path}: cannot read {kind}; supported: {FORMATS}")
        yield from read()
        return
    if not path.exists() and _looks_like_path(str(source)):
        raise FileNotFoundError(f"{source}: no such file")
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
    else:  # a hub dataset name, "name" or "name:config"
        name, _, config = str(source).partition(":")
        try:
            ds = datasets.load_dataset(name, config or None, split=split)
        except OSError as e:  # ConnectionError (offline), DatasetNotFoundError, ...
            why = (str(e).strip().splitlines() or [""])[0]
            raise FileNotFoundError(f"{source}: no such file, and not a loadable hub dataset "
                                    f"({type(e).__name__}: {why})") from e
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[split]
    yield from iter_rows(str(source), ds)


def ingest(
    source: str | Path,
    domain: str | None = None,
    fields: dict[str, str] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    strict: bool = False,
    split: str = "train",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read and validate a source into (examples, quarantine); `strict` raises on the first bad row.

    A record's domain is its `domain` field (or the field `fields["domain"]` names), else `domain`,
    else, in a folder of files, the file's name without suffixes (`math.jsonl.gz` -> `math`), else
    "default". `split` picks a hub dataset's split (or a JSON object's record list)."""
    validate = Validator(source=str(source), domain=domain or "default", fields=fields or {}, max_chars=max_chars)
    per_file = Path(source).is_dir() and not _is_saved_dataset(Path(source))
    rows, bad_rows, frames = [], [], []
    schema = {**SCHEMA, DATA_WEIGHT: pl.Float64}  # the column is dropped again when no record has a weight
    for raw in iter_source(source, split):
        if per_file:  # a folder of files: each example's source names its own file (and its domain)
            validate.source = raw.source
            if domain is None:
                validate.domain = Path(raw.source).name.split(".")[0] or "default"
        row, bad = validate(raw)
        if bad is not None:
            if strict:
                raise DataError(bad["source"], bad["line"], bad["field"], bad["reason"])
            bad_rows.append(bad)
        else:
            rows.append(row)
            if len(rows) == INGEST_CHUNK:  # columnar every chunk: Python dicts of 1M rows would not fit 4 GB
                frames.append(pl.DataFrame(rows, schema=schema))
                rows = []
    frames += [pl.DataFrame(rows, schema=schema)] if rows else []
    examples = pl.concat(frames, rechunk=True) if frames else empty_examples()
    if DATA_WEIGHT in examples.columns and examples.get_column(DATA_WEIGHT).null_count() == examples.height:
        examples = examples.drop(DATA_WEIGHT)
    quarantine = pl.DataFrame(bad_rows, schema=QUARANTINE_SCHEMA) if bad_rows else empty_quarantine()
    return examples, quarantine


