"""Tests that fail on a wrong formula, not on a changed constant: each recomputes what the method must do
from first principles (issue 25, item 4; checked by planting the bug named in each docstring)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.selectors import SelectContext, get_selector, run_selector


def _texts(n_words: int, replaced: int, tag: str) -> tuple[str, str]:
    """Two texts of `n_words` distinct words whose last `replaced` words differ: their word 5-gram shingle
    sets have Jaccard (n - 4 - t) / (n - 4 + t) exactly."""
    base = [f"{tag}w{i}" for i in range(n_words)]
    other = base[: n_words - replaced] + [f"{tag}x{i}" for i in range(replaced)]
    return " ".join(base), " ".join(other)


@pytest.mark.parametrize("threshold, dropped", [(None, {"near-b"}), (0.5, {"near-b", "mid-b", "far-b"}),
                                                (0.7, {"near-b", "mid-b"}), (0.97, set())])
def test_minhash_dedup_drops_pairs_by_their_true_jaccard(threshold, dropped):
    """Pairs at Jaccard 0.905, 0.754 and 0.667: the default 0.8 drops only the first, 0.7 the first two, 0.5 all
    three, 0.97 none (512 permutations: the estimates sit 2+ standard errors from each threshold).
    Planted bugs this kills: every confirmation at `1 - threshold`; a default of 0.7 or 0.9. Confirming only the
    candidate pairs at `1 - threshold` survives, harmlessly: `resolve` confirms each member against its
    component's first row at `threshold` again."""
    pairs = {"near": _texts(104, 5, "n"), "mid": _texts(104, 14, "m"), "far": _texts(104, 20, "f")}
    assert [(100 - t) / (100 + t) for t in (5, 14, 20)] == pytest.approx([0.905, 0.754, 0.667], abs=1e-3)
    scores = pl.DataFrame({"id": [f"{k}-{s}" for k in pairs for s in "ab"], "prompt": ["p"] * 6,
                           "response": [text for pair in pairs.values() for text in pair]})
    params = {"method": "minhash", "num_perm": 512} | ({"threshold": threshold} if threshold is not None else {})
    sel = run_selector(get_selector("dedup", **params), scores, seed=0)
    assert set(sel.filter(~pl.col("kept"))["id"].to_list()) == dropped


def _sensitivity_pool(n: int = 240, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, 8)) * 4
    labels = rng.integers(0, 6, n)
    emb = centers[labels] + rng.normal(size=(n, 8))
    loss = np.abs(rng.normal(1 + labels, 0.5))  # losses differ by cluster: sampling is far from uniform
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], "embedding": emb.astype(np.float32).tolist(), "nll": loss})


def test_sensitivity_selector_weights_are_draws_over_m_p_and_unbiased():
    """The selector a recipe runs, through run_selector: sum(w * f) estimates sum(f) without bias, for an f
    the sampler never saw. (Planted bug this kills: dropping 1/p from `w = counts / (m p)`.)"""
    pool = _sensitivity_pool()
    f = np.random.default_rng(9).gamma(2.0, 1.0, pool.height) * (1 + pool["nll"].to_numpy())
    estimates = []
    for seed in range(150):
        sel = run_selector(get_selector("sensitivity", m=60, k=6, lam=1.0, loss="nll", normalize=False), pool,
                           seed=seed, context=SelectContext())
        w = sel["weight"].to_numpy()
        assert (w[sel["kept"].to_numpy()] > 0).all() and (w[~sel["kept"].to_numpy()] == 0).all()
        assert sel["draws"].sum() == 60
        estimates.append(float((w * f).sum()))
    mean, sem = np.mean(estimates), np.std(estimates) / np.sqrt(len(estimates))
    assert abs(mean - f.sum()) < 4 * sem, (mean, f.sum(), sem)
    assert np.std(estimates) > 0  # really random: the test is not vacuous


def test_information_gain_is_positive_when_the_step_is_on_the_objective_itself(tiny_model_dir):
    """IG(X) = L_obj(theta) - L_obj(theta after one step on X) (Antonello et al. 2021): a step on the objective
    example itself lowers its loss, so its IG is positive and larger than a step on unrelated text, and
    `measure_ig` restores the model. (Planted bug this kills: the sign of IG reversed.)"""
    import torch

    from pipeline.models.loading import encode_examples, load_model, load_tokenizer
    from pipeline.scorers.information_gain import measure_ig, objective_loss

    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, dtype=torch.float32)
    target = pl.DataFrame({"id": ["t"], "prompt": ["Name the color of the sky."], "response": ["The sky is blue."]})
    other = pl.DataFrame({"id": ["o"], "prompt": ["Count to three."], "response": ["one two three four five six"]})
    objective = encode_examples(tok, target, 64)
    candidates = encode_examples(tok, pl.concat([target, other]), 64)
    before = objective_loss(model, objective, 4096, tok.pad_token_id)
    gains, measured = measure_ig(model, candidates, objective, lr=1e-2, optimizer="sgd", measure="nll",
                                 max_tokens=4096, pad_id=tok.pad_token_id)
    assert measured == pytest.approx(before)
    assert gains[0] > 0 and gains[0] > gains[1]
    assert objective_loss(model, objective, 4096, tok.pad_token_id) == pytest.approx(before)  # model restored


