"""Padding-free forward of a causal LM's body on CPU: rows packed end to end, attention per row.

A padded batch spends the body's FLOPs on its padding (a training batch of gsm_symbolic rows is
about a third padding). Packing the real tokens into one row removes that work from every linear
layer, but SDPA has no variable-length kernel on CPU, so transformers' packed path gives it a
block-diagonal mask over the whole packed row (several times the attention FLOPs). Here each row's
attention runs on its own slice with the causal kernel (`is_causal=True`, no mask), the same kernel
the padded path uses: same values up to float summation order, positions restart at 0 per row.

The attention function is registered with transformers' `AttentionInterface` under
`VARLEN_SDPA`; `packed_hidden` switches a model to it for one forward and back. It reads the row
boundaries from `cu_seq_lens_q`, the keyword transformers' flash-attention varlen path uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from itertools import accumulate, pairwise

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

VARLEN_SDPA = "sft_pipeline_varlen_sdpa"
# Layer kinds whose attention is plain causal attention (a sliding window only beyond its width).
_CAUSAL_LAYERS = {"full_attention", "sliding_attention"}


def varlen_sdpa(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    """SDPA over each packed row's slice ([1, heads, N, dim] inputs); `attention_mask` is ignored (None
    here: no mask function is registered for this implementation)."""
    if cu_seq_lens_q is None:  # only `packed_hidden` switches a model to this implementation
        raise ValueError(f"{VARLEN_SDPA} needs the packed rows' boundaries (cu_seq_lens_q); use packed_hidden")
    kwargs.pop("is_causal", None)
    bounds = cu_seq_lens_q.tolist()
    outs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                   is_causal=True, **kwargs)[0] for a, b in pairwise(bounds)]
    return torch.cat(outs, dim=1), None


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa)


def packable(model, longest: int) -> bool:
    """True when a packed forward of `model` (a causal LM or its body) equals its padded one.

    The model must route attention through transformers' attention interface with SDPA (so the
    packed path runs the same kernel), and every layer must attend causally to its whole row: no
    sliding window narrower than the longest row, no linear or chunked attention layers.
    """
    config = model.config.get_text_config()
    if not getattr(model, "_supports_attention_backend", False) or config._attn_implementation != "sdpa":
        return False
    if not set(getattr(config, "layer_types", None) or ["full_attention"]) <= _CAUSAL_LAYERS:
        return False
    window = getattr(config, "sliding_window", None)
    return window is None or not getattr(config, "use_sliding_window", True) or longest <= window


@contextlib.contextmanager
def _attention(config, name: str):
    old = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = old


def packed_hidden(body, ids: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Last hidden states [sum(lengths), H] of `body` (e.g. `model.model`) for each row's first
    `lengths[i]` ids of `ids` [B, T], rows packed end to end without padding."""
    flat = torch.cat([ids[i, :n] for i, n in enumerate(lengths)])[None]
    positions = torch.cat([torch.arange(n, device=ids.device) for n in lengths])[None]
    bounds = torch.tensor([0, *accumulate(lengths)])  # read on the host (`tolist`), so kept there
    with _attention(body.config, VARLEN_SDPA):
        out = body(input_ids=flat, position_ids=positions, use_cache=False, cu_seq_lens_q=bounds)
    return out.last_hidden_state[0]


def row_offsets(lengths: Sequence[int]) -> list[int]:
    """Where each row starts in the packed sequence."""
    return [0, *accumulate(lengths)][:-1]
