"""Every identity the caches use, in one place: tables, configs, files, models and code.

- `fingerprint(df)`: an example table (its content ids, in order);
- `config_hash(obj)`: any JSON-able configuration;
- `file_hash(path)`: a file's bytes;
- `model_revision(path_or_id)`: a model's weights and tokenizer by content (a hub id: its cached commit);
- `code_version(layer)`: this package's source up to a layer, plus any user `module:attr` file.

Caches key on these, so editing data, a parameter, the weights or the code that produced a result
recomputes it, and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# Layers from the bottom up; a module imports only from its own layer or below (tests/test_architecture.py).
LAYERS = ("core", "data", "models", "scorers", "selectors", "losses", "training", "evaluation", "reports",
          "stages", "flows", "cli")


def fingerprint(df: pl.DataFrame) -> str:
    """Fingerprint of a table of examples: changes whenever any id (content) or the order changes."""
    h = hashlib.sha256()
    for chunk in df.get_column("id").to_list():
        h.update(chunk.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of any JSON-able configuration (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_hash(path: str | Path, length: int = 16) -> str:
    """Short sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:length]


# Files of a model folder that decide its outputs: weights, configs, tokenizer and chat template.
_MODEL_FILES = (".safetensors", ".bin", ".pt", ".gguf", ".json", ".jinja", ".model", ".txt", ".tiktoken")


@cache
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """sha256 of one file, memoized on its stat (weights are hashed once per process: ~0.3 s per 500 MB)."""
    return file_hash(path, 64)


def model_revision(path_or_id: str | Path) -> str:
    """What identifies a model: `<folder name>@<sha256 of its weight, config and tokenizer files>`.

    A hub id that is not a local folder gives `<id>@<commit>` of its locally cached snapshot when
    there is one, else the id itself (pin a revision online with `name@rev`).
    """
    path = Path(path_or_id)
    if not path.is_dir():
        return _hub_revision(str(path_or_id))
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in _MODEL_FILES and not f.name.startswith("."):
            st = f.stat()
            h.update(f.name.encode() + b"\0" + _file_digest(str(f.resolve()), st.st_size, st.st_mtime_ns,
                                                            st.st_ino).encode())
    return f"{path.name}@{h.hexdigest()[:16]}"


def _hub_revision(repo_id: str) -> str:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - any failure just means "not cached"
        cached = None
    if isinstance(cached, str):
        return f"{repo_id}@{Path(cached).parent.name}"
    return repo_id


@cache
def _layer_source_hash(layer: str) -> str:
    """sha256 over the source files of one layer (a subpackage or a top-level module)."""
    h = hashlib.sha256()
    folder = PACKAGE_ROOT / layer
    files = sorted(folder.rglob("*")) if folder.is_dir() else [PACKAGE_ROOT / f"{layer}.py"]
    for f in files:
        if f.is_file() and f.suffix in {".py", ".yaml", ".jinja"} and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(PACKAGE_ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sft-pipeline")
    except PackageNotFoundError:
        return "0+unknown"


def code_version(layer: str = "cli", parts: list[Any] | tuple[Any, ...] = ()) -> str:
    """The code a result depends on: package version, the source of every layer up to `layer`
    (imports point down only, so nothing above can change it) and the source of each part: a
    `module:attr` name, or a part's class or instance defined outside this package (a user's file)."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r} (layers: {', '.join(LAYERS)})")
    h = hashlib.sha256(package_version().encode())
    for name in LAYERS[: LAYERS.index(layer) + 1]:
        h.update(f"{name}:{_layer_source_hash(name)}".encode())
    sources = {part if isinstance(part, str) else _qualname(part):
               part_source_hash(part) if isinstance(part, str) else object_source_hash(part) for part in parts}
    for key in sorted(sources):
        h.update(f"{key}:{sources[key]}".encode())
    return h.hexdigest()[:16]


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def object_source_hash(obj: Any) -> str:
    """Hash of the file defining a part's class ('' inside this package: the layers cover it)."""
    import inspect

    cls = obj if isinstance(obj, type) else type(obj)
    try:
        path = Path(inspect.getfile(cls)).resolve()
    except (TypeError, OSError):
        return "unknown"
    if path.is_relative_to(PACKAGE_ROOT) or not path.is_file():
        return "" if path.is_relative_to(PACKAGE_ROOT) else "unknown"
    return file_hash(path, 12)


def part_source_hash(name: str) -> str:
    """Hash of the source file behind a `module:attr` part (built-in names: '' - the layers cover them).

    Read from the file on disk each time, so an edit between two runs in one process counts too.
    """
    if ":" not in name:
        return ""
    module = name.partition(":")[0]
    path = _module_file(module)
    return file_hash(path, 12) if path else "unknown"


def _module_file(module: str) -> Path | None:
    """Where `module` lives (already imported, or found on sys.path / the working directory)."""
    import importlib.util

    mod = sys.modules.get(module)
    if mod is not None and getattr(mod, "__file__", None):
        return Path(mod.__file__)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None and os.getcwd() not in sys.path:
        candidate = Path.cwd() / (module.replace(".", "/") + ".py")
        return candidate if candidate.exists() else None
    return Path(spec.origin) if spec is not None and spec.origin else None
