"""The stages every flow is wired from, as Prefect tasks that pass paths and fingerprints.

Each stage writes into a content-addressed folder `<cache_root>/<stage>/<key>` whose key hashes
everything its output depends on (input fingerprints, model revision, the stage's config, seed and
the code: `pipeline.core.hashing.code_version` of the layers it runs plus any `module:attr` part),
under a lock on that key, and skips the work when the folder is complete: its marker, written
last, matches every file's size and hash (`pipeline.core.io.is_complete`). So re-running a flow
after a crash, or with one changed parameter or edited file, recomputes only the stages downstream
of the change; a deleted or truncated cache file is recomputed; two runs of one config compute it
once. These folders are the only cache: Prefect records every task run (UI, artifacts) but
persists no task results, so nothing is ever unpickled from its result storage.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.core.hashing import code_version, config_hash, file_hash, fingerprint
from pipeline.core.io import (
    atomic_path,
    is_complete,
    locked,
    mark_complete,
    read_json,
    write_json,
    write_parquet,
)
from pipeline.flows.recipe import check_score_columns, scorer_list, select_steps

TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


def log(msg: str) -> None:
    print(f"[pipeline] {msg}", flush=True)


def stage_dir(cache_root: str, stage: str, *parts: Any) -> Path:
    """Content-addressed folder of one stage's output. Every local file or folder a part names (an
    evaluation set to decontaminate against, a reference-data parquet, ...) enters the key by its
    bytes, so editing such a file recomputes the stage."""
    return Path(cache_root) / stage / config_hash([*parts, local_inputs(parts)])


def local_inputs(obj: Any) -> dict[str, str]:
    """`{path: content version}` of every string in `obj` (recursively) naming an existing local file or
    data folder (`pipeline.data.source.source_version`); model folders are keyed by `model_key` instead."""
    from pipeline.data.source import source_version

    found: dict[str, str] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and ("/" in value or "." in value) and len(value) < 4096 and value not in found:
            path = Path(value).expanduser()
            if path.is_file() or (path.is_dir() and _data_folder(path)):
                found[value] = source_version(value)

    walk(obj)
    return found


def _data_folder(path: Path) -> bool:
    """A folder whose files are inputs: not a model (config.json), not the cache, not the working folder
    or one of its parents."""
    from pipeline.core.config import cache_dir

    resolved, cwd = path.resolve(), Path.cwd().resolve()
    return not ((path / "config.json").is_file() or resolved in (cwd, *cwd.parents)
                or resolved.is_relative_to(cache_dir().resolve()))


def stage_code(stage: str, cfg: Any = None) -> str:
    """The code version a stage's output depends on: the layers it runs (`pipeline.core.hashing`) and
    the source of any `module:attr` scorer, rule or loss its config names. Stages that train a
    reference model (learnability, CLEAR's correction, data-mix proxies) also depend on training."""
    from pipeline.scorers import SCORERS

    if stage == "score":
        names = [name for name, _ in scorer_list(cfg)]
        trains = any(SCORERS.get(n).trains_reference for n in names)
        return code_version("training" if trains else "scorers", names)
    if stage == "select":
        rules = [step.get("rule", "") for step in select_steps(cfg)]
        return code_version("training" if set(rules) & {"clear", "datamix"} else "selectors", rules)
    if stage == "train":
        return code_version("training", [cfg["loss"]])
    return code_version({"data": "data", "eval": "evaluation"}[stage])


def publish(src: str | Path, dest: str | Path) -> Path:
    """Make a stage output visible in the run directory: copy a file (the run keeps its own bytes, so a
    damaged cache never damages an older run), symlink a folder (a model: verified before every reuse)."""
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        shutil.rmtree(dest)
    if src.is_dir():
        dest.symlink_to(src.resolve(), target_is_directory=True)
    else:
        with atomic_path(dest) as tmp:
            shutil.copy2(src, tmp)
    return dest


def run_stage(stage, *args: Any) -> Any:
    """Run one stage task (it returns at once when its folder is complete) and check what it returns."""
    result = stage(*args)
    broken = [p for p in _paths(result) if not Path(p).exists()]
    if broken:
        raise RuntimeError(f"stage {stage.name} returned {broken[0]}, which does not exist")
    return result


def _paths(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in ([v] if k in {"path", "model_dir"} else _paths(v))]
    return []


@task(name="load-data", **TASK_OPTIONS)
def load_data(cfg: dict, seed: int, cache_root: str, code: str) -> dict[str, Any]:
    """Train/validation/test parquet files with disjoint questions, and their fingerprints."""
    from pipeline.data import load_math
    from pipeline.data.source import load_source, source_version

    if cfg.get("source"):  # the user's data: keyed by the bytes of its files, not by their names
        cfg = {k: v for k, v in cfg.items() if k not in ("dataset", "n_train", "n_val", "n_test", "subset")}
        versions = {k: source_version(str(cfg[k])) for k in ("source", "validation", "test") if cfg.get(k)}
        out = stage_dir(cache_root, "data", cfg, code, versions)
    else:
        out = stage_dir(cache_root, "data", cfg, seed, code)
    info_path = out / "splits.json"
    with locked(out):
        if not is_complete(out):
            info: dict[str, Any] = {"dataset": cfg.get("source") or cfg["dataset"], "seed": seed}
            if cfg.get("source"):
                loaded = load_source(cfg)
                splits = {k: loaded[k] for k in ("train", "validation", "test")}
                write_parquet(out / "quarantine.parquet", loaded["quarantine"])
                info.update(read=loaded["read"], quarantined=loaded["quarantine"].height,
                            quarantine=str(out / "quarantine.parquet"))
            else:
                splits = load_math(cfg["dataset"], int(cfg["n_train"]), int(cfg["n_val"]), int(cfg["n_test"]), seed)
            for name, df in splits.items():
                write_parquet(out / f"{name}.parquet", df)
                info[name] = {"path": str(out / f"{name}.parquet"), "rows": df.height, "fingerprint": fingerprint(df)}
            write_json(info_path, info)
            mark_complete(out, ["splits.json", *(f"{name}.parquet" for name in splits),
                                *(["quarantine.parquet"] if "quarantine" in info else [])])
    info = read_json(info_path)
    log("data: " + ", ".join(f"{k} {info[k]['rows']}" for k in ("train", "validation", "test"))
        + (f"; read {info['read']}, quarantined {info['quarantined']}" if "read" in info else ""))
    return info


def subset_file(subset: str) -> Path:
    """The parquet of `data.subset`: a data card folder's subset.parquet, or the file itself."""
    path = Path(subset)
    path = path / "subset.parquet" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"data.subset: {path} does not exist (a data card folder or a parquet file)")
    return path


