"""TokenLossSFTTrainer on the tiny model: fused path = logits path, our DFT = TRL's, accumulation, real runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.losses import get_loss
from pipeline.losses.base import shift_columns
from pipeline.training.train import build_dataset, build_trainer, sft_config, train, train_settings

PROMPTS = ["What is 2+2?", "Name a color.", "Say hi.", "Count to three.", "Spell cat.", "Largest planet?"]
RESPONSES = ["4", "Blue is a color I like.", "Hi there!", "One, two, three.", "C, A, T.", "Jupiter is."]


@pytest.fixture(scope="module")
def examples() -> pl.DataFrame:
    return pl.DataFrame({"prompt": PROMPTS, "response": RESPONSES})


def load(tiny_model_dir):
    from pipeline.models.loading import load_model, load_tokenizer

    return load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, dtype=torch.float32).train()


def token_columns(tokenizer, examples):
    """Deterministic per-token labels (-1/0/1) and reference nlls aligned with input_ids."""
    ds = build_dataset(tokenizer, examples, 64)
    g = torch.Generator().manual_seed(0)
    labels = [torch.randint(-1, 2, (len(ids),), generator=g).tolist() for ids in ds["input_ids"]]
    ref = [(torch.rand(len(ids), generator=g) * 8).tolist() for ids in ds["input_ids"]]
    return {"token_label": labels, "ref_nll": ref}


def make_trainer(tiny_model_dir, tmp_path, examples, loss_name="ce", trl_dft=False, **loss_params):
    """Our trainer (or TRL's plain SFTTrainer with loss_type=dft) on a fresh tiny model, no shuffling."""
    tokenizer, model = load(tiny_model_dir)
    cfg = train_settings({"loss": "dft" if trl_dft else loss_name, "max_steps": 10, "batch_size": 6})
    args = sft_config(cfg, tmp_path / ("trl" if trl_dft else loss_name), 0)
    args.shuffle_dataset = False
    cols = token_columns(tokenizer, examples)
    dataset = build_dataset(tokenizer, examples, 64, weights=[1.0, 2.0, 0.5, 1.0, 0.0, 1.5], token_columns=cols)
    if trl_dft:
        from trl import SFTTrainer

        dataset = dataset.remove_columns(["example_weight", "token_label", "ref_nll"])
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    from pipeline.training.trainer import TokenLossSFTTrainer

    return TokenLossSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                               loss=get_loss(loss_name, **loss_params))


def collate(trainer, rows=None):
    ds = trainer.train_dataset
    rows = range(len(ds)) if rows is None else rows
    return trainer.data_collator([ds[i] for i in rows])


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(a, b, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def test_collator_carries_columns(tiny_model_dir, tmp_path, examples):
    trainer = make_trainer(tiny_model_dir, tmp_path, examples, "forgetting")
    batch = collate(trainer)
    assert batch["example_weight"].dtype == torch.float32 and batch["example_weight"].shape == (6,)
    assert batch["token_label"].dtype == torch.int8
    assert batch["token_label"].shape == batch["input_ids"].shape == batch["ref_nll"].shape
    first = trainer.train_dataset[0]
    assert batch["token_label"][0, : len(first["input_ids"])].tolist() == first["token_label"]


@pytest.mark.parametrize("name,params", [("talr", {"w_min": 0.2}), ("forgetting", {"nll_cap": 10.8}),
                                         ("rho1", {"ratio": 0.5})])
def test_fused_path_equals_logits_path(tiny_model_dir, tmp_path, examples, name, params):
    """The trainer's fused-head loss has the value and gradients of the loss on full logits."""
    trainer = make_trainer(tiny_model_dir, tmp_path, examples, name, **params)
    trainer.state.global_step, trainer.state.max_steps = 3, 10
    model = trainer.model
    batch = collate(trainer)
    n = int((batch["labels"][:, 1:] != -100).sum())

    fused = trainer.compute_loss(model, dict(batch), num_items_in_batch=n)
    fused.backward()
    g_fused = grads(model)
    model.zero_grad()

    extra = {k: batch[k] for k in ("example_weight", "token_label", "ref_nll")}
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ref = trainer.token_loss(outputs, batch["labels"], n, batch=extra, step=3, max_steps=10)
    ref.backward()
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)
    assert_grads_close(g_fused, grads(model))


