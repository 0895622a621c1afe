"""`pipeline regenerate CARD`: recompute a data card's subset from the config it records and compare.

A card is data someone may have sent you: its recorded config is read as data, and a config that names
code (a `module:attr` part, or a part name that is neither built in nor an installed entry point) is
refused unless `allow_code` is given, so regenerating a card never imports a module the card chose.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.config import validate
from pipeline.core.io import read_json, write_json
from pipeline.core.registry import ConfigError, Registry
from pipeline.core.runs import check_output
from pipeline.flows.curate import curate_flow

REPORT = "regenerate.json"  # written into --out: marks the folder as a regenerate output
_MODULE_ATTR = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _registries() -> dict[str, Registry]:
    from pipeline.losses import LOSSES
    from pipeline.scorers import SCORERS
    from pipeline.selectors import SELECTORS
    from pipeline.training.columns import COLUMNS

    return {"scorer": SCORERS, "selector": SELECTORS, "loss": LOSSES, "column provider": COLUMNS}


def _part_names(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(recipe key, kind, name) of every part the recorded config names."""
    out: list[tuple[str, str, str]] = []
    score, train, select = config.get("score") or {}, config.get("train") or {}, config.get("select") or {}
    scorers = score.get("scorer") if isinstance(score, dict) else None
    for i, name in enumerate(scorers if isinstance(scorers, list) else [scorers]):
        out.append((f"score.scorer[{i}]" if isinstance(scorers, list) else "score.scorer", "scorer", name))
    steps = select if isinstance(select, list) else [select]
    for i, step in enumerate(steps):
        if isinstance(step, dict):
            out.append((f"select[{i}].rule" if isinstance(select, list) else "select.rule", "selector", step.get("rule")))
    if isinstance(train, dict):
        out.append(("train.loss", "loss", train.get("loss")))
        for column, provider in (train.get("columns") or {}).items():
            out.append((f"train.columns.{column}", "column provider", provider))
    return [(k, kind, n) for k, kind, n in out if isinstance(n, str) and n]


def _strings(value: Any, key: str) -> list[tuple[str, str]]:
    """(key, string) of every string below `value`, keys dotted."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _strings(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, list):
        return [x for i, v in enumerate(value) for x in _strings(v, f"{key}[{i}]")]
    return [(key, value)] if isinstance(value, str) else []


def recorded_code(config: dict[str, Any]) -> list[str]:
    """What in a recorded config would run code not built into the pipeline: `key: why` lines."""
    found: dict[str, str] = {}
    for section in ("score", "select", "train"):
        for key, text in _strings(config.get(section), section):
            if _MODULE_ATTR.fullmatch(text):
                found[key] = f"{key}: names the module {text!r}, whose code regenerating would import and run"
    registries = _registries()
    for key, kind, name in _part_names(config):
        if key not in found and ":" not in name and name not in registries[kind].names():
            found[key] = f"{key}: {kind} {name!r} is neither built in nor an installed entry point"
    return list(found.values())


def read_card(card_dir: Path) -> dict[str, Any]:
    """A card's card.json and its recorded config, checked to be JSON objects; else one-line errors."""
    path = card_dir / "card.json"
    if not path.is_file():
        raise FileNotFoundError(f"{card_dir} is not a data card folder (no card.json)")
    card = read_json(path)
    if not isinstance(card, dict):
        raise ValueError(f"{path}: a card must be a JSON object, got {type(card).__name__}")
    run = card.get("run")
    config = run.get("config") if isinstance(run, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: run.config must be the recorded recipe (a JSON object), got "
                         f"{type(config).__name__}; this card cannot be regenerated")
    return card


def _subset(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path, glob=False, hive_partitioning=False)


def regenerate(card_dir: str | Path, out_dir: str | Path, cache_dir: str | Path | None = None,
               allow_code: bool = False) -> dict[str, Any]:
    """Re-run a card's curation (load -> score -> select) from the config it recorded and compare the
    subset with the card's `subset.parquet`, row for row (ids, content, weights).

    `cache_dir` defaults to a fresh folder under `out_dir`, so every stage is recomputed rather than
    read back from the stage cache that produced the card. `out_dir` must be new, empty or an earlier
    regenerate output, and may not overlap the card. A config that names code is refused unless
    `allow_code`.
    """
    card_dir = Path(card_dir)
    card = read_card(card_dir)
    out_dir = check_output(out_dir, "--out", inputs=[card_dir], folder=True, own_marker=REPORT)
    config = dict(card["run"]["config"])
    code = recorded_code(config)
    if code and not allow_code:
        raise ConfigError(str(card_dir / "card.json"), f"the recorded config names code ({code[0]}); "
                                                       "pass --allow-code to run it if you trust this card")
    config.update(cache_dir=str(cache_dir or out_dir / "cache"), cards_dir=str(out_dir / "cards"))
    config.pop("recipe_file", None)
    try:
        validate(config)  # names that become paths, bounds, types: checked as the card recorded them
    except ConfigError as e:
        raise ConfigError(f"{card_dir / 'card.json'}: run.config.{e.key}", str(e).removeprefix(f"{e.key}: ")) from None
    old = _subset(card_dir / "subset.parquet")
    write_json(out_dir / REPORT, {"card": str(card_dir), "status": "started"})  # a failed attempt may be re-run here
    metrics = curate_flow(config=config, run_dir=str(out_dir / "run"))
    new = _subset(Path(metrics["data_card"]) / "subset.parquet")
    same_ids = old.get_column("id").to_list() == new.get_column("id").to_list()
    identical = same_ids and old.equals(new)
    report = {"identical": identical, "rows": {"card": old.height, "regenerated": new.height},
              "same_ids": same_ids, "card": str(card_dir), "regenerated_card": metrics["data_card"]}
    write_json(out_dir / REPORT, report)
    return report
