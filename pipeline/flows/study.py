"""`study`: does a curation rule or a loss help? Variants x seeds at equal compute, with paired CIs.

The recipe's shared sections (data, score, select, train, eval) are the baseline: by default a
random subset (`select: {rule: random, fraction: 0.5}`) trained with plain cross-entropy, the
comparison every selection paper uses. Each variant is a `name` plus overrides of any of those
sections (`{name: dft, train: {loss: dft}}`, `{name: ppl-low, select: {rule: fraction, ...}}`,
`{name: other-source, data: {source: b.jsonl}}`); `select` is replaced whole, the other sections are
merged key by key, except that a variant giving `score.scorer` also replaces `score.params` (they are keyed by
the scorers, so the baseline's would name scorers the variant no longer runs). A variant may change the data (a source, a mixture, sizes) but not the test split:
before any cell runs, every variant's test split is checked to be the baseline's. Every variant runs for every
seed (selection and training seeds; all cells share one test split, `data_seed`), trains the same
number of steps at the same batch size (compute keys cannot be overridden), and is evaluated on the
same test examples, so differences are paired. Each (variant, seed) cell is a Prefect subflow whose
stages live in the shared content-addressed cache: a killed study re-run finishes the rest only. After every
seed the results so far are written (marked `partial` until the last seed), so an hours-long study can be
read while it runs.
"""

from __future__ import annotations

import copy
import os
import platform
import sys
import time
from pathlib import Path

import polars as pl
import torch
from prefect import flow

from pipeline.core.config import Recipe
from pipeline.core.io import write_json
from pipeline.core.registry import ConfigError
from pipeline.flows.common import ensure_run_dir, publish_artifacts
from pipeline.flows.recipe import merge, resolve
from pipeline.selectors.base import CORRECTION
from pipeline.stages import ModelRef, log, wiring
from pipeline.stages.base import STAGE_LOG
from pipeline.stages.plan import Plan

BASELINE = "baseline"
PHASES = {"data": "data", "subset": "data", "scores": "scoring", "selection": "selection", "train": "training",
          "eval": "evaluation"}  # stage kind -> the phase its compute time counts in
SECTIONS = ("data", "score", "select", "train", "eval")
COMPUTE_KEYS = ("max_steps", "epochs", "batch_size", "grad_accum")  # equal compute: shared by every variant


def variant_plans(recipe: Recipe, seed: int | None = None) -> list[tuple[str, Plan]]:
    """(name, plan) of the baseline and of every variant, at `seed` (default the recipe's), all on the study's
    one data split; errors name `variants[i].<key>`."""
    if not recipe.variants:
        raise ConfigError("variants", "a study needs at least one variant, e.g. [{name: dft, train: {loss: dft}}]")
    if recipe.train.max_steps <= 0:
        raise ConfigError("train.max_steps", "a study trains every variant the same number of steps: set it > 0")
    base = recipe.model_dump(exclude={"variants", "seeds", "oracle"})
    base.update(flow="sft_math", data_seed=recipe.split_seed, seed=recipe.seed if seed is None else seed)
    out = [(BASELINE, resolve({**base, "name": f"{recipe.name}-{BASELINE}"}))]
    for i, variant in enumerate(recipe.variants):
        where = f"variants[{i}]"
        name = _check_variant(variant, where, {n for n, _ in out})
        cfg = {**copy.deepcopy(base), "name": f"{recipe.name}-{name}"}
        for section in SECTIONS:
            if section in variant:
                over = variant[section]
                cfg[section] = (copy.deepcopy(over) if section == "select" or not isinstance(over, dict)
                                else merge(cfg[section], over))
                if section == "score" and isinstance(over, dict) and "scorer" in over:
                    cfg[section]["params"] = copy.deepcopy(over.get("params") or {})
        try:
            out.append((name, resolve(cfg)))
        except ConfigError as err:
            raise ConfigError(f"{where}.{err.key}", str(err).removeprefix(f"{err.key}: ")) from None
    if recipe.oracle is not None and recipe.oracle not in {n for n, _ in out}:
        raise ConfigError("oracle", f"no variant named {recipe.oracle!r} (variants: "
                                    f"{', '.join(n for n, _ in out[1:])})")
    return out


