"""Held-out evaluation: exact-match accuracy of the final `#### number` and mean response NLL.

At small scale accuracy barely moves, so the mean response NLL on held-out examples is the
sensitive signal; both are reported for the base and the tuned model.
"""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
import torch

from pipeline.data import final_answer
from pipeline.modeling import encode_examples, prompt_text
from pipeline.scorers.engine import response_mask, token_nll


def mean_response_nll(model, tokenizer, examples: pl.DataFrame, max_length: int = 512, progress: bool = True) -> float:
    """Token-weighted mean NLL of the response tokens of `examples`."""
    encoded = encode_examples(tokenizer, examples, max_length)
    nlls = token_nll(model, encoded, pad_id=tokenizer.pad_token_id or 0, progress=progress, desc="eval nll",
                     response_only=True)
    total = sum(float(n[response_mask(e)].sum()) for e, n in zip(encoded, nlls, strict=True))
    count = sum(int(response_mask(e).sum()) for e in encoded)
    return total / max(count, 1)


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


def math_accuracy(model, tokenizer, examples: pl.DataFrame, max_new_tokens: int = 160, batch_size: int = 16,
                  progress: bool = True) -> tuple[float, pl.DataFrame]:
    """Exact match of the normalized final number; returns (accuracy, per-example predictions)."""
    completions = generate(model, tokenizer, examples.get_column("prompt").to_list(), max_new_tokens, batch_size, progress)
    predicted = [final_answer(c) for c in completions]
    gold = examples.get_column("answer").to_list()
    correct = [p is not None and p == g for p, g in zip(predicted, gold, strict=True)]
    table = pl.DataFrame({"id": examples.get_column("id"), "gold": gold, "predicted": predicted,
                          "correct": correct, "completion": completions})
    return (sum(correct) / max(len(correct), 1)), table


def evaluate_model(model_name_or_dir: str, test: pl.DataFrame, cfg: dict, progress: bool = True) -> tuple[dict, pl.DataFrame]:
    """Accuracy on the first `cfg['n_generate']` test examples and NLL on all of them."""
    from pipeline.modeling import load_model, load_tokenizer

    tok = load_tokenizer(model_name_or_dir)
    model = load_model(model_name_or_dir)
    nll = mean_response_nll(model, tok, test, int(cfg.get("max_length", 512)), progress)
    gen_set = test.head(int(cfg.get("n_generate", test.height)))
    acc, table = math_accuracy(model, tok, gen_set, int(cfg.get("max_new_tokens", 160)),
                               int(cfg.get("batch_size", 16)), progress)
    return {"accuracy": acc, "nll": nll, "n_nll": test.height, "n_generate": gen_set.height}, table
