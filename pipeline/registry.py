"""One small registry type for scorers, selectors and losses.

Parts register by name with a decorator; a recipe may also name any `module:attr`, and installed
packages can add parts through the entry-point group of the registry (e.g. `pipeline.losses`).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any


class Registry:
    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: `@registry.register("name")`."""

        def deco(obj: Any) -> Any:
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        """Look up by registered name, entry point, or `module:attr`."""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            module, _, attr = name.partition(":")
            return getattr(import_user_module(module), attr)
        for ep in entry_points(group=self.group):
            if ep.name == name:
                self._items[name] = ep.load()
                return self._items[name]
        known = ", ".join(sorted(self.names()))
        raise KeyError(f"unknown {self.kind} {name!r} (known: {known}; or give module:attr)")

    def names(self) -> list[str]:
        names = set(self._items)
        names.update(ep.name for ep in entry_points(group=self.group))
        return sorted(names)


def import_user_module(module: str) -> Any:
    """Import `module`, also from the working directory (as `python -m` would), where user parts live."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module.split(".")[0] or os.getcwd() in sys.path:
            raise
        sys.path.insert(0, os.getcwd())
        return importlib.import_module(module)