@task(name="load-subset", **TASK_OPTIONS)
def load_subset(path: str, content_hash: str, cache_root: str) -> dict[str, Any]:
    """A selected subset's parquet (see `subset_file`) as a train split plus an all-kept selection carrying
    its `weight` column (1.0 when absent). `content_hash` keys Prefect's cache on the file's bytes."""
    df = pl.read_parquet(path)
    missing = {"id", "prompt", "response"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)} (need id, prompt, response)")
    weights = df.get_column("weight").cast(pl.Float64) if "weight" in df.columns else pl.Series([1.0] * df.height)
    bad = df.with_row_index("row").filter(weights.is_null() | ~weights.is_finite() | (weights <= 0))
    if bad.height:
        raise ValueError(f"{path}: row {bad['row'][0]} (id {bad['id'][0]}), field weight: {bad.height} weights "
                         "are missing, non-finite or <= 0 (a training weight must be a positive number)")
    out = stage_dir(cache_root, "subset", content_hash)
    train_path, sel_path = out / "train.parquet", out / "selection.parquet"
    with locked(out):
        if not is_complete(out):
            reasons = (df.get_column("reason").fill_null("kept: data.subset") if "reason" in df.columns
                       else pl.Series(["kept: data.subset"] * df.height))  # a card's subset keeps its reasons
            write_parquet(train_path, df.drop("weight", "reason", strict=False))
            write_parquet(sel_path, pl.DataFrame({"id": df.get_column("id"), "kept": [True] * df.height,
                                                  "weight": weights, "reason": reasons}))
            mark_complete(out, ["train.parquet", "selection.parquet"])
    log(f"subset: {df.height} examples from {path}")
    return {"train": {"path": str(train_path), "rows": df.height, "fingerprint": fingerprint(df)},
            "selection": {"path": str(sel_path), "hash": file_hash(sel_path)}}


