"""Padding-free body forward (pipeline.models.packing) and the trainer's use of it, on tiny real configs."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.packing import packable, packed_hidden, row_offsets

LENGTHS = [11, 5, 8]


def _rows(vocab: int) -> torch.Tensor:
    """Three right-padded rows of random ids (padding ids random too: the packed path must never read them)."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, vocab, (len(LENGTHS), max(LENGTHS)), generator=g)


def _each_row_alone(body, ids: torch.Tensor) -> torch.Tensor:
    """The reference: every row through the body on its own, batch of one, no padding anywhere."""
    return torch.cat([body(input_ids=ids[i : i + 1, :n], use_cache=False).last_hidden_state[0]
                      for i, n in enumerate(LENGTHS)])


def _random_model(family: str):
    """A seeded 2-layer model of a real family: Qwen2 (RoPE, GQA) or GPT-2 (learned absolute positions,
    where a position that does not restart per row changes every value, and attention scaled by
    1/layer too: the packed attention must pass the model's own scaling on)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if family == "qwen2":
        config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        config._attn_implementation = "sdpa"
        return Qwen2ForCausalLM(config).float()
    config = GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        scale_attn_by_inverse_layer_idx=True)
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config).float()


def _tiny_llama(tiny_model_dir):
    from pipeline.models.loading import load_model

    return load_model(tiny_model_dir, dtype=torch.float32)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_packed_forward_equals_each_row_alone_with_gradients(tiny_model_dir, family):
    """Hidden states and parameter gradients of the packed forward equal each row run alone (GQA, RoPE or
    learned positions restarting per row, no attention across rows)."""
    model = _tiny_llama(tiny_model_dir) if family == "llama" else _random_model(family)
    assert packable(model, max(LENGTHS))
    ids = _rows(model.config.vocab_size)
    weights = torch.randn(sum(LENGTHS), model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    out = []
    for run in (_each_row_alone, lambda body, x: packed_hidden(body, x, LENGTHS)):
        model.zero_grad()
        hidden = run(model.base_model, ids)
        (hidden * weights).sum().backward()
        out.append((hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (alone, alone_grads), (packed, packed_grads) = out
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    assert packed_grads.keys() == alone_grads.keys() and packed_grads
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, alone_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    assert model.config._attn_implementation == "sdpa"  # switched back after the forward


def test_row_offsets():
    assert row_offsets(LENGTHS) == [0, 11, 16]


def test_packable_only_where_packing_is_exact(tiny_model_dir):
    """Eager or other attention, a sliding window narrower than the longest row, or non-causal layer
    kinds keep the padded forward."""
    model = _tiny_llama(tiny_model_dir)
    assert packable(model, 384)
    config = model.config
    config._attn_implementation = "eager"
    assert not packable(model, 384)
    config._attn_implementation = "sdpa"
    assert not hasattr(config, "use_sliding_window")
    config.sliding_window = 100  # Mistral's way: a window and no switch means the window is on
    assert packable(model, 100) and not packable(model, 101)
    config.use_sliding_window = True
    assert packable(model, 100) and not packable(model, 101)
    config.use_sliding_window = False
    assert packable(model, 101)
    config.sliding_window = None
    config.layer_types = ["full_attention", "linear_attention"]
    assert not packable(model, 8)
    config.layer_types = ["full_attention", "sliding_attention"]
    assert packable(model, 8)
    not_transformers = torch.nn.Module()  # attention not routed through transformers' interface
    not_transformers.config = model.config
    assert not packable(not_transformers, 8)


def test_varlen_attention_is_causal_whatever_the_caller_passes(tiny_model_dir):
    """A model that passes `is_causal` itself gets the same causal attention per row, not a clash of keywords."""
    from pipeline.models.packing import varlen_sdpa

    attn = _tiny_llama(tiny_model_dir).model.layers[0].self_attn
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, h, sum(LENGTHS), attn.head_dim, generator=g)
               for h in (attn.config.num_attention_heads, attn.config.num_key_value_heads,
                         attn.config.num_key_value_heads))
    bounds = torch.tensor([*row_offsets(LENGTHS), sum(LENGTHS)])
    plain = varlen_sdpa(attn, q, k, v, None, cu_seq_lens_q=bounds, scaling=attn.scaling)[0]
    assert torch.equal(varlen_sdpa(attn, q, k, v, None, cu_seq_lens_q=bounds, scaling=attn.scaling,
                                   is_causal=True)[0], plain)
    n = LENGTHS[0]
    first = torch.nn.functional.scaled_dot_product_attention(  # row 0 alone, causal, kv heads repeated
        q[:, :, :n], k[:, :, :n].repeat_interleave(attn.num_key_value_groups, 1),
        v[:, :, :n].repeat_interleave(attn.num_key_value_groups, 1), is_causal=True, scale=attn.scaling)
    torch.testing.assert_close(plain[0, :n], first[0].transpose(0, 1))


def test_trainer_packs_the_body_by_default_and_matches_the_padded_body(tiny_trainer, tiled_step, monkeypatch):
    """The CPU path runs the body packed (no padded forward at all) and gets the padded body's loss and
    gradients; `pack_rows = False` is the padded body."""
    from pipeline.losses import get_loss
    from pipeline.training import trainer as trainer_module

    trainer = tiny_trainer(get_loss("ce"))
    calls = []
    real = trainer_module.packed_hidden
    monkeypatch.setattr(trainer_module, "packed_hidden", lambda *a: calls.append(a) or real(*a))
    _, *packed = tiled_step(trainer)
    assert len(calls) == 2  # the one-time check and the step itself
    trainer.pack_rows = False
    _, *padded = tiled_step(trainer)
    assert len(calls) == 2
    torch.testing.assert_close(packed[0].detach(), padded[0].detach(), rtol=1e-5, atol=1e-6)
    for name, grad in packed[1].items():
        torch.testing.assert_close(grad, padded[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_trainer_falls_back_to_padding_when_the_packed_forward_is_wrong(tiny_trainer, tiled_step, monkeypatch):
    """A model whose packed forward differs from its padded one (e.g. it ignores position_ids) is caught
    by the one-time check: a warning, and the step runs padded with the right loss."""
    from pipeline.losses import get_loss
    from pipeline.training import trainer as trainer_module

    trainer = tiny_trainer(get_loss("ce"))
    trainer.pack_rows = False
    _, expected, _ = tiled_step(trainer)
    trainer.pack_rows = True
    real = trainer_module.packed_hidden
    monkeypatch.setattr(trainer_module, "packed_hidden", lambda body, ids, n: real(body, ids, n) + 1.0)
    with pytest.warns(UserWarning, match="packed .* differs"):
        _, loss, _ = tiled_step(trainer)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)


def test_trainer_keeps_padding_under_gradient_checkpointing(tiny_trainer, tiled_step, monkeypatch):
    """Checkpointing recomputes each layer in the backward pass, after the packed forward has switched the
    model back to plain SDPA (which would attend across rows): the trainer does not pack, and its loss and
    gradients are the padded body's."""
    from pipeline.losses import get_loss
    from pipeline.training import trainer as trainer_module

    trainer = tiny_trainer(get_loss("ce"))
    trainer.pack_rows = False
    _, *expected = tiled_step(trainer)
    trainer.pack_rows = True
    model = trainer.model
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls = []
    real = trainer_module.packed_hidden
    monkeypatch.setattr(trainer_module, "packed_hidden", lambda *a: calls.append(a) or real(*a))
    _, loss, grads = tiled_step(trainer)
    assert not calls
    torch.testing.assert_close(loss.detach(), expected[0].detach(), rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_varlen_attention_refuses_a_call_without_row_boundaries(tiny_model_dir):
    """Only `packed_hidden` switches a model to the packed attention; a forward without boundaries would
    attend across rows, so it stops instead."""
    from pipeline.models.packing import VARLEN_SDPA

    model = _tiny_llama(tiny_model_dir)
    model.config._attn_implementation = VARLEN_SDPA
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        model(input_ids=_rows(model.config.vocab_size))
