"""EAFT against a plainly written formula on full logits (torch.topk + softmax): values and gradients, on the
reference path, in the tiled head pass and through the trainer on the tiny model; bad values; a recipe run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.registry import ConfigError
from pipeline.losses import get_loss


def eaft_formula(logits: torch.Tensor, labels: torch.Tensor, k: int, alpha: float, normalizer: float,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t (H_topk(t) / normalizer)^alpha * CE_t / N on full logits, the gate computed from detached logits."""
    z, target = logits[:, :-1], labels[:, 1:]
    mask = target != -100
    top = torch.topk(z.detach().float(), k, dim=-1).values
    p = torch.softmax(top, dim=-1)
    entropy = -(p * torch.log(p)).sum(-1)
    ce = F.cross_entropy(z.float().reshape(-1, z.size(-1)), target.reshape(-1), ignore_index=-100,
                         reduction="none").view(target.shape)
    per_token = (entropy / normalizer) ** alpha * ce * mask
    if weights is not None:
        per_token = per_token * weights[:, None]
    return per_token.sum() / mask.sum()


def random_batch(seed: int = 0, b: int = 3, t: int = 8, v: int = 13):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, v, generator=g) * 2).requires_grad_()
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :3] = -100
    labels[2, -2:] = -100
    return logits, labels


def value_and_grad(fn, x):
    value = fn()
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@pytest.mark.parametrize("k,alpha,normalizer", [(5, 1.0, None), (13, 0.5, None), (3, 2.0, 3.0)])
def test_reference_path_matches_formula(k, alpha, normalizer):
    logits, labels = random_batch()
    weights = torch.tensor([1.0, 0.5, 2.0])
    loss = get_loss("eaft", k=k, alpha=alpha, normalizer=normalizer)
    got = value_and_grad(lambda: loss(SimpleNamespace(logits=logits), labels, batch={"example_weight": weights}),
                         logits)
    want = value_and_grad(lambda: eaft_formula(logits, labels, k, alpha, normalizer or math.log(k), weights), logits)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-7)
    assert 0 < float(loss.metrics["eaft_gate"]) <= 1.0  # H <= ln k <= the normalizer


def test_head_pass_topk_entropy_in_tiles():
    """The running top-k over vocabulary tiles narrower than k gives torch.topk's entropy; log-prob grads unchanged."""
    from pipeline.training.trainer import HeadLogProbs

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(11, 6, generator=g, requires_grad=True)
    weight = torch.randn(23, 6, generator=g, requires_grad=True)
    targets = torch.randint(0, 23, (11,), generator=g)
    for k in (4, 9, 23):  # inside one 7-wide tile, across tiles, the whole vocabulary
        lp, _, _, ent, kl = HeadLogProbs.apply(hidden, weight, targets, False, 4, 7, k)
        assert kl is None and not ent.requires_grad
        top = torch.topk(hidden @ weight.T, k, dim=-1).values.detach()
        p = torch.softmax(top, -1)
        torch.testing.assert_close(ent, -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-6)
        lp.sum().backward()
        got = hidden.grad.clone()
        hidden.grad = weight.grad = None
        torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).sum().backward()
        torch.testing.assert_close(got, hidden.grad, rtol=1e-5, atol=1e-6)
        hidden.grad = weight.grad = None


def test_trainer_fused_path_matches_formula(tiny_trainer, tiled_step):
    """compute_loss (tiled head, no full logits, default k=20 on the 49k vocabulary) = the formula on full logits."""
    trainer = tiny_trainer(get_loss("eaft"))
    model = trainer.model
    batch, fused, got = tiled_step(trainer)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = eaft_formula(logits, batch["labels"], 20, 1.0, math.log(20), batch["example_weight"])
    want.backward()
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=1e-6)
    assert got.keys() and got.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, g in got.items():
        torch.testing.assert_close(g, model.get_parameter(name).grad, rtol=1e-4, atol=1e-6, msg=name)
    assert "eaft_gate" in trainer._metrics["train"]


@pytest.mark.parametrize("params,key", [({"alpha": float("nan")}, "alpha"), ({"alpha": -1.0}, "alpha"),
                                        ({"k": 1}, "k"), ({"normalizer": 0.0}, "normalizer")])
def test_bad_values_name_their_key(params, key):
    with pytest.raises(ConfigError) as err:
        get_loss("eaft", **params)
    assert err.value.key == f"train.loss_params.{key}"


def test_bad_value_in_a_recipe_is_one_error_line(capsys):
    from pipeline.cli import main

    code = main(["recipes", "--show", "sft-math", "--set", "train.loss=eaft", "--set", "train.loss_params.alpha=nan"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("pipeline: error: train.loss_params.alpha")


@pytest.mark.parametrize("loss", ["eaft", "asft"])
def test_head_pass_losses_refuse_several_processes_before_anything_runs(cli_error, loss):
    """The tiled head pass runs outside the DDP/FSDP wrapper (ranks would not sync): one error, at resolve."""
    line = cli_error(["recipes", "--show", "sft-math", "--set", f"train.loss={loss}", "--set",
                      "train.launcher=torchrun", "--set", "train.num_processes=2"])
    assert line.startswith("pipeline: error: train.launcher: ") and "one process" in line
    from pipeline.flows.recipe import resolve_recipe  # one process, or another loss, stays allowed

    resolve_recipe("sft-math", [f"train.loss={loss}", "train.launcher=torchrun", "train.num_processes=1"])
    resolve_recipe("sft-math", ["train.loss=dft", "train.launcher=torchrun", "train.num_processes=2"])


def test_eaft_trains_from_a_recipe(train_subset_run):
    """The real default path: the train stage builds eaft (k=20, alpha=1) and trains; its gate is logged."""
    metrics, logs = train_subset_run("eaft")
    assert metrics["train"]["loss"] == "eaft" and metrics["train"]["steps"] == 2
    assert math.isfinite(metrics["train"]["train_loss"]) and metrics["train"]["train_loss"] > 0
    steps = [entry for entry in logs if "loss" in entry]
    assert len(steps) == 2 and all(0 < entry["eaft_gate"] <= 1 and math.isfinite(entry["loss"]) for entry in steps)


def test_edge_values_are_accepted():
    """k = 2 is the smallest top-k with an entropy; alpha = 0 is plain cross-entropy."""
    assert get_loss("eaft", k=2, alpha=0.0).normalizer == pytest.approx(math.log(2))
