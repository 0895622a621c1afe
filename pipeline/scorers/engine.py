"""Batched per-token log-likelihood: the one inference path under every model-based scorer.

Examples are sorted by length and cut into batches under a token budget (minimal padding); each
batch runs under `inference_mode` through TRL's fused LM head, which projects hidden states to the
vocabulary in tiles and keeps only each label's log-probability, so the (batch x length x vocab)
logits are never materialized.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np
import torch


def length_batches(lengths: Sequence[int], max_tokens: int, max_batch: int = 64) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size stays under max_tokens."""
    order = np.argsort(np.asarray(lengths), kind="stable")[::-1]
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order.tolist():
        longest_if_added = max(longest, lengths[i])
        if current and (longest_if_added * (len(current) + 1) > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def ensure_fused_head(model) -> None:
    """Patch TRL's fused LM head onto `model` once (generation and plain forwards are unchanged)."""
    if getattr(model, "_sft_pipeline_fused", False):
        return
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model)
    model._sft_pipeline_fused = True


@torch.inference_mode()
def token_nll(
    model,
    encoded: Sequence[dict],
    max_tokens: int = 8192,
    max_batch: int = 64,
    pad_id: int = 0,
    progress: bool = True,
    desc: str = "scoring",
) -> list[np.ndarray]:
    """Per-example arrays of next-token NLL for positions 1..L-1 (float32, length L-1).

    `encoded[i]["input_ids"]` is a list of ids; position j of the result is -log p(x_{j+1} | x_<=j).
    """
    ensure_fused_head(model)
    dev = next(model.parameters()).device
    lengths = [len(e["input_ids"]) for e in encoded]
    out: list[np.ndarray | None] = [None] * len(encoded)
    total = sum(lengths)
    done_tokens, start = 0, time.perf_counter()
    for b, idx in enumerate(length_batches(lengths, max_tokens, max_batch)):
        width = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = encoded[i]["input_ids"]
            ids[row, : len(seq)] = torch.tensor(seq)
            attn[row, : len(seq)] = 1
        labels = ids.masked_fill(attn == 0, -100)
        ids, attn, labels = ids.to(dev), attn.to(dev), labels.to(dev)
        result = model(input_ids=ids, attention_mask=attn, labels=labels, fused_lm_head=True)
        nll = (-result.log_probs.float()).cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = nll[row, : lengths[i] - 1].copy()
        done_tokens += sum(lengths[i] for i in idx)
        if progress:
            rate = done_tokens / max(time.perf_counter() - start, 1e-9)
            print(
                f"\r[{desc}] {done_tokens}/{total} tokens  {rate:,.0f} tok/s  batch {b + 1}",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if progress and encoded:
        print(file=sys.stderr, flush=True)
    return out  # type: ignore[return-value]


def response_mask(encoded: dict) -> np.ndarray:
    """Boolean mask over positions 1..L-1 marking response (completion) tokens."""
    return np.asarray(encoded["completion_mask"][1:], dtype=bool)