def test_dft_matches_trl(tiny_model_dir, tmp_path, examples):
    """Our dft through our trainer equals TRL's loss_type='dft' (weights all 1 for the comparison)."""
    ours = make_trainer(tiny_model_dir, tmp_path, examples, "dft")
    theirs = make_trainer(tiny_model_dir, tmp_path, examples, trl_dft=True)
    assert theirs.args.loss_type == "dft"
    batch = collate(ours)
    batch["example_weight"] = torch.ones(6)
    plain = collate(theirs)
    n = int((batch["labels"][:, 1:] != -100).sum())
    loss_ours = ours.compute_loss(ours.model, dict(batch), num_items_in_batch=n)
    loss_theirs = theirs.compute_loss(theirs.model, dict(plain), num_items_in_batch=n)
    loss_ours.backward()
    loss_theirs.backward()
    torch.testing.assert_close(loss_ours, loss_theirs, rtol=1e-6, atol=1e-7)
    assert_grads_close(grads(ours.model), grads(theirs.model), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["ce", "forgetting"])
def test_gradient_accumulation_in_trainer(tiny_model_dir, tmp_path, examples, name):
    """Two micro-batches through get_batch_samples + compute_loss give one big batch's loss and gradients."""
    trainer = make_trainer(tiny_model_dir, tmp_path, examples, name)
    trainer.state.global_step, trainer.state.max_steps = 4, 10
    model = trainer.model
    micro = [collate(trainer, range(0, 3)), collate(trainer, range(3, 6))]
    samples, n_items = trainer.get_batch_samples(iter(micro), 2, torch.device("cpu"))
    total = sum(trainer.compute_loss(model, dict(b), num_items_in_batch=n_items) for b in samples)
    total.backward()
    g_acc = grads(model)
    model.zero_grad()

    whole = [collate(trainer)]
    samples, n_items = trainer.get_batch_samples(iter(whole), 1, torch.device("cpu"))
    single = trainer.compute_loss(model, dict(samples[0]), num_items_in_batch=n_items)
    single.backward()
    torch.testing.assert_close(total, single, rtol=1e-5, atol=1e-6)
    assert_grads_close(g_acc, grads(model))


def test_talr_accumulation_window_in_trainer(tiny_model_dir, tmp_path, examples):
    """TALR window="accumulation": the trainer's pre-pass makes two micro-batches equal one big batch."""
    trainer = make_trainer(tiny_model_dir, tmp_path, examples, "talr", window="accumulation")
    trainer.state.global_step, trainer.state.max_steps = 4, 10
    model = trainer.model
    micro = [collate(trainer, range(0, 2)), collate(trainer, range(2, 6))]
    samples, n_items = trainer.get_batch_samples(iter(micro), 2, torch.device("cpu"))
    assert set(trainer._window_stats) == {"tau", "log_z", "n"}
    total = sum(trainer.compute_loss(model, dict(b), num_items_in_batch=n_items) for b in samples)
    total.backward()
    g_acc = grads(model)
    model.zero_grad()
    samples, n_items = trainer.get_batch_samples(iter([collate(trainer)]), 1, torch.device("cpu"))
    single = trainer.compute_loss(model, dict(samples[0]), num_items_in_batch=n_items)
    single.backward()
    torch.testing.assert_close(total, single, rtol=1e-5, atol=1e-6)
    assert_grads_close(g_acc, grads(model))


