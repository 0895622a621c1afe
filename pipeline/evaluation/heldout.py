"""Held-out evaluation: exact-match accuracy of the final `#### number` and mean response NLL.

At small scale accuracy barely moves, so the mean response NLL on held-out examples is the
sensitive signal; both are reported for the base and the tuned model. A chat row (`messages`) is
scored on every assistant turn given the conversation before it (`encode_examples`), and generated
from all turns before its last assistant turn.
"""

from __future__ import annotations

import math

import polars as pl

from pipeline.core.config import DEFAULT_MAX_LENGTH, EvalSection
from pipeline.data import final_answer
from pipeline.models.engine import response_mask, token_nll
from pipeline.models.generate import generate
from pipeline.models.loading import encode_examples, generation_prompts, response_texts


def response_nll_table(model, tokenizer, examples: pl.DataFrame, max_length: int = DEFAULT_MAX_LENGTH,
                       progress: bool = True) -> pl.DataFrame:
    """Per example: id, nll_sum (nats over the response tokens), n_tokens, n_bytes (UTF-8 bytes of the
    response): what token-weighted NLL, bits per byte and their paired bootstrap CIs are computed from.

    For a chat row the response tokens are those of every assistant turn (each reply and its
    end-of-turn token, as in training), so nll_sum, n_tokens and n_bytes (the replies' bytes) cover
    all assistant turns, not only the last one.
    """
    encoded = encode_examples(tokenizer, examples, max_length)
    nlls = token_nll(model, encoded, pad_id=tokenizer.pad_token_id or 0, progress=progress, desc="eval nll",
                     response_only=True)
    return pl.DataFrame({
        "id": examples.get_column("id"),
        "nll_sum": [float(n[response_mask(e)].sum()) for e, n in zip(encoded, nlls, strict=True)],
        "n_tokens": [int(response_mask(e).sum()) for e in encoded],
        "n_bytes": [sum(len(r.encode("utf-8")) for r in texts) for texts in response_texts(examples)],
    }, schema={"id": pl.String, "nll_sum": pl.Float64, "n_tokens": pl.Int64, "n_bytes": pl.Int64})


def mean_response_nll(model, tokenizer, examples: pl.DataFrame, max_length: int = DEFAULT_MAX_LENGTH,
                      progress: bool = True) -> float:
    """Token-weighted mean NLL of the response tokens of `examples`."""
    table = response_nll_table(model, tokenizer, examples, max_length, progress)
    return float(table.get_column("nll_sum").sum()) / max(int(table.get_column("n_tokens").sum()), 1)


def bits_per_byte(table: pl.DataFrame) -> float:
    """Response bits per UTF-8 byte: total NLL in bits over total bytes (comparable across tokenizers)."""
    return float(table.get_column("nll_sum").sum()) / (math.log(2) * max(int(table.get_column("n_bytes").sum()), 1))


def math_accuracy(model, tokenizer, examples: pl.DataFrame, max_new_tokens: int = 160, batch_size: int = 16,
                  progress: bool = True) -> tuple[float, pl.DataFrame]:
    """Exact match of the normalized final number; returns (accuracy, per-example predictions).

    A chat row is generated from every turn before its last assistant turn (`generation_prompts`).
    """
    completions = generate(model, tokenizer, generation_prompts(examples), max_new_tokens, batch_size, progress)
    predicted = [final_answer(c) for c in completions]
    gold = examples.get_column("answer").to_list()
    correct = [p is not None and p == g for p, g in zip(predicted, gold, strict=True)]
    table = pl.DataFrame({"id": examples.get_column("id"), "gold": gold, "predicted": predicted,
                          "correct": correct, "completion": completions})
    return (sum(correct) / max(len(correct), 1)), table


def evaluate_model(model_name_or_dir: str, test: pl.DataFrame, cfg: EvalSection | dict | None = None,
                   progress: bool = True) -> tuple[dict, pl.DataFrame]:
    """Accuracy on the first `cfg['n_generate']` test examples, NLL and bits per byte on all of them.

    The table has one row per test example (`response_nll_table` columns, then `generated`, and
    `gold`, `predicted`, `correct`, `completion` for the generated ones): paired comparisons of two
    models (`pipeline.evaluation.stats`) read it.
    """
    from pipeline.models.loading import load_model, load_tokenizer

    tok = load_tokenizer(model_name_or_dir)
    model = load_model(model_name_or_dir)
    settings = cfg if isinstance(cfg, EvalSection) else EvalSection.model_validate(cfg or {})
    nll = response_nll_table(model, tok, test, settings.max_length, progress)
    gen_set = test.head(settings.n_generate)
    acc, generated = math_accuracy(model, tok, gen_set, settings.max_new_tokens, settings.batch_size, progress)
    table = nll.join(generated.with_columns(pl.lit(True).alias("generated")), on="id", how="left",
                     maintain_order="left").with_columns(pl.col("generated").fill_null(False))
    metrics = {"accuracy": acc, "nll": float(nll.get_column("nll_sum").sum()) / max(int(nll.get_column("n_tokens").sum()), 1),
               "bits_per_byte": bits_per_byte(nll), "n_nll": test.height, "n_generate": gen_set.height}
    return metrics, table
