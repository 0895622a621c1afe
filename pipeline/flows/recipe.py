"""Resolve a recipe for a flow: overrides, typed sections, and every part's parameters checked first.

`resolve_recipe("sft-math", ["select.rule=quantile", "select.keep=[0.1, 0.9]"])` returns the full
config with every default, or raises `ConfigError` naming the key before any stage runs. When an
override switches a part (`select.rule`, `train.loss`, a single `score.scorer`), the recipe's
parameters that the new part does not declare are dropped with a note; parameters given on the
command line are always checked against the new part.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pipeline.core.config import apply_overrides, load_raw, parse_override, validate
from pipeline.core.registry import ConfigError
from pipeline.data.source import missing_local

SELECT_KEYS = {"rule", "weights"}
WEIGHT_MODES = ("multiply", "replace")


def select_steps(cfg: dict | list) -> list[dict]:
    """A recipe's `select` is one rule (a mapping) or a list of rules applied in order."""
    return [dict(step) for step in (cfg if isinstance(cfg, list) else [cfg])]


def scorer_list(cfg: dict) -> list[tuple[str, dict]]:
    """`score.scorer` names one scorer or a list; `score.params` holds one scorer's parameters, or a
    mapping from scorer name to its parameters when several run."""
    names = cfg["scorer"] if isinstance(cfg["scorer"], list) else [cfg["scorer"]]
    params = cfg.get("params") or {}
    if len(names) == 1 and names[0] not in params:
        return [(names[0], params)]
    return [(name, params.get(name) or {}) for name in names]


def _part(registry, name: Any, key: str):
    if not isinstance(name, str) or not name:
        raise ConfigError(key, f"must name a {registry.kind}, got {name!r}")
    try:
        return registry.get(name)
    except KeyError as err:
        raise ConfigError(key, err.args[0]) from None
    except (ImportError, AttributeError) as err:
        raise ConfigError(key, f"cannot load {name!r}: {err}") from None


def _declared(cls) -> list[str] | None:
    return cls.param_names() if hasattr(cls, "param_names") else None


def switch_parts(before: dict, after: dict, overridden: set[tuple[str, ...]]) -> list[str]:
    """Drop (in `after`) the recipe's parameters of a part an override replaced; return notes."""
    from pipeline.losses import LOSSES
    from pipeline.scorers import SCORERS
    from pipeline.selectors import SELECTORS

    notes = []

    def prune(params: dict, prefix: tuple[str, ...], cls, keep: set[str], what: str) -> None:
        declared = _declared(cls)
        if declared is None:
            return
        gone = [k for k in params if k not in keep and k not in declared and (*prefix, k) not in overridden]
        for k in gone:
            del params[k]
        if gone:
            notes.append(f"{what}: dropped the recipe's {', '.join(gone)} (not parameters of the new part)")

    sel = after.get("select")
    if ("select", "rule") in overridden and isinstance(sel, dict) and sel.get("rule") != (before.get("select") or {}).get("rule"):
        prune(sel, ("select",), _part(SELECTORS, sel.get("rule"), "select.rule"), SELECT_KEYS, f"select.rule={sel['rule']}")
    train = after.get("train") or {}
    if ("train", "loss") in overridden and isinstance(train.get("loss_params"), dict):
        prune(train["loss_params"], ("train", "loss_params"), _part(LOSSES, train.get("loss"), "train.loss"), set(),
              f"train.loss={train.get('loss')}")
    score = after.get("score") or {}
    if ("score", "scorer") in overridden and isinstance(score.get("scorer"), str) and isinstance(score.get("params"), dict):
        prune(score["params"], ("score", "params"), _part(SCORERS, score["scorer"], "score.scorer"), set(),
              f"score.scorer={score['scorer']}")
    return notes


