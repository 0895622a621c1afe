"""The package's layers import one way (down), and no modules import each other in a cycle."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

from pipeline.core.hashing import LAYERS, PACKAGE_ROOT


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE_ROOT.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Modules of the package that `name` imports anywhere (inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("pipeline."):
                out.add(t)
                break
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else None


def test_layers_import_downwards_only():
    mods = _modules()
    wrong = []
    for name, path in mods.items():
        own = _layer(name)
        for target in _imports(name, path, mods):
            if own is not None and _layer(target) is not None and _layer(target) > own:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports that climb the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(wrong)


def test_no_import_cycles():
    """A package __init__ importing its own submodules (a registry) is the one allowed loop."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        graph[name] = {t for t in _imports(name, path, mods) if not (is_pkg and t.rpartition(".")[0] == name)}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_every_subpackage_is_a_layer():
    folders = {p.name for p in PACKAGE_ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), f"subpackages outside the layer list: {sorted(folders - set(LAYERS))}"


def test_code_version_follows_the_source_of_the_layers_below(tmp_path, monkeypatch):
    """Editing a layer changes the code version of that layer and those above it, not of those below."""
    import shutil

    import pipeline.core.hashing as hashing

    copy = tmp_path / "pipeline"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(hashing, "PACKAGE_ROOT", copy)
    hashing._layer_source_hash.cache_clear()
    before = {layer: hashing.code_version(layer) for layer in ("data", "scorers", "training", "flows")}
    assert before == {layer: hashing.code_version(layer) for layer in before}  # nothing edited: same
    with open(copy / "scorers" / "perplexity.py", "a") as f:
        f.write("\n# edited\n")
    hashing._layer_source_hash.cache_clear()
    after = {layer: hashing.code_version(layer) for layer in before}
    assert after["data"] == before["data"]
    assert all(after[layer] != before[layer] for layer in ("scorers", "training", "flows"))
    hashing._layer_source_hash.cache_clear()
