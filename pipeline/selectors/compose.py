"""Compose selectors: apply a list of steps in order, each to the rows the previous steps kept.

A step is `{"rule": name, ...params}`; the optional key `weights` says how a kept row's weight combines
with the weight it already had: `"multiply"` (default) or `"replace"`. Every step's selector is built
(its parameters checked) before the first one runs, so a typo in a late step fails at once, with a
`ConfigError` naming the recipe key (`select.<key>` for one step, `select[i].<key>` in a list).
A row dropped by a stage keeps that stage's reason and weight and is not read by later stages. Extra
columns a stage returns (CLEAR's `new_response`, `old_response`, `p_better`; sensitivity's `draws`)
survive every later stage for every row: a later stage that does not write a column leaves it as it
was, and one that writes it wins where its value is not null (a null means "nothing to say", so a
later stage never erases an earlier CLEAR correction - arXiv 2403.12776's corrections must reach
training and the data card). Every stage runs with the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipeline.core.registry import ConfigError
from pipeline.selectors import SELECTORS
from pipeline.selectors.base import SELECTION_SCHEMA, SelectContext, Selector, run_selector

WEIGHT_MODES = ("multiply", "replace")
STEP_KEYS = ("rule", "weights")  # what a step holds besides its selector's parameters


@dataclass
class Step:
    """One selection step, built: the rule's name, its selector, how weights combine, its parameters, its recipe key."""

    rule: str
    selector: Selector
    weights: str = "multiply"
    params: dict[str, Any] = field(default_factory=dict)
    where: str = "select"

    def as_dict(self) -> dict[str, Any]:
        """The step as a recipe writes it (`{rule, weights?, **params}`): what cards record."""
        return {"rule": self.rule, **({"weights": self.weights} if self.weights != "multiply" else {}), **self.params}


def build_steps(select: dict[str, Any] | list[dict[str, Any]], where: str = "select") -> list[Step]:
    """Each step checked and built; errors name `where.<key>` (one rule, a mapping) or `where[i].<key>` (a list)."""
    steps = [select] if isinstance(select, dict) else list(select)
    if not steps:
        steps = [{"rule": "all"}]
    built = []
    for i, step in enumerate(steps):
        at = where if isinstance(select, dict) or len(steps) == 1 else f"{where}[{i}]"
        if not isinstance(step, dict) or not step.get("rule"):
            raise ConfigError(f"{at}.rule", f"a selection step needs a rule name, got {step!r}")
        mode = step.get("weights", "multiply")
        if mode not in WEIGHT_MODES:
            raise ConfigError(f"{at}.weights", f"must be one of {', '.join(WEIGHT_MODES)}, got {mode!r}")
        params = {k: v for k, v in step.items() if k not in STEP_KEYS}
        selector = SELECTORS.build(step["rule"], params, at, name_key=f"{at}.rule")
        built.append(Step(step["rule"], selector, mode, params, at))
    return built


def compose(scores: pl.DataFrame, steps: list[Step] | list[dict[str, Any]], seed: int = 0,
            context: SelectContext | None = None,
            where: str = "select") -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Final selection (one row per input id, input order) and per-stage read/kept/dropped counts.

    `steps` are built steps (`build_steps`), or recipe dicts built here, every one checked before any runs."""
    built = steps if steps and all(isinstance(s, Step) for s in steps) else build_steps(list(steps), where)
    current = scores.select("id").with_columns(pl.lit(True).alias("kept"), pl.lit(1.0).alias("weight"),
                                               pl.lit("kept: no stage").alias("reason"))
    stages: list[dict[str, Any]] = []
    for i, step in enumerate(built):
        alive = current.filter(pl.col("kept")).select("id")
        stage_in = alive.join(scores, on="id", how="left", maintain_order="left")
        out = run_selector(step.selector, stage_in, seed=seed, context=context)
        prev = current.select("id", pl.col("weight").alias("_prev"))
        out = out.join(prev, on="id", how="left", maintain_order="left").with_columns(
            pl.when(pl.col("kept") & pl.lit(step.weights == "multiply")).then(pl.col("weight") * pl.col("_prev"))
            .otherwise(pl.col("weight")).alias("weight")
        ).drop("_prev")
        current = _update(current, out)
        kept = int(out.get_column("kept").sum())
        stages.append({"stage": f"{i}:{step.rule}", "rule": step.rule, "params": step.params,
                       "read": out.height, "kept": kept, "dropped": out.height - kept})
    return current, stages


def _update(current: pl.DataFrame, out: pl.DataFrame) -> pl.DataFrame:
    """Replace the rows a stage read by its output; rows dropped earlier stay as they were.

    Extra columns written by earlier stages are carried onto the stage's rows: columns the stage
    does not write are copied from `current`, and columns it does write fall back to the earlier
    value where the stage's value is null (so a `clear -> all` composition keeps every correction).
    """
    extras = [c for c in current.columns if c not in SELECTION_SCHEMA]
    if extras:
        before = current.select("id", *[pl.col(c).alias(f"_prev_{c}") for c in extras])
        out = out.join(before, on="id", how="left", maintain_order="left").with_columns(
            [(pl.coalesce(c, f"_prev_{c}") if c in out.columns else pl.col(f"_prev_{c}")).alias(c)
             for c in extras]
        ).drop([f"_prev_{c}" for c in extras])
    untouched = current.join(out.select("id"), on="id", how="anti")
    merged = pl.concat([untouched, out], how="diagonal_relaxed")
    order = current.select("id")
    return order.join(merged, on="id", how="left", maintain_order="left")
