"""What every scorer is and receives: a `Scorer` class with declared parameters, and the shared model context."""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import polars as pl

from pipeline.core.config import DEFAULT_MAX_LENGTH, DEFAULT_MODEL
from pipeline.core.registry import Part

ScoreResult = pl.DataFrame | tuple[pl.DataFrame, dict]
DECLARED: dict[str, type] = {"version": str, "uses_model": bool, "shardable": bool, "model_params": tuple,
                             "seeded": bool}
PART_DECLARED = ("needs", "reference_param", "name")  # declared on every Part (pipeline.core.registry)
FORMER = {"VERSION": "version", "key_models": "model_params",  # the old function attributes
          "trains_reference": "needs = {'reference_model'}"}


@dataclass
class ScoreContext:
    """Model name plus lazily loaded models and tokenizer; `max_length` caps tokenized examples."""

    model_name: str = DEFAULT_MODEL
    max_length: int = DEFAULT_MAX_LENGTH
    max_tokens: int | None = None  # padded tokens per batch; None = 1024 on CPU, 16384 on GPU
    progress: bool = True
    seed: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def settings(self) -> dict[str, Any]:
        """The settings without loaded models: what travels to a remote worker (Ray)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def tokenizer(self):
        if "tok" not in self._cache:
            from pipeline.models.loading import load_tokenizer

            self._cache["tok"] = load_tokenizer(self.model_name)
        return self._cache["tok"]

    def model(self):
        if "model" not in self._cache:
            from pipeline.models.loading import load_model

            self._cache["model"] = load_model(self.model_name)
        return self._cache["model"]

    def model_for(self, name: str | None):
        """The context's model when `name` is None or its own, else another model (e.g. a reference), loaded once."""
        if name is None or name == self.model_name:
            return self.model()
        key = f"model:{name}"
        if key not in self._cache:
            from pipeline.models.loading import load_model

            self._cache[key] = load_model(name)
        return self._cache[key]

    def embedder(self, name: str):
        """(tokenizer, encoder) of a sentence embedder, loaded once; see `pipeline.scorers.embedding`."""
        key = f"embedder:{name}"
        if key not in self._cache:
            from pipeline.models.embedder import load_embedder

            self._cache[key] = load_embedder(name)
        return self._cache[key]


class Scorer(Part, ABC):
    """Base of every scorer: parameters are `__init__`'s typed keyword arguments, `score` does the work.

    Class attributes declare what the score cache must know (checked when a subclass is defined,
    so a misspelt or mistyped one fails there instead of silently doing nothing):
    `version` (bump when the numbers change), `uses_model` (the context's model enters the key),
    `shardable` (False: needs the whole table at once), `model_params` (parameters naming another
    model folder or id, whose content revision enters the key, defaults included) and `seeded` (False:
    the scores do not depend on the run's seed, so runs and study cells at other seeds reuse them;
    True, the safe default, for a scorer that samples or trains). Like every part it
    may declare `needs = {"reference_model"}`: the score stage then fine-tunes the base on the
    candidates and passes that folder as the parameter `reference_param` when the recipe gives none.
    """

    version: ClassVar[str] = "1"
    uses_model: ClassVar[bool] = True
    shardable: ClassVar[bool] = True
    model_params: ClassVar[tuple[str, ...]] = ()
    seeded: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any):
        """Check the subclass's declarations as it is defined: names, types, and that model_params are parameters."""
        super().__init_subclass__(**kwargs)
        check_declarations(cls)

    @abstractmethod
    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> ScoreResult:
        """One row per example id, in the examples' order; optionally (table, run-level metadata)."""

    def columns(self) -> list[str] | None:
        """The score columns (besides `id`) this instance writes, or None when not known in advance;
        lets a recipe's `select.column` be checked before anything is scored."""
        return None

    def __call__(self, examples: pl.DataFrame, ctx: ScoreContext) -> ScoreResult:
        """Score `examples`: an instance is called like the scorer functions it replaced."""
        return self.score(examples, ctx)

    def params(self) -> dict[str, Any]:
        """The declared parameters' values (each stored as the attribute of the same name)."""
        return {n: getattr(self, n) for n in self.param_names() if hasattr(self, n)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def check_declarations(cls: type[Scorer]) -> None:
    """TypeError for a misspelt, old-style or mistyped declaration, or a declared parameter `__init__` lacks."""
    for attr, value in vars(cls).items():
        if attr.startswith("_") or attr in DECLARED or attr in PART_DECLARED or callable(value) or isinstance(value, classmethod | property):
            continue
        close = FORMER.get(attr) or next(iter(difflib.get_close_matches(attr, DECLARED, n=1, cutoff=0.8)), None)
        if close:
            raise TypeError(f"{cls.__name__}.{attr}: did you mean {close!r}? (Scorer declares {', '.join(DECLARED)})")
    for attr, kind in DECLARED.items():
        if not isinstance(getattr(cls, attr), kind):
            raise TypeError(f"{cls.__name__}.{attr} must be a {kind.__name__}, got {getattr(cls, attr)!r}")
    params = cls.param_names()
    unknown = [p for p in cls.model_params if p not in params]
    if unknown:
        raise TypeError(f"{cls.__name__}.model_params names {unknown[0]!r}, which is not a parameter of its "
                        f"__init__ (its parameters: {', '.join(params) or 'none'})")
