"""Atomic file writes: a crash never leaves a half-written table, card or model behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; swap it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# Bounded JSON: a value nested deeper than this (a card, a record, a marker) is refused, never a RecursionError.

MAX_DEPTH = 100


def nesting_depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        stack.extend((c, depth + 1) for c in children)
    return deepest


def check_depth(value: Any) -> Any:
    """`value` when it nests at most MAX_DEPTH levels, else a ValueError saying so."""
    if nesting_depth(value) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def loads(text: str) -> Any:
    """`json.loads` bounded in nesting depth: too deep is a ValueError, not a RecursionError."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    return check_depth(value)


def read_json(path: str | Path) -> Any:
    """A JSON file (bounded nesting); a syntax error or too deep a value is a ValueError naming the file."""
    try:
        return loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not readable JSON: {e}") from None


def write_parquet(path: str | Path, df: pl.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Complete outputs: a folder counts as done only when its marker, written last, matches its files.

MARKER = "_complete.json"
_HASH_LIMIT = 64 * 2**20  # files above this are checked by size only (a truncation changes the size)


def _entries(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    from pipeline.core.hashing import file_hash

    out = {}
    for name in names:
        target = folder / name
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for f in files:
            size = f.stat().st_size
            out[str(f.relative_to(folder))] = {"size": size, "sha256": file_hash(f, 64) if size <= _HASH_LIMIT else None}
    return out


def mark_complete(folder: str | Path, names: list[str]) -> None:
    """Record the sizes and hashes of `names` (files or sub-folders of `folder`); call after writing them."""
    folder = Path(folder)
    write_json(folder / MARKER, _entries(folder, names))


def is_complete(folder: str | Path) -> bool:
    """True when `folder`'s marker exists and every file it lists is there with the same size (and hash)."""
    from pipeline.core.hashing import file_hash

    folder = Path(folder)
    try:
        entries = read_json(folder / MARKER)
        for name, e in entries.items():
            f = folder / name
            if f.stat().st_size != e["size"] or (e["sha256"] and file_hash(f, 64) != e["sha256"]):
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def invalidate(folder: str | Path) -> None:
    """Forget that `folder` was complete (its files are recomputed and overwritten)."""
    Path(folder, MARKER).unlink(missing_ok=True)


@contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (its `.lock` file; blocking): two processes or threads never
    compute one output at once, and the second then finds it complete."""
    import fcntl

    lock = Path(folder) / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
