"""Greedy generation, batched with left padding: what evaluation and CLEAR's corrections use."""

from __future__ import annotations

import sys

import numpy as np
import torch

from pipeline.models.loading import prompt_text


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 160, batch_size: int = 16,
             progress: bool = True) -> list[str]:
    """Greedy completions for `prompts`, batched with left padding, longest prompts first."""
    dev = next(model.parameters()).device
    texts = [prompt_text(tokenizer, p) for p in prompts]
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out: list[str] = [""] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            for row, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[row, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            if progress:
                print(f"\r[generate] {min(start + batch_size, len(order))}/{len(order)} prompts", end="",
                      file=sys.stderr, flush=True)
    finally:
        tokenizer.padding_side = side
    if progress and texts:
        print(file=sys.stderr, flush=True)
    return out