def test_masked_thought_in_trainer_changes_inputs_not_labels(tiny_model_dir, tmp_path, examples):
    from pipeline.losses import MaskedThought

    trainer = make_trainer(tiny_model_dir, tmp_path, examples, "ce")
    trainer.data_collator.masked_thought = MaskedThought(cap=0.5, ramp_ratio=0.0, seed=0, vocab_size=100)
    batch = collate(trainer)
    out = trainer.data_collator.apply_masked_thought(batch, step=2)
    assert out["labels"] is batch["labels"]
    changed = out["input_ids"] != batch["input_ids"]
    assert changed.any() and not changed[batch["labels"] == -100].any()
    trainer.model.train()
    with torch.no_grad():
        clean = get_loss("ce").from_log_probs(*_fused(trainer, batch))
        masked = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
    assert not torch.isclose(clean, masked)


def test_masked_thought_in_trainer_follows_the_run_schedule(tiny_model_dir, tmp_path, examples):
    """The default ramp (from 0 over 66% of max_steps) reads the trainer's step and max_steps: no masking at step 0."""
    from pipeline.losses import MaskedThought

    trainer = make_trainer(tiny_model_dir, tmp_path, examples, "ce")
    batch = collate(trainer)
    trainer.model.train()
    with torch.no_grad():
        clean = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
        trainer.data_collator.masked_thought = MaskedThought(cap=0.5, seed=0, vocab_size=100)
        trainer.state.global_step, trainer.state.max_steps = 0, 10
        at_start = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
        trainer.state.global_step = 8  # past 0.66 * 10 + 1: rate = cap
        later = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
    torch.testing.assert_close(at_start, clean)
    assert not torch.isclose(clean, later)


def _fused(trainer, batch):
    out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"], fused_lm_head=True)
    return out.log_probs, out.label_mask


def test_build_dataset_aligns_response_only_rows(tiny_model_dir, examples):
    tokenizer, _ = load(tiny_model_dir)
    base = build_dataset(tokenizer, examples, 64)
    resp = [[7] * sum(m) for m in base["completion_mask"]]
    ds = build_dataset(tokenizer, examples, 64, token_columns={"token_label": resp})
    for row, mask in zip(ds["token_label"], ds["completion_mask"], strict=True):
        assert row == [7 if m else 0 for m in mask]
    with pytest.raises(ValueError, match="same tokenizer"):
        build_dataset(tokenizer, examples, 64, token_columns={"token_label": [[1, 1]] * len(examples)})


def test_train_requires_the_loss_columns(tiny_model_dir, tmp_path, examples):
    with pytest.raises(ValueError, match="token_label"):
        train(tiny_model_dir, examples, tmp_path, {"loss": "forgetting", "max_steps": 1})


@pytest.mark.parametrize("loss,extra", [
    ("dft", {"masked_thought": {"enabled": True, "cap": 0.2}}),
    ("forgetting", {"loss_params": {"lambda_max": 0.25}, "grad_accum": 2}),
])
def test_short_training_run(tiny_model_dir, tmp_path, examples, loss, extra):
    tokenizer, _ = load(tiny_model_dir)
    cfg = {"loss": loss, "max_steps": 2, "batch_size": 2, "logging_steps": 1, **extra}
    result = train(tiny_model_dir, examples, tmp_path, cfg, seed=1,
                   weights=[1.0, 2.0, 0.5, 1.0, 1.0, 1.5], token_columns=token_columns(tokenizer, examples))
    assert result["steps"] == 2
    assert math.isfinite(result["train_loss"])
    assert all(math.isfinite(h["loss"]) for h in result["loss_history"]) and result["loss_history"]
    model_dir = Path(result["model_dir"])
    assert (model_dir / "config.json").exists() and (model_dir / "model.safetensors").exists()


def test_shift_columns_aligns_with_next_token():
    batch = {"token_label": torch.arange(6).view(2, 3), "example_weight": torch.ones(2)}
    shifted = shift_columns(batch)
    assert shifted["token_label"].tolist() == [[1, 2], [4, 5]]
    assert shifted["example_weight"].shape == (2,)


