"""ASFT against a plainly written formula on full logits (DFT + kl_coef * F.kl_div to the frozen reference):
values and gradients on the reference path, in the tiled head pass, through the trainer with a frozen copy of the
base and under LoRA (adapter disabled); the reference runs under inference mode; bad values; a recipe run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.registry import ConfigError
from pipeline.losses import get_loss


def asft_formula(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, kl_coef: float,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t [sg(p_t) CE_t + kl_coef KL(q_t || p_t)] / N, KL by F.kl_div(log p, q) summed over the vocabulary."""
    z, target = logits[:, :-1].float(), labels[:, 1:]
    mask = target != -100
    ce = F.cross_entropy(z.reshape(-1, z.size(-1)), target.reshape(-1), ignore_index=-100,
                         reduction="none").view(target.shape)
    dft = torch.exp(-ce).detach() * ce
    q = torch.softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = F.kl_div(torch.log_softmax(z, dim=-1), q, reduction="none").sum(-1)
    per_token = (dft + kl_coef * kl) * mask
    if weights is not None:
        per_token = per_token * weights[:, None]
    return per_token.sum() / mask.sum()


def value_and_grad(fn, x):
    value = fn()
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@pytest.mark.parametrize("kl_coef", [0.1, 2.0])
def test_reference_path_matches_formula(kl_coef):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 8, 13, generator=g) * 2).requires_grad_()
    ref_logits = torch.randn(3, 8, 13, generator=g) * 2
    labels = torch.randint(0, 13, (3, 8), generator=g)
    labels[0, :3] = -100
    labels[2, -2:] = -100
    weights = torch.tensor([1.0, 0.5, 2.0])
    loss = get_loss("asft", kl_coef=kl_coef)
    got = value_and_grad(lambda: loss(SimpleNamespace(logits=logits), labels,
                                      batch={"example_weight": weights, "reference_logits": ref_logits}), logits)
    want = value_and_grad(lambda: asft_formula(logits, ref_logits, labels, kl_coef, weights), logits)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-7)
    assert float(loss.metrics["asft_kl"]) > 0


def test_head_pass_kl_in_tiles():
    """KL(q || p) folded over vocabulary tiles, with its gradient joined to the log-prob's, equals the formula;
    nothing flows to the reference."""
    from pipeline.training.trainer import HeadLogProbs

    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(11, 6, generator=g, requires_grad=True)
    weight = torch.randn(23, 6, generator=g, requires_grad=True)
    ref_hidden, ref_weight = torch.randn(11, 6, generator=g), torch.randn(23, 6, generator=g)
    targets = torch.randint(0, 23, (11,), generator=g)
    up_lp, up_kl = torch.randn(11, generator=g), torch.randn(11, generator=g)
    lp, _, _, ent, kl = HeadLogProbs.apply(hidden, weight, targets, True, 4, 7, 0, ref_hidden, ref_weight)
    assert ent is None
    ((lp * up_lp).sum() + (kl * up_kl).sum()).backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logp = torch.log_softmax(hidden @ weight.T, -1)
    want_kl = F.kl_div(logp, torch.softmax(ref_hidden @ ref_weight.T, -1), reduction="none").sum(-1)
    want_lp = logp.gather(1, targets[:, None]).squeeze(1)
    ((want_lp * up_lp).sum() + (want_kl * up_kl).sum()).backward()
    torch.testing.assert_close(kl, want_kl.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp, want_lp.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], weight.grad, rtol=1e-5, atol=1e-5)


def trained_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_fused_against_formula(trainer, tiled_step, reference_logits_fn, kl_coef: float):
    """compute_loss (tiled, both models) vs the formula on full logits: value and every trained gradient."""
    model = trainer.model
    batch, fused, got = tiled_step(trainer)
    with torch.no_grad():
        ref_logits = reference_logits_fn(batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = asft_formula(logits, ref_logits, batch["labels"], kl_coef, batch["example_weight"])
    want.backward()
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=1e-6)
    want_grads = trained_grads(model)
    assert got and got.keys() == want_grads.keys()
    for name, g in got.items():
        torch.testing.assert_close(g, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    kl = trainer._metrics["train"]["asft_kl"]
    assert kl and kl[-1] > 1e-4  # the trained model differs from its anchor
    return model


def test_trainer_full_finetune_anchors_to_a_frozen_copy(tiny_trainer, tiled_step, tiny_model_dir):
    from pipeline.models.loading import load_model

    trainer = tiny_trainer(get_loss("asft", kl_coef=0.5), base_model=True)
    ref = trainer.reference_model
    assert ref is not None and ref is not trainer.model and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    assert next(ref.parameters()).dtype == next(trainer.model.parameters()).dtype
    seen = []
    ref.model.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the trained model moves away from the base
        for p in trainer.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    base = load_model(tiny_model_dir, dtype=torch.float32)
    check_fused_against_formula(
        trainer, tiled_step, lambda b: base(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, 0.5)
    assert seen and all(seen)  # the reference only ever runs under inference mode
    runs = len(seen)
    tiled_step(trainer)
    assert len(seen) == runs + 1  # one forward of the reference per step (after the one-time packing check)


def test_trainer_lora_anchors_to_the_base_with_the_adapter_disabled(tiny_trainer, tiled_step):
    trainer = tiny_trainer(get_loss("asft"), lora={"r": 4, "alpha": 8}, base_model=True)
    model = trainer.model
    assert trainer.reference_model is None  # no second copy: peft's disable_adapter
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero (model == base): give the adapter an effect
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def base_logits(b):
        with model.disable_adapter():
            return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits

    check_fused_against_formula(trainer, tiled_step, base_logits, 0.1)
    assert model.training and all("lora" in n for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_kl_coef_names_its_key(value):
    with pytest.raises(ConfigError) as err:
        get_loss("asft", kl_coef=value)
    assert err.value.key == "train.loss_params.kl_coef"


def test_bad_value_in_a_recipe_is_one_error_line(capsys):
    from pipeline.cli import main

    code = main(["recipes", "--show", "sft-math", "--set", "train.loss=asft", "--set", "train.loss_params.kl_coef=-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("pipeline: error: train.loss_params.kl_coef")


def test_asft_trains_from_a_recipe(train_subset_run):
    """The real default path: the train stage builds asft (kl_coef 0.1), the trainer loads the frozen base and
    trains; KL is 0 at the first step (model == base) and positive once the model has moved."""
    import math

    metrics, logs = train_subset_run("asft", "train.warmup_ratio=0",
                               "train.learning_rate=1e-3")
    assert metrics["train"]["loss"] == "asft" and metrics["train"]["steps"] == 2
    assert math.isfinite(metrics["train"]["train_loss"]) and metrics["train"]["train_loss"] > 0
    steps = [entry for entry in logs if "loss" in entry]
    assert len(steps) == 2 and all(math.isfinite(e["loss"]) and e["asft_dft"] > 0 for e in steps)
    assert abs(steps[0]["asft_kl"]) < 1e-5 < steps[1]["asft_kl"]