@task(name="score", **TASK_OPTIONS)
def score(train: dict, model: str, model_rev: str, cfg: dict, seed: int, cache_root: str, code: str,
          ref_cfg: dict) -> dict:
    """Score every training example with each scorer (cached per scorer, resumable per shard); a scorer
    that needs a reference model gets one trained with the recipe's train settings `ref_cfg`."""
    from pipeline.scorers import ScoreContext
    from pipeline.scorers.cache import score_cached

    folder = stage_dir(cache_root, "scores", train["fingerprint"], model_rev, cfg, seed, code, ref_cfg)
    out = folder / "scores.parquet"
    with locked(folder):
        if is_complete(folder):
            log(f"scores reused from cache: {out}")
            return {"path": str(out), "key": folder.name}
        examples = pl.read_parquet(train["path"])
        ctx = ScoreContext(model_name=model, max_length=cfg["max_length"], max_tokens=cfg["max_tokens"], seed=seed)
        table = examples.select("id")
        for name, params in scorer_list(cfg):
            t0 = time.perf_counter()
            params = with_reference(name, params, examples, ctx, cache_root, ref_cfg)
            path = score_cached(examples, name, ctx, Path(cache_root) / "scorers", params,
                                shard_size=cfg["shard_size"], executor=cfg["executor"],
                                num_workers=cfg["num_workers"])
            part = pl.read_parquet(path)
            clash = (set(part.columns) & set(table.columns)) - {"id"}
            if clash:
                raise ValueError(f"scorer {name!r} repeats columns {sorted(clash)} of an earlier scorer")
            table = table.join(part, on="id", how="left", maintain_order="left")
            log(f"scored with {name} in {time.perf_counter() - t0:.0f}s")
        write_parquet(out, table)
        mark_complete(folder, ["scores.parquet"])
    return {"path": str(out), "key": folder.name}


def with_reference(scorer: str, params: dict, examples: pl.DataFrame, ctx, cache_root: str,
                   ref_cfg: dict | None = None) -> dict:
    """A scorer that compares with a reference model (learnability) gets one: the recipe's `reference`,
    else the base fine-tuned on the candidate set with the recipe's train settings `ref_cfg` updated
    by the scorer's `reference_train` (trained once, cached)."""
    from pipeline.scorers import SCORERS
    from pipeline.training.reference import reference_model

    if not SCORERS.get(scorer).trains_reference or params.get("reference"):
        return params
    t0 = time.perf_counter()
    cfg = {**(ref_cfg or {}), "max_length": ctx.max_length, **(params.get("reference_train") or {})}
    reference = reference_model(ctx.model_name, examples, cache_root, cfg, ctx.seed)
    log(f"{scorer}: reference model {reference} ({time.perf_counter() - t0:.0f}s)")
    return {**params, "reference": reference}


