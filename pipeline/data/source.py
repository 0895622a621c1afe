"""A recipe's own data (`data.source`): the user's file, folder, `pipeline ingest` output, saved
`datasets` folder or hub dataset as the flows' train / validation / test tables.

The whole source is the candidate pool (`train`): scorers score it, selectors choose from it and
the card accounts for every record read (kept + dropped + quarantined = read). `data.validation`
and `data.test` name optional held-out sources in the same formats (datamix reads validation;
evaluation flows read test). Bad records go to the quarantine table exactly as in `pipeline ingest`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.data.examples import (
    SCHEMA,
    _looks_like_path,
    empty_examples,
    empty_quarantine,
    ingest,
)
from pipeline.data.weights import DATA_WEIGHT

INGEST_MARKER = "ingest.json"  # written by `pipeline ingest --out FOLDER`


def is_ingest_output(path: Path) -> bool:
    """True for a folder written by `pipeline ingest` (examples.parquet + quarantine.parquet + ingest.json)."""
    return path.is_dir() and (path / INGEST_MARKER).is_file() and (path / "examples.parquet").is_file()


def missing_local(source: str) -> bool:
    """True when `source` is meant as a local path (not a hub name) and does not exist."""
    return not Path(source).expanduser().exists() and _looks_like_path(source)


def source_version(source: str) -> str:
    """What a source's records depend on: the bytes of its files (a file, every file of a folder), or
    the name of a hub dataset (hub data is versioned by its hub revision, which `datasets` resolves)."""
    path = Path(source)
    if not path.exists():
        return f"hub:{source}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and ".lock" not in p.name)
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()[:16]


def read_source(source: str, *, split: str = "train", fields: dict[str, str] | None = None,
                domain: str | None = None, max_chars: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(examples, quarantine, records read) of one source; an ingest output folder is reused as written."""
    path = Path(source)
    if is_ingest_output(path):
        info = json.loads((path / INGEST_MARKER).read_text())
        examples = pl.read_parquet(path / "examples.parquet", glob=False)
        examples = examples.select([*SCHEMA, *([DATA_WEIGHT] if DATA_WEIGHT in examples.columns else [])])
        quarantine = (pl.read_parquet(path / "quarantine.parquet", glob=False) if (path / "quarantine.parquet").exists()
                      else empty_quarantine())
        return examples, quarantine, int(info.get("read", examples.height + quarantine.height))
    options: dict[str, Any] = {"fields": fields or {}, "domain": domain, "split": split}
    if max_chars is not None:
        options["max_chars"] = max_chars
    examples, quarantine = ingest(source, **options)
    return examples, quarantine, examples.height + quarantine.height


def load_source(cfg: dict[str, Any]) -> dict[str, Any]:
    """The tables of a recipe's `data` section with a `source`: train (every good record), validation
    and test (their optional sources, else empty), the train source's quarantine and its read count."""
    opts = {"split": cfg.get("split") or "train", "fields": cfg.get("fields") or {}, "domain": cfg.get("domain"),
            "max_chars": cfg.get("max_chars")}
    train, quarantine, read = read_source(str(cfg["source"]), **opts)
    out: dict[str, Any] = {"train": train, "quarantine": quarantine, "read": read}
    for name in ("validation", "test"):
        held_out = cfg.get(name)
        out[name] = read_source(str(held_out), **opts)[0] if held_out else empty_examples()
    return out


__all__ = ["INGEST_MARKER", "is_ingest_output", "missing_local", "load_source", "read_source", "source_version"]
