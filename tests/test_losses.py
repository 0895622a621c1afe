"""Each token loss against a plainly written formula on random logits: values and gradients."""

from __future__ import annotations

import math
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.losses import LOSSES, MaskedThought, get_loss
from pipeline.losses.forgetting import Forgetting
from pipeline.losses.rho1 import top_excess_mask
from pipeline.losses.talr import talr_weights

V = 11


def make_batch(seed: int = 0, b: int = 4, t: int = 9):
    """Random logits [B, T, V] (leaf), unshifted labels with prompt/padding -100, and per-token columns."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, V, generator=g) * 2).requires_grad_()
    labels = torch.randint(0, V, (b, t), generator=g)
    prompt = torch.randint(1, 4, (b,), generator=g)
    pad = torch.randint(0, 3, (b,), generator=g)
    for i in range(b):
        labels[i, : prompt[i]] = -100
        if pad[i]:
            labels[i, t - pad[i]:] = -100
    token_label = torch.randint(-1, 2, (b, t), generator=g).to(torch.int8)
    ref_nll = torch.rand(b, t, generator=g) * 3
    return logits, labels, {"token_label": token_label, "ref_nll": ref_nll}


def plain_nll(logits: torch.Tensor, labels: torch.Tensor):
    """Shifted per-token nll (0 where ignored) and mask, by log_softmax + gather."""
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    nll = -lp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll * mask, mask


def value_and_grad(fn, logits):
    """Scalar value and d value / d logits."""
    logits.grad = None
    value = fn()
    (grad,) = torch.autograd.grad(value, logits)
    return value.detach(), grad


def assert_same(loss_fn, formula, logits):
    v1, g1 = value_and_grad(loss_fn, logits)
    v2, g2 = value_and_grad(formula, logits)
    torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


def call(loss, logits, labels, **kw):
    return loss(SimpleNamespace(logits=logits), labels, **kw)


def test_registry_names_and_module_attr():
    assert {"ce", "dft", "talr", "forgetting", "token_cleaning", "rho1"} <= set(LOSSES.names())
    assert type(get_loss("pipeline.losses.dft:DFT")).__name__ == "DFT"
    assert get_loss("ce").trl_loss_type == "nll" and get_loss("dft").trl_loss_type == "dft"


def test_ce_matches_formula():
    logits, labels, _ = make_batch(1)

    def formula():
        nll, mask = plain_nll(logits, labels)
        return nll.sum() / mask.sum()

    assert_same(lambda: call(get_loss("ce"), logits, labels), formula, logits)


def test_dft_matches_formula():
    logits, labels, _ = make_batch(2)

    def formula():
        nll, mask = plain_nll(logits, labels)
        p = torch.exp(-nll).detach()
        return (p * nll * mask).sum() / mask.sum()

    assert_same(lambda: call(get_loss("dft"), logits, labels), formula, logits)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.3, 0.45, 0.7, 0.95])
def test_dft_gradient_sign_needs_the_detach(p):
    """With sg(p) the target logit always gets a descent gradient; without it the sign flips below 1/e."""
    others = math.log((1 - p) / (V - 1))
    logits = torch.full((1, 2, V), others)
    logits[0, 0, 3] = math.log(p)
    logits.requires_grad_()
    labels = torch.tensor([[-100, 3]])
    _, g = value_and_grad(lambda: call(get_loss("dft"), logits, labels), logits)
    assert g[0, 0, 3] < 0

    def no_detach():
        nll, mask = plain_nll(logits, labels)
        return (torch.exp(-nll) * nll * mask).sum()

    _, g_raw = value_and_grad(no_detach, logits)
    assert (g_raw[0, 0, 3] > 0) == (p < 1 / math.e)


def test_talr_weights_are_softmax_and_sum_to_one():
    g = torch.Generator().manual_seed(3)
    loss = torch.rand(3, 6, generator=g) * 4
    mask = torch.rand(3, 6, generator=g) > 0.3
    w = talr_weights(loss, mask, 1.7)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    expected = torch.softmax(-loss[mask] / 1.7, dim=0)
    torch.testing.assert_close(w[mask], expected)
    assert (w[~mask] == 0).all()


@pytest.mark.parametrize("params", [{}, {"tau": 0.8}, {"w_min": 0.5}, {"w_min": 0.0}, {"rescale": False},
                                    {"median": "sequence"}])
def test_talr_matches_formula(params):
    logits, labels, _ = make_batch(4)

    def formula():
        nll, mask = plain_nll(logits, labels)
        ell = nll.detach()
        vals = ell[mask]
        n = vals.numel()
        if "tau" in params:
            tau = torch.tensor(params["tau"])
        elif params.get("median") == "sequence":
            seq = torch.stack([ell[i][mask[i]].mean() for i in range(ell.size(0)) if mask[i].any()])
            tau = seq.sort().values[(seq.numel() - 1) // 2]
        else:
            tau = vals.sort().values[(n - 1) // 2]
        e = torch.exp(-ell / tau) * mask
        w = e / e.sum()
        w = torch.where(mask, torch.maximum(w, torch.tensor(params.get("w_min", 0.1) / n)), w)
        if params.get("rescale", True):
            w = w * n
        return (w * nll).sum() / n

    assert_same(lambda: call(get_loss("talr", **params), logits, labels), formula, logits)


def test_talr_default_floor_is_nonzero():
    assert get_loss("talr").w_min == 0.1


@pytest.mark.parametrize("median", ["token", "sequence"])
def test_talr_accumulation_window_equals_one_batch(median):
    """window="accumulation": two micro-batches with the window's stats give the whole batch's TALR loss and gradients."""
    logits, labels, _ = make_batch(12, b=6)
    whole = get_loss("talr", median=median)
    acc = get_loss("talr", median=median, window="accumulation")
    whole_v, whole_g = value_and_grad(lambda: call(whole, logits, labels), logits)
    halves = [slice(0, 2), slice(2, 6)]
    total = int((labels[:, 1:] != -100).sum())
    nll = [plain_nll(logits[s], labels[s])[0].detach() for s in halves]
    stats = acc.window_stats(nll, [labels[s, 1:] != -100 for s in halves])

    def accumulated():
        return sum(acc.from_log_probs(-plain_nll(logits[s], labels[s])[0], labels[s, 1:] != -100, total, window=stats)
                   for s in halves)

    acc_v, acc_g = value_and_grad(accumulated, logits)
    torch.testing.assert_close(acc_v, whole_v)
    torch.testing.assert_close(acc_g, whole_g)
    micro_v, _ = value_and_grad(lambda: sum(whole.from_log_probs(-plain_nll(logits[s], labels[s])[0],
                                                                 labels[s, 1:] != -100, total) for s in halves), logits)
    assert not torch.isclose(micro_v, whole_v)  # per-micro-batch weights are a different loss


def test_forgetting_matches_formula_with_ramp_and_cap():
    logits, labels, cols = make_batch(5)
    cap = 2.0

    def formula(lam):
        nll, mask = plain_nll(logits, labels)
        lab = cols["token_label"][:, 1:]
        pos, neg = mask & (lab == 1), mask & (lab == -1)
        return (nll * pos).sum() / pos.sum() - lam * (torch.clamp(nll, max=cap) * neg).sum() / neg.sum()

    loss = get_loss("forgetting", nll_cap=cap)
    for step, lam in [(0, 0.0), (50, 0.125), (100, 0.25), (150, 0.25)]:
        assert loss.lam(step, 100) == pytest.approx(lam)
        assert_same(lambda s=step: call(loss, logits, labels, batch=cols, step=s, max_steps=100),
                    lambda lam=lam: formula(lam), logits)


def test_forgetting_cap_stops_the_ascent():
    """Negative tokens whose nll is past the cap get no gradient; the others are pushed up (ascent)."""
    logits, labels, cols = make_batch(6)
    cols["token_label"] = torch.where(labels != -100, -1, 0).to(torch.int8)
    nll, mask = plain_nll(logits, labels)
    cap = float(nll.detach()[mask].median())
    _, g = value_and_grad(lambda: call(Forgetting(nll_cap=cap), logits, labels, batch=cols), logits)
    target = labels[:, 1:].clamp(min=0)
    g_target = g[:, :-1].gather(-1, target.unsqueeze(-1)).squeeze(-1)
    beyond = mask & (nll > cap)
    within = mask & (nll < cap)
    assert beyond.any() and within.any()
    assert (g[:, :-1][beyond] == 0).all()
    assert (g_target[within] > 0).all()  # ascent: raising the label's logit raises the loss


def test_token_cleaning_matches_formula():
    logits, labels, cols = make_batch(7)
    for normalize in ("kept", "all"):
        def formula(normalize=normalize):
            nll, mask = plain_nll(logits, labels)
            kept = mask & (cols["token_label"][:, 1:] == 1)
            return (nll * kept).sum() / (kept.sum() if normalize == "kept" else mask.sum())

        loss = get_loss("token_cleaning", normalize=normalize)
        assert_same(lambda loss=loss: call(loss, logits, labels, batch=cols), formula, logits)


@pytest.mark.parametrize("ratio", [0.1, 0.35, 0.6, 1.0])
def test_rho1_keeps_exactly_top_k_percent(ratio):
    logits, labels, cols = make_batch(8)
    nll, mask = plain_nll(logits, labels)
    excess = nll.detach() - cols["ref_nll"][:, 1:]
    keep = top_excess_mask(excess, mask, ratio)
    n = int(mask.sum())
    assert int(keep.sum()) == max(1, round(ratio * n))
    assert not (keep & ~mask).any()
    if ratio < 1:
        assert excess[keep].min() >= excess[mask & ~keep].max()

    def formula():
        nll2, _ = plain_nll(logits, labels)
        order = excess[mask].argsort(descending=True)
        k = max(1, round(ratio * n))
        return nll2[mask][order[:k]].sum() / k

    assert_same(lambda: call(get_loss("rho1", ratio=ratio), logits, labels, batch=cols), formula, logits)


def test_missing_column_is_a_clear_error():
    logits, labels, _ = make_batch(9)
    with pytest.raises(KeyError, match="token_label"):
        call(get_loss("forgetting"), logits, labels)


@pytest.mark.parametrize("name", ["ce", "dft", "talr", "forgetting", "token_cleaning", "rho1"])
def test_example_weights_scale_the_loss(name):
    """Per-example weights multiply that example's token losses; the divisor is unchanged, so all-ones is a no-op."""
    logits, labels, cols = make_batch(10)
    loss = get_loss(name)
    base = call(loss, logits, labels, batch=cols)
    ones = call(loss, logits, labels, batch={**cols, "example_weight": torch.ones(4)})
    torch.testing.assert_close(ones, base)
    w = torch.tensor([0.5, 2.0, 0.0, 1.5])
    weighted = call(loss, logits, labels, batch={**cols, "example_weight": w})
    per_example = torch.stack([
        call(loss, logits, labels, batch={**cols, "example_weight": torch.eye(4)[i]}) for i in range(4)
    ])
    torch.testing.assert_close(weighted, (w * per_example).sum())
    torch.testing.assert_close(per_example.sum(), base)