# ---------------------------------------------------------------------------------------------
# token labels: no example is labelled by a reference that trained on it


def _label_examples(n: int = 8) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"e{i}" for i in range(n)], "prompt": [PROMPTS[i % 6] + f" ({i})" for i in range(n)],
                         "response": [RESPONSES[i % 6] for i in range(n)]})


def test_label_folds_are_disjoint_and_cover_every_example(tmp_path):
    from pipeline.training.token_labels import label_folds

    ex = _label_examples(11)
    for options in ({}, {"folds": 3}, {"subset_size": 2}):
        folds = label_folds(ex, options, seed=4)
        assert len(folds) == options.get("folds", 2)
        labelled = [i for f in folds for i in f.label_ids]
        assert sorted(labelled) == sorted(ex["id"].to_list())  # every kept example labelled exactly once
        for f in folds:
            trained = set(f.train["id"].to_list())
            assert trained and not trained & set(f.label_ids)
            assert len(trained) <= options.get("subset_size", 11)
    assert [sorted(f.label_ids) for f in label_folds(ex, {}, seed=4)] == [  # independent of row order
        sorted(f.label_ids) for f in label_folds(ex[::-1], {}, seed=4)]
    other = ex.with_columns(pl.col("id") + "x")  # same texts under other ids: still excluded
    extra = pl.DataFrame({"id": ["h1", "h2"], "prompt": ["Q1", "Q2"], "response": ["A1", "A2"]})
    path = tmp_path / "hq.parquet"
    pl.concat([ex[:3], other[3:5], extra]).write_parquet(path)
    (fold,) = label_folds(ex, {"reference_data": str(path)}, seed=0)
    assert sorted(fold.train["id"].to_list()) == ["h1", "h2"] and fold.label_ids == ex["id"].to_list()
    (given,) = label_folds(ex, {"reference": "some/model", "reference_data": str(path)})
    assert given.reference == "some/model" and given.train is None


def test_token_labels_come_from_lora_references_that_never_saw_them(tiny_model_dir, tmp_path, monkeypatch):
    """Real default path: two LoRA references cross-fitted; each labelled id is absent from its reference's data."""
    from pipeline.core.io import read_json
    from pipeline.losses import get_loss
    from pipeline.training import token_labels
    from pipeline.training.columns import ColumnContext, column_providers, training_columns

    ex = _label_examples(8)
    scored: list[tuple[list[str], str]] = []
    score = token_labels.score_cached

    def spy(examples, scorer, ctx, root, params=None, **kw):
        if params and params.get("model"):
            scored.append((examples["id"].to_list(), params["model"]))
        return score(examples, scorer, ctx, root, params, **kw)

    monkeypatch.setattr(token_labels, "score_cached", spy)
    ctx = ColumnContext(model=tiny_model_dir, max_length=64, cache_root=str(tmp_path), seed=0,
                        references={"reference_train": {"max_steps": 1, "batch_size": 2}})
    cols = training_columns(ex, column_providers(get_loss("forgetting")), ctx)
    assert len(cols["token_label"]) == 8 and {v for r in cols["token_label"] for v in r} <= {-1, 0, 1}
    assert len(scored) == 2 and sorted(i for ids, _ in scored for i in ids) == ex["id"].to_list()
    for ids, model_dir in scored:
        info = read_json(Path(model_dir).parent / "reference.json")
        assert info["train"]["lora"]["r"] == 16 and info["ids"] and not set(info["ids"]) & set(ids)


# ---------------------------------------------------------------------------------------------
# IGF training-time filter (arXiv 2010.00050)

IGF = {"column": "information_gain", "threshold": 1.0, "after_steps": 10, "then": -1.0}
IG_VALUES = [2.0, 0.5, 1.5, -0.5, -2.0, 1.0]


