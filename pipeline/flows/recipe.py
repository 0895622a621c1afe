"""Resolve a recipe for a flow, once: overrides, typed sections, every part built and checked first.

`resolve_recipe("sft-math", ["select.rule=quantile", "select.keep=[0.1, 0.9]"])` returns the plan
(`pipeline.stages.plan.Plan`: the typed recipe with every default and its built parts) and notes, or
raises `ConfigError` naming the key before any stage runs. When an override switches a part
(`select.rule`, `train.loss`, a single `score.scorer`), the recipe's parameters that the new part does
not declare are dropped with a note; parameters given on the command line are always checked against
the new part. What each flow needs of a recipe is what it declares (`pipeline.flows.FlowSpec`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pipeline.core.config import Recipe, apply_overrides, load_raw, parse_override
from pipeline.core.registry import ConfigError
from pipeline.data.source import missing_local
from pipeline.stages.plan import Plan, build_plan, check_score_columns


def switch_parts(before: dict, after: dict, overridden: set[tuple[str, ...]]) -> list[str]:
    """Drop (in `after`) the recipe's parameters of a part an override replaced; return notes."""
    from pipeline.losses import LOSSES
    from pipeline.scorers import SCORERS
    from pipeline.selectors import SELECTORS
    from pipeline.selectors.compose import STEP_KEYS

    notes = []

    def prune(params: dict, prefix: tuple[str, ...], cls, keep: tuple[str, ...], what: str) -> None:
        declared = cls.param_names()
        gone = [k for k in params if k not in keep and k not in declared and (*prefix, k) not in overridden]
        for k in gone:
            del params[k]
        if gone:
            notes.append(f"{what}: dropped the recipe's {', '.join(gone)} (not parameters of the new part)")

    sel = after.get("select")
    if ("select", "rule") in overridden and isinstance(sel, dict) and sel.get("rule") != (before.get("select") or {}).get("rule"):
        prune(sel, ("select",), SELECTORS.cls(sel.get("rule"), "select.rule"), STEP_KEYS, f"select.rule={sel['rule']}")
    train = after.get("train") or {}
    if ("train", "loss") in overridden and isinstance(train.get("loss_params"), dict):
        prune(train["loss_params"], ("train", "loss_params"), LOSSES.cls(train.get("loss"), "train.loss"), (),
              f"train.loss={train.get('loss')}")
    score = after.get("score") or {}
    if ("score", "scorer") in overridden and isinstance(score.get("scorer"), str) and isinstance(score.get("params"), dict):
        prune(score["params"], ("score", "params"), SCORERS.cls(score["scorer"], "score.scorer"), (),
              f"score.scorer={score['scorer']}")
    return notes


def check_flow(plan: Plan) -> None:
    """What the recipe's flow declares it needs (`FlowSpec`) is there; else ConfigError naming the key."""
    from pipeline.flows import FLOWS

    r = plan.recipe
    if r.flow not in FLOWS:
        raise ConfigError("flow", f"unknown flow {r.flow!r} (known: {', '.join(FLOWS)})")
    spec = FLOWS[r.flow]
    for key in (*r.required, *spec.requires):
        if _value(r, key) in (None, "", [], {}):
            raise ConfigError(key, f"recipe {r.name} needs it: --set {key}=...")
    if not spec.repeats:
        for key in ("variants", "seeds", "oracle"):
            if getattr(r, key) is not None:
                raise ConfigError(key, f"only a study reads it (flow: study); the {r.flow} flow would ignore it")
    if spec.curates:
        check_score_columns(plan.steps, plan.score_columns())
    if r.data.noise:
        from pipeline.data.canaries import KINDS

        unknown = [k for k in r.data.noise.kinds or [] if k not in KINDS]
        if unknown or r.data.noise.kinds == []:
            raise ConfigError("data.noise.kinds", f"unknown or no kinds {unknown} (kinds: {', '.join(KINDS)})")
    check_paths(plan.recipe, spec.evaluates)
    igf = r.train.igf_filter
    if igf:
        if not spec.scores_reach_training:
            raise ConfigError("train.igf_filter", f"needs the score table of a curation in the same run: use it with "
                                                  f"the sft_math flow, not {r.flow!r}")
        columns = plan.score_columns()
        if columns is not None and igf.column not in columns:
            raise ConfigError("train.igf_filter.column", f"no score column {igf.column!r} (the scorers write: "
                                                         f"{', '.join(columns)}; score with information_gain)")


def _value(recipe: Recipe, key: str) -> Any:
    value: Any = recipe
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
    return value


def check_paths(r: Recipe, evaluates: bool) -> None:
    """Local paths the recipe names exist: a model folder, the data files, the train flow's subset."""
    model = str(r.model)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError("model", f"{model} is not a model folder (no config.json)")
    elif model.startswith(("/", ".", "~")):
        raise ConfigError("model", f"{model}: no such folder (give a folder, a hub id or smollm2-135m-instruct)")
    d = r.data
    if d.source and not d.test and evaluates:
        raise ConfigError("data.test", f"the {r.flow} flow evaluates on a test split: with data.source, "
                                       "give held-out examples as data.test=FILE")
    for key in ("source", "validation", "test"):
        where = getattr(d, key)
        if where and missing_local(str(where)):
            raise ConfigError(f"data.{key}", f"{where}: no such file or folder (give a file, a folder, "
                                             "a `pipeline ingest` output or a hub dataset name)")
    if d.subset:
        target = Path(d.subset)
        if not (target / "subset.parquet" if target.is_dir() else target).is_file():
            raise ConfigError("data.subset", f"{d.subset}: no such data card folder or parquet file")


def resolve(config: Plan | Recipe | dict) -> Plan:
    """The plan of a recipe (a dict, a validated `Recipe`, or a plan already built: returned as is), checked."""
    if isinstance(config, Plan):
        return config
    from pipeline.flows import FLOWS, _load

    plan = build_plan(config)
    check_flow(plan)
    own_check = FLOWS[plan.recipe.flow].check
    if own_check:
        _load(own_check)(plan)
    return plan


def resolve_recipe(name: str, overrides: list[str] | None = None) -> tuple[Plan, list[str]]:
    """(plan, notes) for a recipe name or file plus `key=value` overrides."""
    overrides = overrides or []
    before = load_raw(name)
    after = apply_overrides(before, overrides)
    notes = switch_parts(before, after, {tuple(parse_override(o)[0]) for o in overrides})
    return resolve(after), notes


def merge(base: dict, over: dict) -> dict:
    """`base` with `over` merged in, key by key for nested mappings."""
    merged = copy.deepcopy(base)
    for k, v in over.items():
        merged[k] = merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged
