"""A recipe built into its components once: the typed sections plus every part, checked and constructed.

`build_plan(config)` validates a recipe (a dict or a `Recipe`) against its typed sections, builds each
scorer, each selection step, the loss and the column providers the loss requires (torchtune's
"config -> components once"), and raises a `ConfigError` naming the recipe key on the first mistake,
before anything runs. Stages take the plan's sections and parts as they are: nothing downstream
re-validates a section, looks a part up again or reads a default from anywhere but `core/config.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import Recipe, cache_dir, validate
from pipeline.core.registry import ConfigError
from pipeline.losses import LOSSES, TokenLoss
from pipeline.scorers import SCORERS, Scorer
from pipeline.selectors.compose import Step, build_steps
from pipeline.training.columns import COLUMNS, ColumnProvider, column_providers
from pipeline.training.reference import reference_train

COLUMN_PARAMS = ("column", "loss")  # selector parameters that name a score column


@dataclass
class ScorerSpec:
    """One scorer of `score.scorer`: its name, its parameters and the built instance."""

    name: str
    params: dict[str, Any]
    scorer: Scorer
    where: str = "score.params"


@dataclass
class Plan:
    """The resolved recipe and its parts, built once."""

    recipe: Recipe
    scorers: list[ScorerSpec]
    steps: list[Step]
    loss: TokenLoss
    providers: list[ColumnProvider] = field(default_factory=list)

    @property
    def cache_root(self) -> str:
        """Where content-addressed stage outputs live (`cache_dir` in the recipe, else the user cache)."""
        return str(Path(self.recipe.cache_dir or cache_dir() / "stages").resolve())

    @property
    def reference_train(self) -> dict[str, Any]:
        """The settings a reference model trains with: the recipe's own training (`pipeline.training.reference`)."""
        return reference_train(self.recipe.train)

    def select_dicts(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.steps]

    def score_columns(self) -> list[str] | None:
        """The score columns the scorers will write, when every one of them declares its columns."""
        out: list[str] = []
        for spec in self.scorers:
            cols = spec.scorer.columns()
            if cols is None:
                return None
            out += cols
        return out


def scorer_list(score: Any) -> list[tuple[str, dict]]:
    """`score.scorer` names one scorer or a list; `score.params` holds one scorer's parameters, or a
    mapping from scorer name to its parameters (always so when several run).

    In the mapping, an entry for a registered scorer the list does not run is set aside (a recipe's
    params outlive `--set score.scorer=[...]`); any other key is an error, never a silent no-op.
    """
    names = score.scorer if isinstance(score.scorer, list) else [score.scorer]
    params = score.params or {}
    known = set(SCORERS.names())
    keyed = len(names) > 1 or names[0] in params or (params and set(params) <= known)
    if not keyed:
        return [(names[0], params)]
    for key, value in params.items():
        if key not in names and key not in known:
            raise ConfigError(f"score.params.{key}", f"no scorer {key!r} runs (score.scorer: {', '.join(names)}); "
                                                     "with several scorers, score.params maps each to its parameters")
        if key in names and not isinstance(value, dict):
            raise ConfigError(f"score.params.{key}", f"expected the scorer's parameters as a mapping, got {value!r}")
    return [(name, params.get(name) or {}) for name in names]


def build_scorers(score: Any) -> list[ScorerSpec]:
    scorers = scorer_list(score)
    out = []
    for name, params in scorers:
        where = "score.params" if len(scorers) == 1 else f"score.params.{name}"
        out.append(ScorerSpec(name, params, SCORERS.build(name, params, where, name_key="score.scorer"), where))
    return out


def build_plan(config: Recipe | dict) -> Plan:
    """The recipe validated and every part built, or a ConfigError naming the key (nothing has run yet)."""
    recipe = config if isinstance(config, Recipe) else validate(config)
    train = recipe.train
    loss = LOSSES.build(train.loss, train.loss_params, "train.loss_params", name_key="train.loss")
    providers = column_providers(loss, train.columns)
    check_one_process(train, loss)
    if train.think_weight != 1.0:  # a per-token weight every loss applies (pipeline.losses.base.TOKEN_WEIGHT)
        open_, close = train.think_delimiters
        providers.append(COLUMNS.build("token_weight", {"think_weight": train.think_weight, "open": open_,
                                                        "close": close}, "train", name_key="train.think_weight"))
    return Plan(recipe=recipe, scorers=build_scorers(recipe.score), steps=build_steps(recipe.select), loss=loss,
                providers=providers)


def check_one_process(train, loss) -> None:
    """A loss that reads the trainer's tiled LM-head pass (`head_stats`: EAFT, ASFT) trains in one process: the
    pass runs the model's body itself, outside the DDP/FSDP wrapper's forward, so ranks would not sync gradients."""
    stats = getattr(loss, "head_stats", None)
    if not stats or train.launcher == "local":
        return
    from pipeline.training.launch import process_count

    n = process_count(train)
    if n > 1:
        raise ConfigError("train.launcher", f"loss {train.loss!r} reads {sorted(stats)} from the trainer's tiled "
                                            f"head pass, which runs in one process, not {n}: set "
                                            "train.launcher=local or train.num_processes=1")


def check_score_columns(steps: list[Step], columns: list[str] | None) -> None:
    """Every selector parameter that names a score column names one the scorers write."""
    if columns is None:
        return
    for step in steps:
        for key in COLUMN_PARAMS:
            value = step.params.get(key)
            if isinstance(value, str) and value not in columns:
                known = ", ".join(c for c in columns if c != "id")
                raise ConfigError(f"{step.where}.{key}", f"no score column {value!r} (the scorers write: {known})")