def test_a_per_token_example_weight_multiplies_each_token():
    """`example_weight` may also be [B, T] (one weight per token, aligned with the labels like every per-token
    column): it then scales token by token, exactly as `token_weight` does, never broadcast across examples."""
    logits, labels, cols = make_batch(11)
    loss = get_loss("ce")
    w = torch.rand(labels.shape, generator=torch.Generator().manual_seed(0))
    by_example = call(loss, logits, labels, batch={**cols, "example_weight": w})
    by_token = call(loss, logits, labels, batch={**cols, "token_weight": w})
    torch.testing.assert_close(by_example, by_token)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none",
                                            ignore_index=-100)
    torch.testing.assert_close(by_example, (nll * w[:, 1:]).sum() / (labels[:, 1:] != -100).sum())


@pytest.mark.parametrize("name", ["ce", "dft", "forgetting", "token_cleaning"])
def test_gradient_accumulation_equals_one_batch(name):
    """Two micro-batches normalized by the window's counts give the loss and gradients of the whole batch."""
    logits, labels, cols = make_batch(11, b=6)
    loss = get_loss(name)
    kw = {"step": 30, "max_steps": 100}
    whole_v, whole_g = value_and_grad(lambda: call(loss, logits, labels, batch=cols, **kw), logits)
    halves = [slice(0, 3), slice(3, 6)]
    total = int((labels[:, 1:] != -100).sum())
    counts = {}
    for s in halves:
        mask = labels[s, 1:] != -100
        for k, v in loss.counts(mask, {c: x[s, 1:] for c, x in cols.items()}).items():
            counts[k] = counts.get(k, 0) + v
    counts.pop("tokens")

    def accumulated():
        parts = []
        for s in halves:
            log_probs = -plain_nll(logits[s], labels[s])[0]
            parts.append(loss.from_log_probs(log_probs, labels[s, 1:] != -100, total,
                                             {c: x[s, 1:] for c, x in cols.items()}, counts=counts, **kw))
        return sum(parts)

    acc_v, acc_g = value_and_grad(accumulated, logits)
    torch.testing.assert_close(acc_v, whole_v)
    torch.testing.assert_close(acc_g, whole_g)


