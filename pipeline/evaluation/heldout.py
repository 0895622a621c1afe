"""Held-out evaluation: exact-match accuracy of the final `#### number` and mean response NLL.

At small scale accuracy barely moves, so the mean response NLL on held-out examples is the
sensitive signal; both are reported for the base and the tuned model.
"""

from __future__ import annotations

import polars as pl

from pipeline.core.config import DEFAULT_MAX_LENGTH, EvalSection
from pipeline.data import final_answer
from pipeline.models.engine import response_mask, token_nll
from pipeline.models.generate import generate
from pipeline.models.loading import encode_examples


def mean_response_nll(model, tokenizer, examples: pl.DataFrame, max_length: int = DEFAULT_MAX_LENGTH,
                      progress: bool = True) -> float:
    """Token-weighted mean NLL of the response tokens of `examples`."""
    encoded = encode_examples(tokenizer, examples, max_length)
    nlls = token_nll(model, encoded, pad_id=tokenizer.pad_token_id or 0, progress=progress, desc="eval nll",
                     response_only=True)
    total = sum(float(n[response_mask(e)].sum()) for e, n in zip(encoded, nlls, strict=True))
    count = sum(int(response_mask(e).sum()) for e in encoded)
    return total / max(count, 1)


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


def evaluate_model(model_name_or_dir: str, test: pl.DataFrame, cfg: dict | None = None, progress: bool = True) -> tuple[dict, pl.DataFrame]:
    """Accuracy on the first `cfg['n_generate']` test examples and NLL on all of them."""
    from pipeline.models.loading import load_model, load_tokenizer

    tok = load_tokenizer(model_name_or_dir)
    model = load_model(model_name_or_dir)
    settings = EvalSection.model_validate(cfg or {})
    nll = mean_response_nll(model, tok, test, settings.max_length, progress)
    gen_set = test.head(settings.n_generate)
    acc, table = math_accuracy(model, tok, gen_set, settings.max_new_tokens, settings.batch_size, progress)
    return {"accuracy": acc, "nll": nll, "n_nll": test.height, "n_generate": gen_set.height}, table
