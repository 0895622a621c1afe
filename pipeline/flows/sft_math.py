"""`sft-math`: curate (load -> score -> select -> card) -> evaluate base -> train -> evaluate tuned."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from pipeline.core.io import write_json
from pipeline.flows.common import ensure_run_dir, publish_artifacts
from pipeline.flows.recipe import resolve
from pipeline.stages import ModelRef, publish, wiring


@flow(name="sft-math", validate_parameters=False)
def sft_math_flow(config, run_dir: str | None = None) -> dict:
    """Run the whole recipe; returns the metrics also written to run_dir/metrics.json."""
    plan = resolve(config)
    run_dir = ensure_run_dir(plan.recipe, run_dir)
    clock = Clock()
    cur = clock("curate", wiring.curate, plan, run_dir)
    base = clock("eval_base", wiring.evaluate, plan, cur.model, cur.data.test, "base")
    trained = clock("train", wiring.train, plan, cur.data.train, cur.selection, cur.model, cur.scores)
    tuned_model = ModelRef.of(trained.model_dir)
    tuned = clock("eval_tuned", wiring.evaluate, plan, tuned_model, cur.data.test, "tuned")
    publish(trained.model_dir, Path(run_dir) / "model")
    for label, ev in (("base", base), ("tuned", tuned)):
        wiring.publish_eval(run_dir, label, ev)
    sel = cur.selection
    metrics = {
        "recipe": plan.recipe.name, "base": base.model_dump(), "tuned": tuned.model_dump(),
        "delta": nll_delta(base, tuned, plan.recipe.seed),
        "selection": {"read": sel.read, "kept": sel.kept, "dropped": sel.dropped},
        "train": {"loss": plan.recipe.train.loss, **{k: getattr(trained, k, None) for k in (
            "train_loss", "steps", "runtime_s", "model_dir", "resumed_from", "loss_history", "igf_skipped", "igf_fallback_steps")}},
        "seconds": clock.seconds, "data_card": cur.card,
        "cache_keys": {**cur.cache_keys, "tuned_model": tuned_model.key}, "run_dir": run_dir,
    }
    write_json(Path(run_dir) / "metrics.json", metrics)
    publish_artifacts(plan.recipe.name, metrics, sel.counts())
    return metrics


class Clock:
    """Wall seconds of each phase of a flow, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.seconds[phase] = round(time.perf_counter() - t0, 1)
        return out


def nll_delta(base, tuned, seed: int) -> dict:
    """Tuned minus base accuracy, response NLL and bits per byte with paired 95% bootstrap CIs over
    the test examples: whether the fine-tune helped beyond test-set noise."""
    import polars as pl

    from pipeline.evaluation.stats import paired_nll_difference

    diff = paired_nll_difference(pl.read_parquet(base.table, glob=False), pl.read_parquet(tuned.table, glob=False), seed=seed)
    return {"accuracy": tuned.accuracy - base.accuracy, "nll": diff["d_nll"],
            "nll_ci": [diff["d_nll_lo"], diff["d_nll_hi"]], "bits_per_byte": diff["d_bpb"],
            "bits_per_byte_ci": [diff["d_bpb_lo"], diff["d_bpb_hi"]], "n_examples": diff["n_examples"],
            "accuracy_ci": [diff["d_accuracy_lo"], diff["d_accuracy_hi"]], "n_generated": diff["n_generated"]}