@pytest.mark.parametrize("z", [1.0, 2.0, 3.0])
def test_sensitivity_distance_term_is_the_distance_to_the_power_z(z):
    """s(e) = loss(center(e)) + lam * ||e - c(e)||^z (Axiotis et al.), for the z^2 default and any other z.
    Planted bugs this kills: the non-default branch not taking the root of the squared distance, or raising."""
    from pipeline.selectors.sensitivity import Clusters, sensitivities

    dist = np.array([0.5, 2.0, 3.0, 0.0])
    clusters = Clusters(centroids=np.zeros((2, 1), np.float32), assign=np.array([0, 0, 1, 1]),
                        dist2=(dist**2).astype(np.float32), centers=np.array([3, 0]), center_of=np.array([1, 0]))
    center_loss = np.array([1.5, 0.25])  # loss of example 3 (cluster 0's center), of example 0 (cluster 1's)
    want = center_loss[[1, 1, 0, 0]] + 0.7 * dist**z
    np.testing.assert_allclose(sensitivities(clusters, center_loss, 0.7, z), want, rtol=1e-6)


def test_sensitivity_accepts_a_budget_of_one_and_refuses_zero():
    """m is a number of draws: 1 is the smallest budget (boundary planted at `m <= 1` is caught)."""
    get_selector("sensitivity", m=1)
    with pytest.raises(ValueError, match="m"):
        get_selector("sensitivity", m=0)


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_rho1_keeps_at_least_one_token_of_a_one_token_row(ratio):
    """keep_count: round(ratio * n), at least 1 when n > 0 (a one-token row trains on its token; 0 stays 0)."""
    import torch

    from pipeline.losses.rho1 import keep_count

    n = torch.tensor([0, 1, 2, 10])
    want = [0, 1, max(1, round(2 * ratio)), round(10 * ratio)]
    assert keep_count(n, ratio).tolist() == want


def test_token_log_probs_are_zero_where_no_label_and_log_softmax_elsewhere():
    """What every loss (and a user's) reads: log p(label) from shifted labels, exactly 0 at ignored positions."""
    import torch

    from pipeline.losses.base import token_log_probs

    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, 3, 1, -100, 6], [-100, -100, 0, 2, 5]])
    logp, mask = token_log_probs(logits, labels)
    want = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    assert mask.tolist() == (labels[:, 1:] != -100).tolist()
    torch.testing.assert_close(logp[mask], want[mask])
    assert (logp[~mask] == 0).all()


def test_ifd_mean_nll_is_nan_for_a_row_without_response_tokens():
    """A row whose response was cut away (max_length) has no mean: NaN, which selectors drop with a reason."""
    from pipeline.scorers.ifd import mean_nll

    encoded = [{"completion_mask": [0, 0, 1, 1]}, {"completion_mask": [0, 0, 0, 0]}]
    got = mean_nll(encoded, [np.array([9.0, 1.0, 3.0]), np.array([1.0, 2.0, 3.0])])
    assert got[0] == pytest.approx(2.0) and np.isnan(got[1])


def test_estimate_lambda_is_the_least_squares_slope_at_any_scale():
    """Loss gaps exactly 3 x dist^2 give lambda = 3 whether distances are large or tiny (planted bug: a
    `denom > 1` guard returns 0 once the summed dist^4 falls below 1)."""
    from pipeline.selectors.sensitivity import cluster, estimate_lambda

    rng = np.random.default_rng(0)
    for scale in (1.0, 1e-2):
        x = (rng.normal(size=(300, 4)) * scale).astype(np.float32)
        cl = cluster(x, 6, seed=0)
        center_loss = np.zeros(cl.centers.size)
        gaps = 3.0 * cl.dist2.astype(np.float64)
        lam = estimate_lambda(x, lambda idx, gaps=gaps: gaps[np.asarray(idx)], k=6, n_pilot=100, clusters=cl,
                              center_loss=center_loss)
        assert lam == pytest.approx(3.0, rel=1e-4)


def test_learnability_response_loss_is_nan_for_a_row_without_response_tokens(tiny_model_dir):
    """A row whose response was cut away has no mean response loss: NaN (then dropped with a reason)."""
    from pipeline.models.loading import load_model, load_tokenizer
    from pipeline.scorers.base import ScoreContext
    from pipeline.scorers.learnability import response_losses

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    ids = tok("a b c d", add_special_tokens=False)["input_ids"]
    encoded = [{"input_ids": ids, "completion_mask": [0, 0] + [1] * (len(ids) - 2)},
               {"input_ids": ids, "completion_mask": [0] * len(ids)}]
    got = response_losses(model, tok, encoded, ScoreContext(), "test")
    assert np.isfinite(got[0]) and np.isnan(got[1])


def test_a_text_shorter_than_the_shingle_hashes_its_own_words_only():
    """MinHash shingles: a text of fewer words than the shingle size gives one shingle of its own words, the
    same whatever row follows it (planted bug: the window runs on into the next row's words)."""
    from pipeline.selectors.dedup import shingle_hashes

    h, row = shingle_hashes(pl.Series(["yes indeed", "one two three four five six", "yes indeed",
                                       "seven eight nine ten eleven twelve"]), 5)
    assert h[row == 0].tolist() == h[row == 2].tolist() and (row == 0).sum() == 1
    assert set(h[row == 1].tolist()).isdisjoint(h[row == 3].tolist())
