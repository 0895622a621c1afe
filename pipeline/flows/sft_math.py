"""`sft-math`: load math data -> score -> select -> fine-tune -> evaluate base vs tuned -> data card.

Each stage is a Prefect task that reads and writes files in the run directory and passes only
paths and small dicts, so a stage whose output already exists in `run_dir` is skipped on re-run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, task

from pipeline.config import config_hash
from pipeline.io import read_json, write_json, write_parquet


def _log(msg: str) -> None:
    print(f"[sft-math] {msg}", flush=True)


@task(name="load-data")
def load_data(cfg: dict, seed: int, run_dir: str) -> dict[str, Any]:
    """Write train/validation/test parquet files with disjoint questions; return paths and fingerprints."""
    from pipeline.data import fingerprint, load_math

    out = Path(run_dir) / "data"
    info_path = out / "splits.json"
    if info_path.exists():
        return read_json(info_path)
    splits = load_math(cfg["dataset"], int(cfg["n_train"]), int(cfg["n_val"]), int(cfg["n_test"]), seed)
    info: dict[str, Any] = {"dataset": cfg["dataset"], "seed": seed}
    for name, df in splits.items():
        write_parquet(out / f"{name}.parquet", df)
        info[name] = {"path": str(out / f"{name}.parquet"), "rows": df.height, "fingerprint": fingerprint(df)}
    write_json(info_path, info)
    _log("data: " + ", ".join(f"{k} {info[k]['rows']}" for k in ("train", "validation", "test")))
    return info


@task(name="score")
def score(train_path: str, model: str, cfg: dict, seed: int, run_dir: str) -> str:
    """Score every training example; the table is keyed by example id."""
    from pipeline.scorers import ScoreContext
    from pipeline.scoring import compute_scores

    out = Path(run_dir) / "scores.parquet"
    if out.exists():
        return str(out)
    ctx = ScoreContext(model_name=model, max_length=int(cfg.get("max_length", 512)),
                       max_tokens=int(cfg.get("max_tokens", 8192)), seed=seed)
    t0 = time.perf_counter()
    compute_scores(pl.read_parquet(train_path), cfg["scorer"], ctx, out, cfg.get("params") or {})
    _log(f"scored with {cfg['scorer']} in {time.perf_counter() - t0:.0f}s -> {out}")
    return str(out)


@task(name="select")
def select(scores_path: str, cfg: dict, seed: int, run_dir: str) -> dict[str, Any]:
    """Apply the selection rule; every id gets kept/dropped, a reason and a weight."""
    from pipeline.selectors import get_selector, run_selector
    from pipeline.selectors.base import summarize

    out = Path(run_dir) / "selection.parquet"
    params = {k: v for k, v in cfg.items() if k != "rule"}
    if not out.exists():
        selection = run_selector(get_selector(cfg["rule"]), pl.read_parquet(scores_path), seed=seed, **params)
        write_parquet(out, selection)
    summary = summarize(pl.read_parquet(out))
    _log(f"selected {summary['kept']} of {summary['read']} by {cfg['rule']} {params}")
    return {"path": str(out), **summary}


@task(name="train")
def train_model(train_path: str, selection_path: str, model: str, cfg: dict, seed: int, run_dir: str) -> dict:
    """Fine-tune the base model on the kept examples (their selection weights reach the loss)."""
    from pipeline.training import train

    out = Path(run_dir) / "train"
    done = out / "train_metrics.json"
    if done.exists():
        return read_json(done)
    examples = pl.read_parquet(train_path)
    selection = pl.read_parquet(selection_path).filter(pl.col("kept"))
    kept = examples.join(selection.select("id", "weight"), on="id", how="inner", maintain_order="left")
    weights = kept.get_column("weight").to_list()
    uniform = all(abs(w - 1.0) < 1e-12 for w in weights)
    _log(f"training on {kept.height} examples with loss {cfg.get('loss', 'ce')}")
    metrics = train(model, kept.drop("weight"), out, cfg, seed=seed, weights=None if uniform else weights)
    write_json(done, metrics)
    _log(f"trained {metrics['steps']} steps in {metrics['runtime_s']:.0f}s, final loss {metrics['train_loss']:.4f}")
    return metrics


@task(name="evaluate")
def evaluate(model: str, label: str, test_path: str, cfg: dict, run_dir: str) -> dict:
    """Accuracy of the final answer and mean response NLL on the held-out test split."""
    from pipeline.evaluate import evaluate_model

    out = Path(run_dir) / "eval" / f"{label}.json"
    if out.exists():
        return read_json(out)
    t0 = time.perf_counter()
    metrics, table = evaluate_model(model, pl.read_parquet(test_path), cfg)
    write_parquet(out.with_suffix(".parquet"), table)
    metrics["seconds"] = time.perf_counter() - t0
    write_json(out, metrics)
    _log(f"{label}: accuracy {metrics['accuracy']:.3f} ({metrics['n_generate']} problems), "
         f"response NLL {metrics['nll']:.4f} ({metrics['n_nll']} examples)")
    return metrics


@task(name="data-card")
def card(config: dict, data: dict, scores_path: str, selection: dict, run_dir: str) -> str:
    """Write the data card of the selected subset into `cards_dir`."""
    from pipeline.cards import write_card

    examples = pl.read_parquet(data["train"]["path"])
    scores = pl.read_parquet(scores_path)
    sel = pl.read_parquet(selection["path"])
    columns = [c for c in scores.columns if c != "id" and scores.schema[c].is_numeric()]
    main = config["select"].get("column")
    columns = ([main] if main in columns else []) + [c for c in columns if c != main]
    name = f"{config['name']}-{data['train']['fingerprint']}-{config_hash(config['select'])}"
    path = write_card(
        Path(config.get("cards_dir", "data_cards")) / name,
        name=name,
        examples=examples,
        scores=scores,
        selection=sel,
        source={"dataset": data["dataset"], "split": "train", "seed": data["seed"],
                "fingerprint": data["train"]["fingerprint"], "rows": data["train"]["rows"]},
        scorers=[{"name": config["score"]["scorer"], "model": config["model"],
                  "params": config["score"].get("params") or {}}],
        rules=[dict(config["select"])],
        stages=[{"stage": f"select:{config['select']['rule']}", "read": selection["read"],
                 "kept": selection["kept"], "dropped": selection["dropped"]}],
        score_columns=columns[:3],
        run={"run_dir": run_dir, "recipe": config["name"]},
    )
    return str(path)


@flow(name="sft-math")
def sft_math_flow(config: dict, run_dir: str) -> dict:
    """Run the whole recipe; returns the metrics also written to run_dir/metrics.json."""
    seed = int(config.get("seed", 0))
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - t0, 1)
        return result

    data = timed("load_data", load_data, config["data"], seed, run_dir)
    scores_path = timed("score", score, data["train"]["path"], config["model"], config["score"], seed, run_dir)
    selection = timed("select", select, scores_path, config["select"], seed, run_dir)
    card_path = timed("card", card, config, data, scores_path, selection, run_dir)
    base = timed("eval_base", evaluate, config["model"], "base", data["test"]["path"], config["eval"], run_dir)
    trained = timed("train", train_model, data["train"]["path"], selection["path"], config["model"],
                    config["train"], seed, run_dir)
    tuned = timed("eval_tuned", evaluate, trained["model_dir"], "tuned", data["test"]["path"], config["eval"], run_dir)
    metrics = {
        "recipe": config["name"],
        "base": base,
        "tuned": tuned,
        "delta": {"accuracy": tuned["accuracy"] - base["accuracy"], "nll": tuned["nll"] - base["nll"]},
        "selection": {k: selection[k] for k in ("read", "kept", "dropped")},
        "train": {k: trained[k] for k in ("train_loss", "steps", "runtime_s", "model_dir")},
        "seconds": timings,
        "data_card": card_path,
        "run_dir": run_dir,
    }
    write_json(Path(run_dir) / "metrics.json", metrics)
    return metrics