def make_igf_trainer(tiny_model_dir, tmp_path, examples, rows=None, igf=True):
    from pipeline.training.trainer import TokenLossSFTTrainer

    rows = list(range(6)) if rows is None else rows
    tokenizer, model = load(tiny_model_dir)
    args = sft_config(train_settings({"max_steps": 20, "batch_size": 6}), tmp_path / "igf", 0)
    args.shuffle_dataset = False
    weights = [1.0, 2.0, 0.5, 1.0, 3.0, 1.5]
    dataset = build_dataset(tokenizer, examples[rows], 64, weights=[weights[i] for i in rows])
    dataset = dataset.add_column("igf_score", [IG_VALUES[i] for i in rows])
    return TokenLossSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                               igf_filter=IGF if igf else None)


def test_igf_threshold_schedule(tiny_model_dir, tmp_path, examples):
    trainer = make_igf_trainer(tiny_model_dir, tmp_path, examples)
    assert [trainer.igf_threshold(s) for s in (0, 9, 10, 50)] == [1.0, 1.0, -1.0, -1.0]
    assert train_settings({}).igf_filter is None
    assert train_settings({"igf_filter": {}}).igf_filter.model_dump() == {**IGF, "units": "raw"}


def test_igf_sampler_fills_every_step_with_examples_that_pass_its_threshold():
    """The reference fills each batch from the stream: no step trains on fewer passing examples than its size
    while passing examples remain, and failing ones are passed over, not zeroed inside a fixed batch."""
    from pipeline.training.trainer import IGFSampler

    scores = np.random.default_rng(0).normal(size=200)
    sampler = IGFSampler(scores, {**IGF, "after_steps": 3}, per_step=8, seed=1)
    order = list(sampler)
    assert len(order) == 200
    for step in range(200 // 8):
        block = scores[order[step * 8:(step + 1) * 8]]
        assert (block >= (1.0 if step < 3 else -1.0)).all(), step
    assert sampler.skipped > 0 and sampler.fallback_steps == 0
    assert list(IGFSampler(scores, {**IGF, "after_steps": 3}, 8, seed=1)) == order  # seeded


def test_igf_threshold_in_units_of_the_predicted_spread_and_its_fallback():
    """Shrunk predictions (std 0.2): raw 1.0 passes nothing (the step falls back to the top-scoring rows, and
    says so); `units: std` puts the threshold one predicted std above the mean."""
    from pipeline.training.trainer import IGFSampler

    scores = np.random.default_rng(2).normal(0.0, 0.2, 100)
    raw = IGFSampler(scores, IGF, per_step=4, seed=0)
    first = list(raw)[:4]
    assert raw.fallback_steps >= 1 and sorted(first) == sorted(np.argsort(-scores)[:4].tolist())
    std = IGFSampler(scores, {**IGF, "units": "std"}, per_step=4, seed=0)
    assert std.threshold(0) == pytest.approx(scores.mean() + scores.std())
    assert all(scores[i] >= std.threshold(0) for i in list(std)[:4 * 10]) and std.fallback_steps == 0


def test_igf_filter_in_a_training_run(tiny_model_dir, tmp_path, examples):
    """Every logged optimizer step trained on a full batch of passing examples; the skipped ones are counted."""
    ex = examples.with_columns(pl.Series("information_gain", IG_VALUES))
    trainer = build_trainer(tiny_model_dir, ex, tmp_path, {"max_steps": 3, "batch_size": 2, "igf_filter": {}}, seed=0)
    trainer.train()
    steps = [h for h in trainer.state.log_history if "igf_examples" in h]
    assert len(steps) == 3 and all(h["igf_examples"] == 2 for h in steps)
    assert trainer.igf_filtered >= 1  # IG 0.5, -0.5, -2.0 fail the first steps' threshold 1.0
    result = train(tiny_model_dir, ex, tmp_path / "t", {"max_steps": 2, "batch_size": 3, "igf_filter": {}}, seed=0)
    assert result["steps"] == 2 and result["igf_skipped"] >= 1 and math.isfinite(result["train_loss"])
    with pytest.raises(ValueError, match="information_gain"):
        train(tiny_model_dir, examples, tmp_path / "x", {"max_steps": 1, "igf_filter": {}})


# ---------------------------------------------------------------------------------------------
# The CPU forward path (labelled positions only through the LM head) equals TRL's fused head


def test_head_log_probs_match_full_logits():
    """HeadLogProbs in tiles smaller than the problem: log-probs, entropy, top-1 and both gradients."""
    from pipeline.training.trainer import HeadLogProbs

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(11, 6, generator=g, requires_grad=True)
    weight = torch.randn(23, 6, generator=g, requires_grad=True)
    targets = torch.randint(0, 23, (11,), generator=g)
    targets[0] = int((hidden[0] @ weight.T).argmax())  # at least one top-1 hit
    upstream = torch.randn(11, generator=g)
    lp, ent, top1 = HeadLogProbs.apply(hidden, weight, targets, True, 4, 7)
    (lp * upstream).sum().backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logp = torch.log_softmax(hidden @ weight.T, -1)
    ref = logp.gather(1, targets[:, None]).squeeze(1)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(lp, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1).detach(), rtol=1e-5, atol=1e-5)
    assert top1.tolist() == (logp.argmax(-1) == targets).tolist() and top1[0]
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], weight.grad, rtol=1e-5, atol=1e-6)
    lp2, ent2, top2 = HeadLogProbs.apply(hidden.detach(), weight.detach(), targets, False, 4, 7)
    assert ent2 is None and top2 is None
    torch.testing.assert_close(lp2, lp.detach())