def check_study(plan: Plan) -> None:
    """Every variant built and checked before anything runs (the study's own check, `FlowSpec.check`)."""
    variant_plans(plan.recipe)


def check_same_test(cells: list[tuple[str, Plan]], recipe: Recipe) -> None:
    """Every cell is evaluated on the baseline's test examples (paired comparisons need it); else one error
    naming the variant. Loading a split is a cached stage, so this costs a read."""
    names = {v.get("name"): i for i, v in enumerate(recipe.variants or []) if isinstance(v, dict)}
    test = wiring.load_data(cells[0][1]).test
    for name, plan in cells[1:]:
        other = wiring.load_data(plan).test
        if other.fingerprint != test.fingerprint:
            raise ConfigError(f"variants[{names[name]}].data", f"variant {name!r} changes the test split ({other.rows} "
                                                              f"rows, fingerprint {other.fingerprint} vs the baseline's "
                                                              f"{test.rows}, {test.fingerprint}): every cell must be "
                                                              "evaluated on the same test examples; keep data.test, "
                                                              "n_test and the test's dataset as the baseline's")


def _check_variant(variant: object, where: str, taken: set[str]) -> str:
    if not isinstance(variant, dict) or not isinstance(variant.get("name"), str) or not variant["name"]:
        raise ConfigError(where, "each variant is a mapping with a `name` and section overrides")
    if variant["name"] in taken:
        raise ConfigError(f"{where}.name", f"{variant['name']!r} is used twice (or is the baseline's name)")
    unknown = set(variant) - {"name", *SECTIONS}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}", f"a variant overrides only {', '.join(SECTIONS)}")
    fixed = set(variant.get("train") or {}) & set(COMPUTE_KEYS)
    if fixed:
        raise ConfigError(f"{where}.train.{sorted(fixed)[0]}", "equal compute: steps, epochs and batch are "
                                                               "shared by every variant (set them in train)")
    return variant["name"]


def noise_kept(train: str, selection: str) -> dict[str, int]:
    """With `data.noise`: how many corrupted training rows of each kind the selection kept (else {}).

    A row a selector corrected (CLEAR) trains on its new response, so it is not counted as kept
    noise; `corrected` says how many corrupted rows were replaced that way.
    """
    examples = pl.read_parquet(train, glob=False)
    if "noise" not in examples.columns:
        return {}
    selected = pl.read_parquet(selection, glob=False)
    fixed = pl.col(CORRECTION).is_not_null() if CORRECTION in selected.columns else pl.lit(False)
    selected = selected.select("id", "kept", fixed.alias("_fixed"))
    noisy = examples.join(selected, on="id", how="left").filter(pl.col("noise").is_not_null())
    still = noisy.with_columns((pl.col("kept").fill_null(False) & ~pl.col("_fixed").fill_null(False)).alias("bad"))
    counts = still.group_by("noise").agg(pl.col("bad").sum()).sort("noise")
    out = {"all": int(still.get_column("bad").sum()), **dict(counts.iter_rows())}
    n_fixed = int(still.get_column("_fixed").fill_null(False).sum())
    return {**out, "corrected": n_fixed} if n_fixed else out


@flow(name="study-cell", validate_parameters=False)
def study_cell(config, run_dir: str) -> dict:
    """One variant at one seed: curate, train, evaluate the tuned model; every stage cached."""
    plan = resolve(config)
    t0 = time.perf_counter()
    cur = wiring.curate(plan, run_dir)
    trained = wiring.train(plan, cur.data.train, cur.selection, cur.model, cur.scores)
    tuned = wiring.evaluate(plan, ModelRef.of(trained.model_dir), cur.data.test, "tuned")
    return {"eval_table": tuned.table, "kept": cur.selection.kept, "steps": trained.steps,
            "noise_kept": noise_kept(cur.data.train.path, cur.selection.path),
            "train_tokens": getattr(trained, "train_tokens", None), "train_seconds": getattr(trained, "runtime_s", None),
            "seconds": round(time.perf_counter() - t0, 1), "nll": tuned.nll, "accuracy": tuned.accuracy,
            "data_card": cur.card, "test_size": cur.data.test.rows, "model_dir": trained.model_dir}


