"""One small registry type for scorers, selectors and losses, and the `Part` base they share.

Parts register by name with a decorator; a recipe may also name any `module:attr`, and installed
packages can add parts through the entry-point group of the registry (e.g. `pipeline.losses`).
A part's parameters are the keyword arguments of its class's `__init__`, type hints included:
`Part.check_params` validates a recipe's values against them before anything expensive runs, and
names the recipe key, the value and the parameters the part has when one is wrong.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import typing
from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points
from typing import Any


class ConfigError(ValueError):
    """A user mistake in a recipe, an override or a part's parameters; `key` is the recipe path."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class Part:
    """Base of scorers, selectors and losses: declared parameters are `__init__`'s keyword arguments."""

    name: typing.ClassVar[str] = ""

    @classmethod
    def param_names(cls) -> list[str]:
        return [p.name for p in _init_params(cls)]

    @classmethod
    def check_params(cls, params: dict[str, Any] | None, where: str = "params") -> dict[str, Any]:
        """Validated (and type-coerced) parameters, or a `ConfigError` naming `where.<key>`."""
        return check_params(cls, params, where)

    @classmethod
    def create(cls, params: dict[str, Any] | None = None, where: str = "params"):
        """An instance from recipe parameters, checked first."""
        return cls(**cls.check_params(params, where))


def _init_params(cls: type) -> list[inspect.Parameter]:
    if cls.__init__ is object.__init__:
        return []
    return [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


@cache
def _param_model(cls: type):
    """A pydantic model of `cls.__init__`'s parameters (unknown keys forbidden)."""
    import pydantic

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable hints: check names only
        hints = {}
    fields = {p.name: (hints.get(p.name, Any), ... if p.default is p.empty else p.default)
              for p in _init_params(cls)}
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return pydantic.create_model(f"{cls.__name__}Params", __config__=config, **fields)


def check_params(cls: type, params: dict[str, Any] | None, where: str = "params") -> dict[str, Any]:
    """Validate `params` against `cls.__init__`; errors name `where.<key>`, the value and the known keys."""
    import pydantic

    params = dict(params or {})
    known = [p.name for p in _init_params(cls)]
    label = getattr(cls, "name", "") or cls.__name__
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"{label} has no parameter {unknown[0]!r} "
                                                   f"(its parameters: {', '.join(known) or 'none'})")
    try:
        model = _param_model(cls).model_validate(params)
    except pydantic.ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(x) for x in e["loc"][:1]) or "?"
        if e["type"] == "missing":
            raise ConfigError(f"{where}.{key}", f"{label} needs this parameter (its parameters: "
                                                f"{', '.join(known)})") from None
        raise ConfigError(f"{where}.{key}", f"{e['msg'].lower()}, got {params.get(key)!r}") from None
    return {k: getattr(model, k) for k in params}


class Registry:
    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: `@registry.register("name")`."""

        def deco(obj: Any) -> Any:
            if isinstance(obj, type) and issubclass(obj, Part):
                obj.name = name
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


_LOADED: dict[str, bytes] = {}  # source of each user module as imported


def import_user_module(module: str) -> Any:
    """Import `module`, also from the working directory (as `python -m` would), where user parts live.

    A module whose file changed since it was imported is reloaded, so a long-lived process
    (`pipeline serve`, a notebook) runs the code its cache keys were computed from.
    """
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module.split(".")[0] or os.getcwd() in sys.path:
            raise
        sys.path.insert(0, os.getcwd())
        mod = importlib.import_module(module)
    path = getattr(mod, "__file__", None)
    if path and os.path.exists(path):
        source = open(path, "rb").read()  # noqa: SIM115 - small file, read once
        if module in _LOADED and _LOADED[module] != source:
            mod = importlib.reload(mod)
        _LOADED[module] = source
    return mod
