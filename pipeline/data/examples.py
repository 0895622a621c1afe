"""The canonical SFT example table, its readers and validation.

Every example is a row of `SCHEMA`: a content-hash `id`, `prompt`, `response`, `source`, `domain`,
optional gold `answer`, optional chat `messages` (JSON) and free `meta` (JSON). Readers turn JSONL,
parquet, a `datasets` name or folder, or the bundled math data into (examples, quarantine) where the
quarantine holds every rejected record with its line, field, reason and raw text: rows kept + rows
quarantined = records read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

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
DEFAULT_MAX_CHARS = 32_000


class DataError(ValueError):
    """A bad record, reported as `file:line: field: reason`."""

    def __init__(self, source: str, line: int, field: str, reason: str):
        self.source, self.line, self.field, self.reason = source, line, field, reason
        super().__init__(f"{source}:{line}: {field}: {reason}")


def example_id(prompt: str, response: str) -> str:
    """Stable content hash of an example: same text, same id, on every machine."""
    h = hashlib.sha256()
    h.update(prompt.encode("utf-8"))
    h.update(b"\x00")
    h.update(response.encode("utf-8"))
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


@dataclass
class Validator:
    """Turns raw records into canonical rows, or quarantine rows with a reason."""

    source: str
    domain: str = "default"
    fields: dict[str, str] = field(default_factory=dict)  # canonical name -> field in the record
    max_chars: int = DEFAULT_MAX_CHARS
    seen: set[str] = field(default_factory=set)

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

        if raw.record is None and raw.text is None:
            return bad("*", "not_utf8: bytes are not valid UTF-8")
        rec = raw.record
        if rec is None:
            try:
                rec = json.loads(raw.text)
            except json.JSONDecodeError as e:
                return bad("*", f"bad_json: {e.msg} at column {e.colno}")
        if not isinstance(rec, dict):
            return bad("*", f"not_object: expected a JSON object, got {type(rec).__name__}")

        if "messages" in rec and not any(k in rec for k in ("prompt", "response")):
            prompt_resp = _from_messages(rec["messages"])
            if isinstance(prompt_resp, str):
                return bad("messages", prompt_resp)
            rec = {**rec, "prompt": prompt_resp[0], "response": prompt_resp[1]}

        values: dict[str, str] = {}
        merged: set[str] = set()  # fields folded into the prompt, so not repeated in meta
        for canon, aliases in (("prompt", PROMPT_ALIASES), ("response", RESPONSE_ALIASES)):
            name = self.fields.get(canon) or next((a for a in aliases if a in rec), None)
            if name is None or name not in rec:
                return bad(self.fields.get(canon, canon), "missing_field")
            value = rec[name]
            if value is None:
                return bad(name, "missing_field: value is null")
            if not isinstance(value, str):
                return bad(name, f"wrong_type: expected string, got {type(value).__name__}")
            if not value.strip():
                return bad(name, "empty_field")
            if canon == "prompt" and name == "instruction" and rec.get("input") is not None:
                extra = rec["input"]  # Alpaca: the prompt is the instruction, a blank line, the input
                if not isinstance(extra, str):
                    return bad("input", f"wrong_type: expected string, got {type(extra).__name__}")
                if extra.strip():
                    value = f"{value}\n\n{extra}"
                    merged.add("input")
            if len(value) > self.max_chars:
                return bad(name, f"too_long: {len(value)} chars > max_chars={self.max_chars}")
            values[canon] = value

        ex_id = example_id(values["prompt"], values["response"])
        if ex_id in self.seen:
            return bad("id", f"duplicate_id: {ex_id} (same prompt and response seen before)")
        self.seen.add(ex_id)
        answer = rec.get(self.fields.get("answer", "answer"))
        meta = {k: v for k, v in rec.items() if k not in {"prompt", "response", "messages", *merged}}
        row = {
            "id": ex_id,
            "prompt": values["prompt"],
            "response": values["response"],
            "source": str(rec.get("source") or self.source),
            "domain": str(rec.get(self.fields.get("domain", "domain")) or self.domain),
            "answer": None if answer is None else str(answer),
            "messages": _dumps(rec["messages"]) if "messages" in rec else None,
            "meta": _dumps(meta) if meta else None,
        }
        return row, None


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


def _from_messages(messages: Any) -> tuple[str, str] | str:
    """Split a chat into (prompt, last assistant reply), or return a reason string."""
    if not isinstance(messages, list) or not messages:
        return "wrong_type: messages must be a non-empty list"
    if not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        return "wrong_type: each message needs role and content"
    if messages[-1]["role"] != "assistant":
        return "missing_field: last message is not from the assistant"
    prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:-1])
    return prompt, messages[-1]["content"]


def iter_jsonl(path: Path) -> Iterator[Raw]:
    """Yield every line of a JSONL file as a Raw record (1-based line numbers, blank lines skipped)."""
    with open(path, "rb") as f:
        for i, line in enumerate(f, start=1):
            stripped = line.strip()
            if not stripped:
                continue
            try:
                text = stripped.decode("utf-8")
            except UnicodeDecodeError:
                yield Raw(str(path), i, None, raw_bytes=stripped)
                continue
            yield Raw(str(path), i, text)


def iter_rows(name: str, rows: Any) -> Iterator[Raw]:
    """Yield parsed rows (parquet, datasets) as Raw records numbered from 1."""
    for i, row in enumerate(rows, start=1):
        yield Raw(name, i, _dumps(row), record=row)


def iter_source(source: str | Path, split: str = "train") -> Iterator[Raw]:
    """Raw records from a JSONL file, a parquet file, a saved `datasets` folder, or a hub dataset."""
    path = Path(source)
    if path.suffix in {".jsonl", ".json"} and path.exists():
        yield from iter_jsonl(path)
    elif path.suffix == ".parquet" and path.exists():
        yield from iter_rows(str(path), pl.read_parquet(path).iter_rows(named=True))
    else:
        import datasets

        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:  # a hub dataset name, "name" or "name:config"
            name, _, config = str(source).partition(":")
            ds = datasets.load_dataset(name, config or None, split=split)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
        yield from iter_rows(str(source), ds)


def ingest(
    source: str | Path,
    domain: str = "default",
    fields: dict[str, str] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    strict: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read and validate a source into (examples, quarantine); `strict` raises on the first bad row."""
    validate = Validator(source=str(source), domain=domain, fields=fields or {}, max_chars=max_chars)
    rows, bad_rows = [], []
    for raw in iter_source(source):
        row, bad = validate(raw)
        if bad is not None:
            if strict:
                raise DataError(bad["source"], bad["line"], bad["field"], bad["reason"])
            bad_rows.append(bad)
        else:
            rows.append(row)
    examples = pl.DataFrame(rows, schema=SCHEMA) if rows else empty_examples()
    quarantine = pl.DataFrame(bad_rows, schema=QUARANTINE_SCHEMA) if bad_rows else empty_quarantine()
    return examples, quarantine


