"""Recipes: plain YAML data (name, description, flow, configs) with torchtune-style overrides.

`pipeline run sft-math --set train.max_steps=20 --set select.fraction=0.5` loads
`recipes/sft-math.yaml`, applies each `key=value` (value parsed as YAML) and checks every
overridden key exists, so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def recipe_dirs() -> list[Path]:
    """Folders searched for recipes: ./recipes, then the project's own recipes/."""
    dirs = [Path.cwd() / "recipes", REPO_ROOT / "recipes"]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def find_recipe(name: str) -> Path:
    """Resolve a recipe name (`sft-math`) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in {".yaml", ".yml"} and path.exists():
        return path
    for d in recipe_dirs():
        for suffix in (".yaml", ".yml"):
            candidate = d / f"{name}{suffix}"
            if candidate.exists():
                return candidate
    known = ", ".join(sorted(r["name"] for r in list_recipes())) or "none"
    raise FileNotFoundError(f"no recipe named {name!r} (known: {known})")


def list_recipes() -> list[dict[str, str]]:
    """Name, description and file of every recipe found."""
    seen: dict[str, dict[str, str]] = {}
    for d in recipe_dirs():
        for path in sorted(d.glob("*.y*ml")):
            data = yaml.safe_load(path.read_text()) or {}
            name = data.get("name", path.stem)
            seen.setdefault(name, {"name": name, "description": data.get("description", ""), "file": str(path)})
    return list(seen.values())


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], parsed value); values are YAML (numbers, lists, null...)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r} is not key=value")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def apply_overrides(config: dict, overrides: list[str], allow_new: bool = False) -> dict:
    """Return a copy of `config` with every `key=value` applied; unknown keys are an error."""
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = parse_override(text)
        node = config
        for i, k in enumerate(keys[:-1]):
            if not isinstance(node.get(k), dict):
                if k in node and node[k] is not None and not allow_new:
                    raise KeyError(f"override {text!r}: {'.'.join(keys[: i + 1])} is not a section")
                if k not in node and not allow_new and not _is_open(keys[:i]):
                    raise KeyError(f"override {text!r}: unknown section {'.'.join(keys[: i + 1])!r}")
                node[k] = {}
            node = node[k]
        last = keys[-1]
        if last not in node and not allow_new and not _is_open(keys[:-1]):
            known = ", ".join(sorted(node)) or "none"
            raise KeyError(f"override {text!r}: unknown key {'.'.join(keys)!r} (known here: {known})")
        node[last] = value
    return config


OPEN_SECTIONS = {"select"}


def _is_open(path: list[str]) -> bool:
    """Sections that hold a part's own free options accept new keys: `select` (the rule's parameters)
    and any section named `*params` (a loss's, a scorer's)."""
    return any(k.endswith("params") or k in OPEN_SECTIONS for k in path)


def load_recipe(name: str, overrides: list[str] | None = None) -> dict:
    """Load a recipe by name or path and apply overrides; the result is the resolved config."""
    path = find_recipe(name)
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a recipe must be a mapping at the top level")
    config = apply_overrides(config, overrides or [])
    config.setdefault("name", path.stem)
    config["_recipe_file"] = str(path)
    return config

