"""Batched per-token log-likelihood: the one inference path under every model-based scorer.

Examples are sorted by length and cut into batches under a token budget (minimal padding); each
batch runs under `inference_mode`; the LM head projects only real (non-padding) positions to the
vocabulary in tiles and keeps only each label's log-probability (`head_log_probs`; TRL's fused
head for heads with softcapping/scaling), so the (batch x length x vocab) logits never exist.
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


# Config attributes that change the logits beyond `hidden @ W.T`; such models use TRL's fused head.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")
VOCAB_CHUNK = 4096  # 1024 x 4096 tiles (16 MB) ran fastest on 2 CPU cores (150 vs 100 GFLOP/s at 512 x 16384)
TOKEN_CHUNK = 1024


def plain_head(model) -> bool:
    """True when the LM head is a bias-free `hidden @ W.T` (Llama, Qwen, Mistral, ...)."""
    config = model.config.get_text_config()
    head = model.get_output_embeddings()
    return head is not None and getattr(head, "bias", None) is None and all(
        getattr(config, a, None) is None for a in _LOGIT_TRANSFORMS
    )


def head_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   vocab_chunk: int = VOCAB_CHUNK, token_chunk: int = TOKEN_CHUNK) -> torch.Tensor:
    """log p(target) for [N, H] hidden states under head weight [V, H], in (token x vocab) tiles.

    Each tile's logits are reduced to a logsumexp at once (float32) and folded into a running
    logaddexp, so at most `token_chunk x vocab_chunk` logits exist; the target logit is a row-wise
    dot product with the target's weight row.
    """
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], token_chunk):
        h = hidden[start : start + token_chunk]
        lse = None
        for v in range(0, weight.shape[0], vocab_chunk):
            tile = torch.logsumexp((h @ weight[v : v + vocab_chunk].T).float(), dim=1)
            lse = tile if lse is None else torch.logaddexp(lse, tile)
        target = (h.float() * weight[targets[start : start + token_chunk]].float()).sum(-1)
        out[start : start + token_chunk] = target - lse
    return out


def _padded(encoded: Sequence[dict], idx: list[int], pad_id: int, dev: torch.device):
    width = max(len(encoded[i]["input_ids"]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = encoded[i]["input_ids"]
        ids[row, : len(seq)] = torch.tensor(seq)
        attn[row, : len(seq)] = 1
    return ids.to(dev), attn.to(dev)


def _completion(encoded: Sequence[dict], idx: list[int], width: int, dev: torch.device) -> torch.Tensor:
    mask = torch.zeros((len(idx), width), dtype=torch.bool)
    for row, i in enumerate(idx):
        seq = encoded[i]["completion_mask"]
        mask[row, : len(seq)] = torch.tensor(seq, dtype=torch.bool)
    return mask.to(dev)


def _batch_nll(model, ids: torch.Tensor, attn: torch.Tensor, plain: bool,
               wanted: torch.Tensor | None = None) -> list[np.ndarray]:
    """Per-row NLL arrays (length L_row - 1) for one right-padded batch; NaN where `wanted` is False.

    No attention mask is passed: with right padding a causal model's real tokens never attend to
    the padding after them, so their outputs are exact, and attention keeps its fast causal kernel
    instead of materializing a (batch x heads x L x L) padding mask. Only `wanted` positions
    (default: every real one) go through the LM head, the other part of the cost.
    """
    lengths = attn.sum(1).tolist()
    real = attn[:, 1:].bool()
    keep = real if wanted is None else wanted[:, 1:].bool() & real
    if plain:
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        full = torch.full(real.shape, float("nan"), dtype=torch.float32, device=ids.device)
        full[keep] = -head_log_probs(hidden[:, :-1][keep], model.get_output_embeddings().weight, ids[:, 1:][keep])
        nll = full.cpu().numpy()
    else:
        ensure_fused_head(model)
        labels = ids.masked_fill(attn == 0, -100)
        result = model(input_ids=ids, labels=labels, fused_lm_head=True)
        nll = (-result.log_probs.float()).masked_fill(~keep, float("nan")).cpu().numpy()
    return [nll[row, : n - 1].copy() for row, n in enumerate(lengths)]


def default_max_tokens(dev: torch.device) -> int:
    """Tokens per batch: small on CPU (bigger batches run slower there: cache-bound), large on GPU."""
    return 16384 if dev.type == "cuda" else 1024


@torch.inference_mode()
def token_nll(
    model,
    encoded: Sequence[dict],
    max_tokens: int | None = None,
    max_batch: int = 64,
    pad_id: int = 0,
    progress: bool = True,
    desc: str = "scoring",
    response_only: bool = False,
) -> list[np.ndarray]:
    """Per-example arrays of next-token NLL for positions 1..L-1 (float32, length L-1).

    `encoded[i]["input_ids"]` is a list of ids; position j of the result is -log p(x_{j+1} | x_<=j).
    Bias-free heads use `head_log_probs` (only real tokens are projected); others TRL's fused head.
    `response_only` projects only response tokens (`completion_mask`) and leaves NaN elsewhere:
    scorers that read response tokens only skip about half of the LM-head work.
    `max_tokens` (padded tokens per batch) defaults to `default_max_tokens` of the model's device.
    """
    dev = next(model.parameters()).device
    max_tokens = max_tokens or default_max_tokens(dev)
    plain = plain_head(model)
    lengths = [len(e["input_ids"]) for e in encoded]
    out: list[np.ndarray | None] = [None] * len(encoded)
    total = sum(lengths)
    done_tokens, start = 0, time.perf_counter()
    for b, idx in enumerate(length_batches(lengths, max_tokens, max_batch)):
        ids, attn = _padded(encoded, idx, pad_id, dev)
        wanted = _completion(encoded, idx, ids.shape[1], dev) if response_only else None
        for i, nll in zip(idx, _batch_nll(model, ids, attn, plain, wanted), strict=True):
            out[i] = nll
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