def check_parts(config: dict) -> None:
    """Every named part exists and accepts its parameters (values type-checked); else ConfigError."""
    from pipeline.flows import FLOWS
    from pipeline.losses import LOSSES
    from pipeline.scorers import SCORERS
    from pipeline.selectors import SELECTORS, build_selector

    if config["flow"] not in FLOWS:
        raise ConfigError("flow", f"unknown flow {config['flow']!r} (known: {', '.join(FLOWS)})")
    check_required(config)
    steps = select_steps(config["select"])
    for i, step in enumerate(steps):
        where = "select" if len(steps) == 1 and isinstance(config["select"], dict) else f"select[{i}]"
        _part(SELECTORS, step.get("rule"), f"{where}.rule")
        if step.get("weights", "multiply") not in WEIGHT_MODES:
            raise ConfigError(f"{where}.weights", f"must be one of {', '.join(WEIGHT_MODES)}, got {step['weights']!r}")
        build_selector(step["rule"], {k: v for k, v in step.items() if k not in SELECT_KEYS}, where)
    scorers = scorer_list(config["score"])
    for name, params in scorers:
        cls = _part(SCORERS, name, "score.scorer")
        if hasattr(cls, "check_params"):
            cls.check_params(params, "score.params" if len(scorers) == 1 else f"score.params.{name}")
    loss = _part(LOSSES, config["train"]["loss"], "train.loss")
    if hasattr(loss, "check_params"):
        loss.check_params(config["train"]["loss_params"], "train.loss_params")
    if config["flow"] in ("curate", "sft_math"):
        check_score_columns(config["select"], declared_columns(config["score"]))
    check_paths(config)
    igf = config["train"].get("igf_filter")
    if igf:
        if config["flow"] != "sft_math":
            raise ConfigError("train.igf_filter", f"needs the score table of a curation in the same run: use it with "
                                                  f"the sft_math flow, not {config['flow']!r}")
        columns = declared_columns(config["score"])
        if columns is not None and igf["column"] not in columns:
            raise ConfigError("train.igf_filter.column", f"no score column {igf['column']!r} (the scorers write: "
                                                         f"{', '.join(columns)}; score with information_gain)")


def check_required(config: dict) -> None:
    """Every key the recipe lists under `required` is set (the user's data, a subset, ...)."""
    for key in config.get("required") or []:
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value in (None, "", [], {}):
            raise ConfigError(key, f"recipe {config['name']} needs it: --set {key}=...")


def check_paths(config: dict) -> None:
    """Local paths the recipe names exist: a model folder, the train flow's subset."""
    model = str(config["model"])
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError("model", f"{model} is not a model folder (no config.json)")
    elif model.startswith(("/", ".", "~")):
        raise ConfigError("model", f"{model}: no such folder (give a folder, a hub id or smollm2-135m-instruct)")
    data = config.get("data") or {}
    if data.get("source") and not data.get("test") and config["flow"] in ("sft_math", "evaluate", "study"):
        raise ConfigError("data.test", f"the {config['flow']} flow evaluates on a test split: with data.source, "
                                       "give held-out examples as data.test=FILE")
    for key in ("source", "validation", "test"):
        where = (config.get("data") or {}).get(key)
        if where and missing_local(str(where)):
            raise ConfigError(f"data.{key}", f"{where}: no such file or folder (give a file, a folder, "
                                             "a `pipeline ingest` output or a hub dataset name)")
    if config["flow"] == "train":
        subset = config["data"]["subset"]
        if not subset:
            raise ConfigError("data.subset", "the train flow needs a data card folder or a parquet of examples "
                                             "(--set data.subset=data_cards/<name>)")
        target = Path(subset)
        if not (target / "subset.parquet" if target.is_dir() else target).is_file():
            raise ConfigError("data.subset", f"{subset}: no such data card folder or parquet file")


COLUMN_PARAMS = ("column", "loss")  # selector parameters that name a score column


