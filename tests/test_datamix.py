"""Data-mix optimization (arXiv 2508.11953): each proxy trains on exactly its mixture (one epoch over
its N0 examples), and the validation rows that measure the proxies are never selected."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from pipeline.data import SCHEMA, example_id
from pipeline.selectors import SelectContext, get_selector, run_selector
from pipeline.selectors.datamix import PROXY_SCHEDULE, _split, proxy_plan, run_datamix
from tests.test_selectors import TRUE, fake_proxy, score_table


def recording_proxy(runs: list):
    """fake_proxy's losses, recording each proxy's training rows (ids in order, per-domain counts)."""
    inner = fake_proxy([])

    def proxy(train: pl.DataFrame, validation: pl.DataFrame, seed: int) -> dict[str, float]:
        runs.append({"ids": train.get_column("id").to_list(), "domains": train.get_column("domain").to_list(),
                     "counts": dict(train.group_by("domain").len().iter_rows()),
                     "validation": set(validation.get_column("id"))})
        return inner(train, validation, seed)

    return proxy


def test_each_proxy_trains_on_exactly_its_planned_mixture(tmp_path):
    ex = score_table(600)
    runs: list = []
    cfg = {"budget": 200, "proxy_n": 30, "n_val_per_domain": 8, "starts": 2}
    run_datamix(ex, recording_proxy(runs), cfg, tmp_path, seed=0)
    plan = proxy_plan(sorted(TRUE), 30)
    assert [r["counts"] for r in runs] == [p["amounts"] for p in plan]  # sizes = planned amounts
    assert [len(r["ids"]) for r in runs] == [p["N0"] for p in plan]
    # nested prefixes: per domain, a smaller proxy's rows are the first rows of a larger one's
    per_domain = [{d: [i for i, x in zip(r["ids"], r["domains"], strict=True) if x == d] for d in TRUE} for r in runs]
    for d in TRUE:
        longest = max((p[d] for p in per_domain), key=len)
        assert all(p[d] == longest[:len(p[d])] for p in per_domain)
    validation = runs[0]["validation"]
    assert len(validation) == 8 * 3 and all(validation.isdisjoint(r["ids"]) for r in runs)
    cached = [json.loads(p.read_text()) for p in tmp_path.glob("proxy-*.json")]
    assert sorted(c["N0"] for c in cached) == sorted(sum(c["trained"].values()) for c in cached)


def test_validation_rows_are_never_selected_and_the_budget_comes_from_the_rest(tmp_path):
    scores = score_table(300)
    params = {"budget": 150, "proxy_n": 20, "n_val_per_domain": 5, "starts": 2}
    ctx = SelectContext(proxy_train_fn=fake_proxy([]), run_dir=str(tmp_path))
    sel = run_selector(get_selector("datamix", **params), scores, seed=3, context=ctx)
    _, validation = _split(scores.select("id", "domain"), 5, 3)
    val = sel.join(validation, on="id", how="inner")
    assert val.height == 15 and not val.get_column("kept").any()
    assert val.get_column("reason").to_list() == [f"dropped: datamix validation row (domain={d})"
                                                  for d in val.get_column("domain")]
    assert int(sel.get_column("kept").sum()) == 150 and sel.height == scores.height
    assert sel.get_column("id").to_list() == scores.get_column("id").to_list()

    with pytest.raises(ValueError, match="exceeds the 285 rows"):
        run_selector(get_selector("datamix", **{**params, "budget": 290}), scores, seed=3, context=ctx)


def test_train_may_not_cap_the_proxy_schedule():
    with pytest.raises(ValueError, match="max_steps"):
        get_selector("datamix", train={"max_steps": 20})
    assert get_selector("datamix", train={"batch_size": 4}).train == {"batch_size": 4}


def two_domain_examples(per_domain: int) -> pl.DataFrame:
    rows = []
    for i in range(per_domain):
        for domain, p, r in (("math", f"What is {i} plus {i + 1}?", f"{i} + {i + 1} = {2 * i + 1}."),
                             ("chat", f"Say hello to person number {i}.", f"Hello, person number {i}!")):
            rows.append({"id": example_id(p, r), "prompt": p, "response": r, "source": "test", "domain": domain,
                         "answer": None, "messages": None, "meta": None})
    return pl.DataFrame(rows, schema=SCHEMA)


def test_default_proxies_train_one_epoch_so_steps_scale_with_n0(tiny_model_dir, tmp_path):
    """The real default proxy path: the flow's reference trainer on the tiny model, 2 domains.
    Steps must be ceil(N0 / batch_size): one epoch over exactly each proxy's mixture."""
    from pipeline.training.reference import reference_trainer

    train_fn = reference_trainer(tiny_model_dir, tmp_path / "cache", {"max_length": 64, "batch_size": 4})
    runs: list = []

    def recording(examples: pl.DataFrame, seed: int, overrides: dict | None = None) -> str:
        model_dir = train_fn(examples, seed, overrides)
        record = json.loads((Path(model_dir).parent / "reference.json").read_text())
        runs.append({"rows": examples.height, "overrides": overrides, "steps": record["steps"],
                     "train": record["train"]})
        return model_dir

    ex = two_domain_examples(12)
    ctx = SelectContext(examples=ex, train_fn=recording, train_cfg={"max_steps": 3}, run_dir=str(tmp_path / "run"))
    params = {"proxy_n": 4, "n_val_per_domain": 2, "factors": (0.5, 2.0), "starts": 2, "train": {"batch_size": 4}}
    sel = run_selector(get_selector("datamix", **params), ex.select("id"), seed=0, context=ctx)

    planned = [p["N0"] for p in proxy_plan(["chat", "math"], 4, (0.5, 2.0))]
    assert [r["rows"] for r in runs] == planned == [8, 6, 12, 6, 12]
    assert [r["steps"] for r in runs] == [math.ceil(n / 4) for n in planned] == [2, 2, 3, 2, 3]
    assert all(r["overrides"] == {"batch_size": 4, **PROXY_SCHEDULE} for r in runs)  # flow's max_steps overridden
    assert all(r["train"]["epochs"] == 1 and r["train"]["max_steps"] == -1 for r in runs)
    kept = sel.filter(pl.col("kept"))
    assert kept.height == 12 and not sel.filter(pl.col("reason").str.contains("validation row"))["kept"].any()
    assert sel.filter(pl.col("reason").str.contains("validation row")).height == 4