@task(name="select", **TASK_OPTIONS)
def select(scores: dict, train: dict, model: str, model_rev: str, cfg: dict | list, seed: int,
           cache_root: str, code: str, ref_cfg: dict, max_length: int) -> dict[str, Any]:
    """Apply the selection rule(s); every id gets kept/dropped, a reason and a weight. Selectors that
    train (CLEAR's correction model, data-mix proxies) get a trainer with the recipe's settings `ref_cfg`;
    those that score with the model (sensitivity's default loss) tokenize with the scores' `max_length`."""
    from pipeline.selectors import SelectContext, compose
    from pipeline.selectors.base import summarize
    from pipeline.training.reference import reference_trainer

    out_dir = stage_dir(cache_root, "selection", scores["key"], train["fingerprint"], model_rev, cfg, seed, code,
                        ref_cfg, max_length)
    out, stages_path = out_dir / "selection.parquet", out_dir / "stages.json"
    with locked(out_dir):
        if not is_complete(out_dir):
            context = SelectContext(examples=pl.read_parquet(train["path"]), model_name=model,
                                    run_dir=str(out_dir / "work"), train_fn=reference_trainer(model, cache_root, ref_cfg),
                                    train_cfg=ref_cfg, max_length=max_length)
            score_table = pl.read_parquet(scores["path"])
            check_score_columns(cfg, score_table.columns)
            selection, stage_counts = compose(score_table, select_steps(cfg), seed, context)
            write_json(stages_path, stage_counts)
            write_parquet(out, selection)
            mark_complete(out_dir, ["selection.parquet", "stages.json"])
    summary = summarize(pl.read_parquet(out))
    stage_counts = read_json(stages_path)
    log(f"selected {summary['kept']} of {summary['read']}: "
        + "; ".join(f"{s['rule']} kept {s['kept']}/{s['read']}" for s in stage_counts))
    return {"path": str(out), "hash": file_hash(out), "stages": stage_counts, **summary}


@task(name="train", **TASK_OPTIONS)
def train_model(train: dict, selection: dict, model: str, model_rev: str, cfg: dict, seed: int,
                cache_root: str, code: str, scores: dict | None = None) -> dict:
    """Fine-tune on the kept examples (selection weights reach the loss); resumes from checkpoints.

    `scores` (the score stage's output) is needed by `train.igf_filter`, whose score column travels with
    the examples; it then enters the cache key."""
    igf = (scores or {}).get("key") if cfg.get("igf_filter") else None
    out = stage_dir(cache_root, "train", train["fingerprint"], selection["hash"], model_rev, cfg, seed, code,
                    *([igf] if igf else []))
    done = out / "train_metrics.json"
    with locked(out):
        if not is_complete(out):
            _train(train, selection, model, cfg, seed, cache_root, out, scores)
    return read_json(done)


def _train(train: dict, selection: dict, model: str, cfg: dict, seed: int, cache_root: str, out: Path,
           scores: dict | None = None) -> None:
    """Train into `out` (resuming from its checkpoints) and mark it complete."""
    from pipeline.selectors.clear import apply_corrections
    from pipeline.training.launch import launch_training

    sel = pl.read_parquet(selection["path"])
    examples = apply_corrections(pl.read_parquet(train["path"]), sel)  # CLEAR's replaced responses
    kept_sel = sel.filter(pl.col("kept"))
    kept = examples.join(kept_sel.select("id", "weight"), on="id", how="inner", maintain_order="left")
    weights = kept.get_column("weight").to_list()
    uniform = all(abs(w - 1.0) < 1e-12 for w in weights)
    log(f"training on {kept.height} examples with loss {cfg['loss']}")
    kept = kept.drop("weight")
    if cfg.get("igf_filter"):  # IGF's training-time filter reads each example's predicted IG
        column = cfg["igf_filter"]["column"]
        if scores is None:
            raise ValueError("train.igf_filter needs the score table: pass scores= to train_model")
        table = pl.read_parquet(scores["path"])
        if column not in table.columns:
            raise ValueError(f"train.igf_filter.column {column!r} is not in the score table "
                             f"(columns: {', '.join(c for c in table.columns if c != 'id')})")
        kept = kept.drop(column, strict=False).join(table.select("id", column), on="id", how="left",
                                                    maintain_order="left")
    metrics = launch_training(model, kept, out, cfg, seed=seed, weights=None if uniform else weights,
                              token_columns=token_columns_for(kept, model, cfg, seed, cache_root))
    write_json(out / "train_metrics.json", metrics)
    mark_complete(out, ["train_metrics.json", "model"])
    log(f"trained {metrics['steps']} steps in {metrics['runtime_s']:.0f}s, final loss {metrics['train_loss']:.4f}")