def check_score_columns(select: dict | list, columns: list[str] | None) -> None:
    """Every selector parameter that names a score column names one the scorers write."""
    if columns is None:
        return
    steps = select_steps(select)
    for i, step in enumerate(steps):
        where = "select" if isinstance(select, dict) else f"select[{i}]"
        for key in COLUMN_PARAMS:
            value = step.get(key)
            if isinstance(value, str) and value not in columns:
                known = ", ".join(c for c in columns if c != "id")
                raise ConfigError(f"{where}.{key}", f"no score column {value!r} (the scorers write: {known})")


def declared_columns(score: dict) -> list[str] | None:
    """The score columns the recipe's scorers will write, when every one of them declares its columns."""
    from pipeline.scorers import get_scorer

    out: list[str] = []
    for name, params in scorer_list(score):
        cols = get_scorer(name, **params).columns()
        if cols is None:
            return None
        out += cols
    return out


BASELINE = "baseline"
SECTIONS = ("score", "select", "train", "eval")
COMPUTE_KEYS = ("max_steps", "epochs", "batch_size", "grad_accum")  # equal compute: shared by every variant


def variant_configs(config: dict) -> list[tuple[str, dict]]:
    """(name, resolved config) of the baseline and of every variant; errors name `variants[i].<key>`."""
    variants = config.get("variants") or []
    if not variants:
        raise ConfigError("variants", "a study needs at least one variant, e.g. [{name: dft, train: {loss: dft}}]")
    if int(config["train"]["max_steps"]) <= 0:
        raise ConfigError("train.max_steps", "a study trains every variant the same number of steps: set it > 0")
    base = {k: v for k, v in config.items() if k not in ("variants", "seeds")}
    baseline = resolve_config({**base, "flow": "sft_math", "name": f"{config['name']}-{BASELINE}"})
    out, names = [(BASELINE, baseline)], {BASELINE}
    for i, variant in enumerate(variants):
        where = f"variants[{i}]"
        if not isinstance(variant, dict) or not isinstance(variant.get("name"), str) or not variant["name"]:
            raise ConfigError(where, "each variant is a mapping with a `name` and section overrides")
        if variant["name"] in names:
            raise ConfigError(f"{where}.name", f"{variant['name']!r} is used twice (or is the baseline's name)")
        names.add(variant["name"])
        unknown = set(variant) - {"name", *SECTIONS}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}", f"a variant overrides only {', '.join(SECTIONS)}")
        fixed = set(variant.get("train") or {}) & set(COMPUTE_KEYS)
        if fixed:
            raise ConfigError(f"{where}.train.{sorted(fixed)[0]}", "equal compute: steps, epochs and batch are "
                                                                   "shared by every variant (set them in train)")
        cfg = {**copy.deepcopy(base), "flow": "sft_math", "name": f"{config['name']}-{variant['name']}"}
        for section in SECTIONS:
            if section not in variant:
                continue
            if section == "select" or not isinstance(variant[section], dict):
                cfg[section] = copy.deepcopy(variant[section])
            else:
                cfg[section] = _merge(cfg[section], variant[section])
        try:
            out.append((variant["name"], resolve_config(cfg)))
        except ConfigError as err:
            raise ConfigError(f"{where}.{err.key}", str(err).removeprefix(f"{err.key}: ")) from None
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = copy.deepcopy(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def resolve_config(config: dict) -> dict:
    """A config dict (e.g. a flow's parameter) validated, defaults filled in, parts checked."""
    resolved = validate(config).model_dump()
    check_parts(resolved)
    if resolved["flow"] == "study":
        variant_configs(resolved)  # every variant resolved and checked before anything runs
    return resolved


def resolve_recipe(name: str, overrides: list[str] | None = None) -> tuple[dict, list[str]]:
    """(resolved config, notes) for a recipe name or file plus `key=value` overrides."""
    overrides = overrides or []
    before = load_raw(name)
    after = apply_overrides(before, overrides)
    notes = switch_parts(before, after, {tuple(parse_override(o)[0]) for o in overrides})
    return resolve_config(after), notes