def _masking_setup(b: int = 64, t: int = 200):
    ids = torch.randint(5, 49000, (b, t))
    labels = ids.clone()
    labels[:, : t // 2] = -100
    labels[:, -10:] = -100  # padding
    return ids, labels


def test_masked_thought_masks_only_response_at_the_rate():
    ids, labels = _masking_setup()
    labels_before = labels.clone()
    mt = MaskedThought(p=0.2, cap=0.2, seed=7, vocab_size=49152)
    out = mt.masked_inputs(ids, labels, step=3, max_steps=10)
    changed = out != ids
    resp = labels != -100
    assert not changed[~resp].any()
    rate = changed[resp].float().mean().item()
    # binomial std over ~5800 tokens is ~0.005; a random token may equal the original (1/V)
    assert abs(rate - 0.2) < 0.025
    assert torch.equal(labels, labels_before)


def test_masked_thought_mask_token_and_determinism():
    ids, labels = _masking_setup()
    mt = MaskedThought(cap=0.3, ramp_ratio=0.0, replace="mask", mask_token_id=2, seed=1)
    a, b = mt.masked_inputs(ids, labels, step=5), mt.masked_inputs(ids, labels, step=5)
    assert torch.equal(a, b)
    assert set((a[a != ids]).tolist()) == {2}
    assert not torch.equal(a, mt.masked_inputs(ids, labels, step=6))
    assert not torch.equal(a, mt.masked_inputs(ids, labels, step=5, micro=1))
    other_seed = MaskedThought(cap=0.3, ramp_ratio=0.0, replace="mask", mask_token_id=2, seed=2)
    assert not torch.equal(a, other_seed.masked_inputs(ids, labels, step=5))
    other_rank = MaskedThought(cap=0.3, ramp_ratio=0.0, replace="mask", mask_token_id=2, seed=1, rank=1)
    assert not torch.equal(a, other_rank.masked_inputs(ids, labels, step=5))
    assert MaskedThought(seed=1).generator(5).initial_seed() == MaskedThought(seed=1, rank=0).generator(5).initial_seed()


def test_masked_thought_schedule():
    """Default: the reference trainer's ramp from 0 to cap over 66% of training, cap * step / (0.66 max + 1)."""
    off = MaskedThought(p=0.2, enabled=False)
    assert off.rate(10, 100) == 0.0
    ids, labels = _masking_setup()
    assert torch.equal(off.masked_inputs(ids, labels, 1, max_steps=100), ids)
    default = MaskedThought()
    assert default.p == 0.0 and default.ramp_ratio == 0.66
    for step in (0, 1, 30, 66, 67, 100):
        assert default.rate(step, 100) == pytest.approx(min(0.4 * step / (0.66 * 100 + 1), 0.4))
    assert default.rate(0, 100) == 0.0 and default.rate(67, 100) == pytest.approx(0.4)
    assert torch.equal(default.masked_inputs(ids, labels, 0, max_steps=100), ids)  # rate 0 at step 0
    start = MaskedThought(p=0.1, cap=0.4, ramp_ratio=0.5)  # from p: length 0.5 * 40 + 1 = 21 steps
    assert [start.rate(s, 40) for s in (0, 21, 40)] == pytest.approx([0.1, 0.4, 0.4])
    absolute = MaskedThought(p=0.1, cap=0.4, ramp_steps=100)
    assert [absolute.rate(s, 1000) for s in (0, 50, 100, 500)] == pytest.approx([0.1, 0.25, 0.4, 0.4])
    assert MaskedThought(cap=0.3, ramp_ratio=0.0).rate(0, 100) == pytest.approx(0.3)  # no ramp: constant cap
    assert MaskedThought(cap=0.3).rate(5, 0) == pytest.approx(0.3)  # unknown run length: cap
    assert MaskedThought(cap=0.3).rate(1) == pytest.approx(0.3)  # the run length defaults to unknown: no ramp


def test_masked_thought_config_separates_switch_from_rate():
    from pipeline.core.config import ConfigError
    from pipeline.training.train import train_settings

    mt = train_settings({}).masked_thought
    assert mt.enabled is False and mt.p == 0.0 and mt.ramp_ratio == 0.66 and mt.ramp_steps is None
    assert train_settings({"masked_thought": {"enabled": True}}).masked_thought.cap == 0.4
    with pytest.raises(ConfigError, match="enabled"):
        train_settings({"masked_thought": {"p": 0.2}})


def _docs_example() -> str:
    text = (Path(__file__).parents[1] / "docs" / "losses.md").read_text()
    section = text.split("## Write your own loss", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_custom_loss_example_runs():
    """The pasteable example in docs/losses.md registers, resolves by name and module:attr, and matches its formula."""
    module = types.ModuleType("my_losses_doc_example")
    sys.modules[module.__name__] = module
    try:
        exec(compile(_docs_example(), "docs/losses.md", "exec"), module.__dict__)
        logits, labels, _ = make_batch(12)
        by_name = get_loss("focal", gamma=2.0)
        by_path = get_loss("my_losses_doc_example:FocalLoss", gamma=2.0)

        def formula():
            nll, mask = plain_nll(logits, labels)
            return ((1 - torch.exp(-nll.detach())) ** 2 * nll * mask).sum() / mask.sum()

        assert_same(lambda: call(by_name, logits, labels), formula, logits)
        assert_same(lambda: call(by_path, logits, labels), formula, logits)
    finally:
        sys.modules.pop(module.__name__, None)
        LOSSES._items.pop("focal", None)


def test_masked_thought_bounds_are_inclusive():
    """Rates and the ramp share are fractions: 0 and 1 are allowed, anything outside is refused."""
    for params in ({"p": 1.0, "cap": 1.0}, {"p": 0.0, "cap": 0.0}, {"ramp_ratio": 1.0}, {"ramp_ratio": 0.0}):
        MaskedThought(**params)
    assert MaskedThought(cap=0.4, ramp_ratio=1.0).rate(101, 100) == pytest.approx(0.4)
    for params in ({"p": 1.01}, {"cap": -0.1}, {"ramp_ratio": 1.01}, {"ramp_ratio": -0.01}, {"ramp_steps": 0}):
        with pytest.raises(ValueError, match="masked_thought"):
            MaskedThought(**params)
