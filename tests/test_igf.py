"""IGF (arXiv 2010.00050): `information_gain` is the learner's prediction for every row, and the
defaults follow the reference code `igf.py` (AdamW 5e-5, clipping at 3.0, perplexity, 100 objective rows)."""

from __future__ import annotations

import inspect

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.models.loading import encode_examples, load_model, load_tokenizer
from pipeline.scorers import ScoreContext, get_scorer
from pipeline.scorers.information_gain import (
    InformationGain,
    ig_columns,
    objective_count,
    one_step,
    zscore,
)
from tests.test_scorers import make_examples

N, D, SAMPLE, TOP = 600, 384, 64, 100


def random_embeddings(n: int, d: int, seed: int) -> np.ndarray:
    """Unit-norm random vectors, like sentence embeddings but with no relation to any target."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sampled_in_top(table: pl.DataFrame, column: str, k: int = TOP) -> int:
    return int(table.sort([column, "id"], descending=[True, False]).head(k).get_column("ig_sampled").sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_is_not_biased_toward_the_sampled_rows(seed):
    """A learner that cannot fit (IG is noise, unrelated to the embedding): the sampled rows must be
    as likely as any other to reach the top-k. Before, they were ranked by their measured z-scores
    (std 1) against shrunken predictions and filled the top; an in-sample prediction does the same."""
    rng = np.random.default_rng(seed)
    x = random_embeddings(N, D, seed)
    sampled = np.sort(rng.choice(N, SAMPLE, replace=False))
    raw = rng.normal(size=SAMPLE)
    ids = pl.Series("id", [f"r{i:04d}" for i in range(N)])
    table, stats = ig_columns(ids, x, sampled, raw, "ridge", 0.25, 5, seed)

    assert table.get_column("information_gain").equals(table.get_column("ig_predicted"), check_names=False)
    assert table.get_column("information_gain").null_count() == 0
    expected = TOP * SAMPLE / N  # 10.7, binomial sd about 3.1
    bound = expected + 3 * np.sqrt(expected * (1 - SAMPLE / N))
    assert sampled_in_top(table, "information_gain") <= bound
    # same spread for sampled and unsampled predictions (cross-fitted vs the full-sample learner)
    ratio = stats["predicted_std_sampled"] / stats["predicted_std_unsampled"]
    assert 0.6 < ratio < 1.6
    predicted, in_sample_rows = table["ig_predicted"].to_numpy(), table["ig_sampled"].to_numpy()
    assert stats["predicted_std_sampled"] == pytest.approx(predicted[in_sample_rows].std())
    assert stats["predicted_std_unsampled"] == pytest.approx(predicted[~in_sample_rows].std())

    # the test has power: the old mixed column fails it, and plain in-sample predictions keep about
    # 2.5 times the spread of the others (the learner over-fits its 64 rows in 384 dimensions)
    z = zscore(raw)
    mixed = table.with_columns(pl.Series("old", np.where(table["ig_sampled"].to_numpy(),
                                                         np.nan_to_num(table["ig_measured"].to_numpy()),
                                                         table["ig_predicted"].to_numpy())))
    assert sampled_in_top(mixed, "old") > bound
    from sklearn.linear_model import Ridge

    in_sample = Ridge(alpha=1.0).fit(x[sampled], z).predict(x)
    assert in_sample[sampled].std() > 2 * stats["predicted_std_unsampled"]


def test_constant_target_gives_one_prediction_for_every_row():
    """No information at all (every measured IG equal): every row, sampled or not, predicts 0."""
    x = random_embeddings(50, 16, 0)
    sampled = np.arange(0, 50, 5)
    table, _ = ig_columns(pl.Series("id", [str(i) for i in range(50)]), x, sampled, np.full(10, 0.3),
                          "ridge", 0.25, 5, 0)
    assert np.allclose(table.get_column("information_gain").to_numpy(), 0.0)


def test_defaults_follow_the_reference_code():
    params = {k: p.default for k, p in inspect.signature(InformationGain.__init__).parameters.items() if k != "self"}
    assert {k: params[k] for k in ("optimizer", "lr", "max_grad_norm", "measure", "objective_size")} == {
        "optimizer": "adamw", "lr": 5e-5, "max_grad_norm": 3.0, "measure": "ppl", "objective_size": 100}
    assert InformationGain.version == "2"


def test_objective_size_is_capped_with_a_reason():
    assert objective_count(1000, 100, 64) == (100, None)
    n, why = objective_count(14, 100, 8)
    assert n == 7 and "capped to 7" in why and "14 candidates" in why
    assert objective_count(3, 100, 64)[0] == 1


def test_one_adamw_step_is_lr_times_the_sign_without_weight_decay(tiny_model_dir):
    """A fresh AdamW's first step (the default optimizer) moves each weight by lr * g / (|g| + eps), with the
    gradient clipped first and no weight decay (igf.py), recomputed from the gradient independently."""
    tok = load_tokenizer(tiny_model_dir)
    enc = encode_examples(tok, make_examples(), 64)[0]
    model = load_model(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([enc["input_ids"]])
    labels = ids.masked_fill(torch.tensor([enc["completion_mask"]]) == 0, -100)
    model(input_ids=ids, labels=labels).loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    grads = [g * min(1.0, 3.0 / (norm + 1e-6)) for g in grads]
    before = [p.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    lr = 1e-2
    one_step(model, enc, lr, "adamw")
    for p, b, g in zip(model.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), b - lr * g / (g.abs() + 1e-8), rtol=0, atol=1e-6)


def test_objective_file_reads_parquet_and_jsonl_alike(tmp_path):
    from pipeline.scorers.information_gain import _objective_rows

    rows = pl.DataFrame({"prompt": ["a?", "b?"], "response": ["A.", "B."]})
    rows.write_parquet(tmp_path / "obj.parquet")
    rows.write_ndjson(tmp_path / "obj.jsonl")
    pool = pl.DataFrame({"id": ["x", "y", "z"]})
    for name in ("obj.parquet", "obj.jsonl"):
        table, rest = _objective_rows(pool, tmp_path / name, 2, np.random.default_rng(0))
        assert table.equals(rows) and rest.tolist() == [0, 1, 2]


def test_crossfit_with_one_row_per_fold_predicts_the_mean_of_the_others():
    from pipeline.scorers.information_gain import crossfit_predict

    x = np.eye(3)
    assert crossfit_predict(x[:2], np.array([1.0, 3.0]), "ridge", 2, 0).tolist() == [3.0, 1.0]
    assert crossfit_predict(x[:1], np.array([5.0]), "ridge", 2, 0).tolist() == [0.0]  # one row: no other


def test_one_step_clips_the_gradient_norm(tiny_model_dir):
    """SGD moves the parameters by exactly lr * min(|g|, max_grad_norm): a huge lr stays bounded."""
    tok = load_tokenizer(tiny_model_dir)
    enc = encode_examples(tok, make_examples(), 64)[0]

    def step_norm(max_grad_norm):
        model = load_model(tiny_model_dir, dtype=torch.float32)
        before = [p.detach().clone() for p in model.parameters()]
        one_step(model, enc, 1e3, "sgd", max_grad_norm)
        return float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before,
                                                                                  strict=True))))

    free = step_norm(None)
    assert step_norm(1e-3) == pytest.approx(1e3 * 1e-3, rel=1e-3)
    assert free > 10 * 1e3 * 1e-3  # without clipping the same step is much larger


def test_default_path_on_the_tiny_model(tiny_model_dir, monkeypatch):
    """The real default path (AdamW 5e-5, clipping 3.0, ppl, objective capped): prediction everywhere."""
    calls = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    rows = [(f"Question {i}: what is {i} plus {i}?", f"{i} + {i} = {2 * i}.\n#### {2 * i}", str(2 * i))
            for i in range(14)]
    ex = make_examples(rows)
    ctx = ScoreContext(model_name=tiny_model_dir, max_length=64, max_tokens=256, progress=False)
    scorer = get_scorer("information_gain", sample_size=6)
    table, meta = scorer(ex, ctx)
    info = meta["information_gain"]
    assert table.columns == ["id", *scorer.columns()]  # the columns the scorer declares are the ones it writes

    assert calls == [3.0] * 6  # one clipped step per sampled example
    assert (table["information_gain"] == table["ig_predicted"]).all() and table["information_gain"].null_count() == 0
    assert table["ig_sampled"].sum() == 6 and table.filter(~pl.col("ig_sampled"))["ig_measured"].null_count() == 8
    assert info["objective_size"] == 8 and info["objective_size_requested"] == 100
    assert "capped to 8" in info["objective_capped"]
    assert (info["measure"], info["optimizer"], info["lr"], info["max_grad_norm"]) == ("ppl", "adamw", 5e-5, 3.0)
    assert info["objective_loss_before"] > 1.0  # a perplexity, not an NLL
    assert np.isfinite(table.filter(pl.col("ig_sampled"))["ig_raw"].to_numpy()).all()


def test_clipping_norm_reaches_every_step_and_any_positive_value_is_allowed(tiny_model_dir, monkeypatch):
    """A non-default `max_grad_norm` (below 1 too) is the one each sampled step clips at."""
    calls = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, n, *a, **k: calls.append(n) or clip(p, n, *a, **k))
    ex = make_examples([(f"What is {i} plus 1?", f"{i + 1}.\n#### {i + 1}", str(i + 1)) for i in range(6)])
    ctx = ScoreContext(model_name=tiny_model_dir, max_length=48, max_tokens=256, progress=False)
    get_scorer("information_gain", sample_size=2, max_grad_norm=0.5)(ex, ctx)
    assert calls == [0.5, 0.5]
    with pytest.raises(ValueError, match="max_grad_norm"):
        get_scorer("information_gain", max_grad_norm=0.0)


def test_heldout_fit_needs_three_rows_and_reads_the_signal():
    """The held-out R^2 is reported from 3 held-out rows up (with >= 2 left to fit) and is high on a
    linear signal; with 2 held-out rows it is None rather than a number from too few rows."""
    from pipeline.scorers.information_gain import fit_learner

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.01 * rng.normal(size=12)
    _, stats = fit_learner(x, y, "ridge", holdout=0.25, seed=0)
    assert stats["n_heldout"] == 3 and stats["n_train"] == 9
    assert stats["r2_heldout"] > 0.8 and stats["spearman_heldout"] > 0.4
    _, few = fit_learner(x[:8], y[:8], "ridge", holdout=0.25, seed=0)
    assert few["n_heldout"] == 2 and few["r2_heldout"] is None and few["spearman_heldout"] is None


@pytest.mark.filterwarnings("ignore:An input array is constant")
def test_learner_stats_write_none_not_nan_when_the_heldout_correlation_is_undefined():
    """Constant held-out targets leave Spearman undefined: the metadata says None (valid JSON), not NaN."""
    import json

    from pipeline.scorers.information_gain import fit_learner

    x = np.random.default_rng(0).normal(size=(10, 4))
    _, stats = fit_learner(x, np.ones(10), "ridge", 0.5, 0)
    assert stats["n_heldout"] == 5 and stats["spearman_heldout"] is None
    json.dumps(stats, allow_nan=False)
    _, stats = fit_learner(x, np.arange(10.0), "ridge", 0.5, 0)
    assert -1.0 <= stats["spearman_heldout"] <= 1.0
