"""One registry type for every kind of part (scorers, selectors, losses, column providers) and the
`Part` base they share.

Parts register by name with a decorator; a recipe may also name any `module:attr`, and installed
packages can add parts through the entry-point group of the registry (e.g. `pipeline.losses`).
`Registry.build(name, params, where)` is the one way a part is made from a recipe, for every kind.
A part's parameters are the keyword arguments of its class's `__init__`, type hints included:
`Part.check_params` validates a recipe's values against them before anything expensive runs, and
names the recipe key, the value and the parameters the part has when one is wrong.

A part DECLARES what it needs from the stage that runs it (`needs`, from `NEEDS`); stages provide
it and put the code it depends on into their cache key, so no stage ever names a method.
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


# What a part may declare in `needs`; the stage running it provides each one.
NEEDS: dict[str, str] = {
    "reference_model": "the base model fine-tuned on the candidate set, passed as the parameter named by "
                       "`reference_param` unless the recipe gives one",
    "trainer": "a function fine-tuning the base model (`ctx.train_fn`); training code enters the cache key",
}


class Part:
    """Base of scorers, selectors, losses and column providers: declared parameters are `__init__`'s
    keyword arguments, declared needs are `needs` (see `NEEDS`)."""

    name: typing.ClassVar[str] = ""
    needs: typing.ClassVar[frozenset[str]] = frozenset()
    reference_param: typing.ClassVar[str] = "reference"  # where a `reference_model` goes

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        check_needs(cls)

    @classmethod
    def trains(cls) -> bool:
        """Whether running this part trains a model (its result then depends on the training code)."""
        return bool(cls.needs & {"reference_model", "trainer"})

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


def check_needs(cls: type) -> None:
    """TypeError, where the class is defined, for an unknown need or a reference without its parameter."""
    needs = cls.__dict__.get("needs")
    if needs is None:
        return
    if isinstance(needs, (set, tuple, list)):
        cls.needs = needs = frozenset(needs)
    if not isinstance(needs, frozenset) or not all(isinstance(n, str) for n in needs):
        raise TypeError(f"{cls.__name__}.needs must be a set of names from {sorted(NEEDS)}, got {needs!r}")
    unknown = sorted(needs - set(NEEDS))
    if unknown:
        raise TypeError(f"{cls.__name__}.needs: unknown {unknown[0]!r} (a part may need: {', '.join(NEEDS)})")
    if "reference_model" in needs and cls.reference_param not in [p.name for p in _init_params(cls)]:
        raise TypeError(f"{cls.__name__} needs a reference_model: its __init__ must take the parameter "
                        f"{cls.reference_param!r} (set `reference_param` to name another)")


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
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)  # floats finite
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
    """Parts of one kind by name; `base` is the class every part of the kind subclasses."""

    def __init__(self, kind: str, group: str, base: type | None = None, hint: str = ""):
        self.kind, self.group, self.base, self.hint = kind, group, base, hint
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: `@registry.register("name")` on a subclass of the registry's base class."""

        def deco(obj: Any) -> Any:
            self._check_class(obj, name, TypeError)
            if isinstance(obj, type) and issubclass(obj, Part):
                obj.name = name
            self._items[name] = obj
            return obj

        return deco

    def _check_class(self, obj: Any, name: str, error: type[Exception], key: str = "") -> None:
        if self.base is None:
            return
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            message = (f"{self.kind} {name!r} must be a {self.base.__name__} subclass ({self.base.__module__}."
                       f"{self.base.__name__}{' ' + self.hint if self.hint else ''}), got {obj!r}")
            raise ConfigError(key, message) if error is ConfigError else error(message)
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
            message = f"{self.kind} {name!r} ({obj.__name__}) does not implement {missing}"
            raise ConfigError(key, message) if error is ConfigError else error(message)

    def cls(self, name: Any, where: str) -> type:
        """The class `name` names (registered, entry point or `module:attr`), or a ConfigError naming `where`."""
        if not isinstance(name, str) or not name:
            raise ConfigError(where, f"must name a {self.kind}, got {name!r}")
        try:
            obj = self.get(name)
        except KeyError as err:
            raise ConfigError(where, err.args[0]) from None
        except (ImportError, AttributeError) as err:
            raise ConfigError(where, f"cannot load {name!r}: {err}") from None
        self._check_class(obj, name, ConfigError, where)
        return obj

    def build(self, name: str, params: dict[str, Any] | None = None, where: str = "params",
              name_key: str | None = None) -> Any:
        """A checked instance of `name` with `params`: errors (unknown part, unknown key, wrong type, a value
        `__init__` rejects) are ConfigErrors naming `name_key` (default `where.rule`-like) or `where.<key>`."""
        cls = self.cls(name, name_key or where)
        checked = check_params(cls, params, where)
        try:
            return cls(**checked)
        except ConfigError as err:  # __init__ names the parameter it rejects
            raise ConfigError(f"{where}.{err.key}", str(err).removeprefix(f"{err.key}: ")) from None
        except ValueError as err:
            raise ConfigError(where, f"{name}: {err}") from None

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