@flow(name="study", validate_parameters=False)
def study_flow(config, run_dir: str | None = None) -> dict:
    """Every variant x seed, then per-variant NLL, bits per byte and accuracy with paired 95% CIs."""
    from pipeline.evaluation.stats import corpus_metrics  # noqa: F401 - fail early if stats are missing
    from pipeline.reports.study import write_results

    r = resolve(config).recipe
    run_dir = ensure_run_dir(r, run_dir)
    seeds = r.seeds or [r.seed]
    t0 = time.perf_counter()
    tables, runs, test_size, names, curves = [], [], None, [], {}
    first_stage = len(STAGE_LOG)
    check_same_test(variant_plans(r), r)

    def meta(done: list[int]) -> dict:
        out = {"recipe": r.name, "command": "pipeline " + " ".join(sys.argv[1:]), "seeds": done,
               "test_size": test_size, "variants": names, "train_steps": r.train.max_steps,
               "batch_size": r.train.batch_size, "model": r.model, "machine": _machine(),
               "date": time.strftime("%Y-%m-%d %H:%M"), "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1),
               "compute_minutes": compute_minutes(STAGE_LOG[first_stage:])}
        if done != seeds:
            out["partial"] = (f"results of seeds {done} of {seeds}: the study is still running or was stopped "
                              "(re-run the same command to finish the rest; finished cells are reused)")
        return out

    for i, seed in enumerate(seeds):
        cells = variant_plans(r, seed)
        names = [name for name, _ in cells]
        for name, plan in cells:
            log(f"study cell {name} seed {seed}")
            out = study_cell(config=plan, run_dir=str(Path(run_dir) / "cells" / f"{name}-seed{seed}"))
            test_size = out["test_size"]
            curves[f"{name}/seed{seed}"] = out["model_dir"]  # TensorBoard overlays the cells
            tables.append(pl.read_parquet(out["eval_table"], glob=False).select(
                pl.lit(name).alias("variant"), pl.lit(seed).alias("seed"), "id", "nll_sum", "n_tokens", "n_bytes",
                pl.when(pl.col("generated")).then(pl.col("correct")).alias("correct")))
            runs.append({"variant": name, "seed": seed, **{k: out[k] for k in ("steps", "train_tokens", "kept")},
                         "train_seconds": out["train_seconds"],
                         **{f"noise_kept_{kind}": n for kind, n in out["noise_kept"].items()}})
        done = meta(seeds[: i + 1])  # after every seed: a long study shows what it has so far
        written = write_results(Path(run_dir), pl.concat(tables), pl.DataFrame(runs), BASELINE, done,
                                    oracle=r.oracle)
        write_json(Path(run_dir) / "study.json", done)
    metrics = {"recipe": r.name, "study": written["rows"], "run_dir": run_dir,
               "results": str(Path(run_dir) / "results.md")}
    write_json(Path(run_dir) / "metrics.json", metrics)
    publish_artifacts(r.name, {"run_dir": run_dir, "tensorboard": curves}, written["rows"])
    return metrics


def compute_minutes(stages: list[dict]) -> dict[str, float | int]:
    """Minutes of compute by phase (data, scoring, selection, training, evaluation) over the stages a study used,
    each stage folder counted once (cells share their data and scores) with the time recorded when it ran, so a
    resumed or fully cached study still reports what the whole study cost; `unrecorded`: stages run by code
    that kept no time."""
    seen: dict[str, dict] = {s["folder"]: s for s in stages}
    out: dict[str, float | int] = {phase: 0.0 for phase in dict.fromkeys(PHASES.values())}
    for stage in seen.values():
        if stage["seconds"] is not None:
            phase = PHASES.get(stage["kind"], stage["kind"])
            out[phase] = out.get(phase, 0.0) + stage["seconds"] / 60
    out = {k: round(v, 1) for k, v in out.items()}
    out["total"] = round(sum(out.values()), 1)
    out["unrecorded"] = sum(s["seconds"] is None for s in seen.values())
    return out


def _machine() -> str:
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.machine()} {os.cpu_count()} CPUs{gpu}"