def token_columns_for(kept: pl.DataFrame, model: str, cfg: dict, seed: int, cache_root: str) -> dict | None:
    """Per-token labels / reference NLLs when the loss needs them (forgetting, token_cleaning, rho1), else None.

    Each kept example is scored by a reference that never trained on it (2-fold cross-fitting by
    default; `train.token_labels` in docs/losses.md)."""
    from pipeline.losses import get_loss
    from pipeline.training.token_labels import training_columns

    loss = get_loss(cfg["loss"], **cfg["loss_params"])
    if not getattr(loss, "requires", ()):
        return None
    t0 = time.perf_counter()
    from pipeline.training.reference import reference_settings

    columns = training_columns(kept, cfg["loss"], model, cfg["max_length"], cache_root, cfg["token_labels"], seed,
                               reference_settings(cfg))
    log(f"token labels ({', '.join(columns)}) from base and held-out reference token losses "
        f"in {time.perf_counter() - t0:.0f}s")
    return columns


@task(name="evaluate", **TASK_OPTIONS)
def evaluate(model: str, model_rev: str, label: str, test: dict, cfg: dict, cache_root: str, code: str) -> dict:
    """Accuracy of the final answer and mean response NLL on the held-out test split."""
    from pipeline.evaluation.heldout import evaluate_model

    folder = stage_dir(cache_root, "eval", model_rev, test["fingerprint"], cfg, code)
    out = folder / "eval.json"
    with locked(folder):
        if not is_complete(folder):
            t0 = time.perf_counter()
            metrics, table = evaluate_model(model, pl.read_parquet(test["path"]), cfg)
            write_parquet(out.with_suffix(".parquet"), table)
            metrics["seconds"] = time.perf_counter() - t0
            write_json(out, metrics)
            mark_complete(folder, ["eval.json", "eval.parquet"])
    metrics = read_json(out)
    metrics["path"] = str(out)
    log(f"{label}: accuracy {metrics['accuracy']:.3f} ({metrics['n_generate']} problems), "
        f"response NLL {metrics['nll']:.4f} ({metrics['n_nll']} examples)")
    return metrics


@task(name="data-card")
def card(config: dict, data: dict, scores: dict, selection: dict, run_dir: str, cache_keys: dict) -> str:
    """Write the data card of the selected subset into `cards_dir` (cheap, so never cached)."""
    from pipeline.reports.cards import write_card

    score_table = pl.read_parquet(scores["path"])
    columns = [c for c in score_table.columns if c != "id" and score_table.schema[c].is_numeric()]
    main = next((st.get("column") for st in select_steps(config["select"]) if st.get("column")), None)
    columns = ([main] if main in columns else []) + [c for c in columns if c != main]
    name = f"{config['name']}-{data['train']['fingerprint']}-{selection['hash'][:8]}"
    path = write_card(
        Path(config.get("cards_dir", "data_cards")) / name,
        name=name,
        examples=pl.read_parquet(data["train"]["path"]),
        scores=score_table,
        selection=pl.read_parquet(selection["path"]),
        source={"dataset": data["dataset"], "split": "train", "seed": data["seed"],
                "fingerprint": data["train"]["fingerprint"], "rows": data["train"]["rows"],
                **({k: data[k] for k in ("read", "quarantined")} if "read" in data else {})},
        scorers=[{"name": name, "model": config["model"], "params": params}
                 for name, params in scorer_list(config["score"])],
        rules=select_steps(config["select"]),
        stages=[{k: st[k] for k in ("stage", "read", "kept", "dropped")} for st in selection["stages"]],
        score_columns=columns[:3],
        run={"run_dir": run_dir, "recipe": config["name"], "cache_keys": cache_keys, **_flow_run_id(),
             "config": {k: v for k, v in config.items() if not k.startswith("_")}},
        quarantine=pl.read_parquet(data["quarantine"]) if data.get("quarantine") else None,
    )
    publish(path, Path(run_dir) / "data_card")
    return str(path)


def _flow_run_id() -> dict[str, str]:
    from prefect.runtime import flow_run

    return {"flow_run_id": str(flow_run.id)} if flow_run.id else {}