@pytest.mark.parametrize("name,forward_tokens", [("ce", None), ("forgetting", 40), ("rho1", 1)])
def test_cpu_path_equals_trl_fused_head(tiny_model_dir, tmp_path, examples, name, forward_tokens):
    """Loss, gradients and logged metrics of the CPU path equal TRL's fused head on the padded batch,
    also in length-sorted row groups and with a row that has no label at all (IGF-skipped)."""
    trainer = make_trainer(tiny_model_dir, tmp_path, examples, name)
    trainer.state.global_step, trainer.state.max_steps = 3, 10
    model = trainer.model
    batch = collate(trainer)
    batch["labels"][2] = -100
    n = int((batch["labels"][:, 1:] != -100).sum())
    results = []
    for fast in (False, True):
        trainer.cpu_fast_path, trainer.forward_tokens = fast, forward_tokens
        assert (trainer._cpu_plan(model, _model_inputs(batch)) is not None) == fast
        trainer._metrics["train"].clear()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n)
        loss.backward()
        results.append((loss.detach(), grads(model), dict(trainer._metrics["train"])))
        model.zero_grad()
    (trl_loss, trl_grads, trl_metrics), (loss, cpu_grads, metrics) = results
    torch.testing.assert_close(loss, trl_loss, rtol=1e-5, atol=1e-6)
    assert_grads_close(cpu_grads, trl_grads)
    for key in ("entropy", "mean_token_accuracy"):
        assert metrics[key] == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-6), key


def test_cpu_path_falls_back_to_trl_head(tiny_model_dir, tmp_path, examples):
    """Left padding, extra model inputs or a model without a plain head: TRL's fused head, unchanged."""
    trainer = make_trainer(tiny_model_dir, tmp_path, examples, "ce")
    model, batch = trainer.model, _model_inputs(collate(trainer))
    assert trainer._cpu_plan(model, dict(batch)) is not None
    assert trainer._cpu_plan(model, dict(batch, example_weight=torch.ones(6))) is None  # compute_loss pops it
    left = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    assert trainer._cpu_plan(model, left) is None
    assert trainer._cpu_plan(model, dict(batch, position_ids=torch.zeros_like(batch["input_ids"]))) is None
    model.config.logit_scale = 2.0
    try:
        assert trainer._cpu_plan(model, dict(batch)) is None
    finally:
        del model.config.logit_scale


def _model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
