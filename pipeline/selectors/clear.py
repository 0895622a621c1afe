"""CLEAR (Chen & Mueller 2024, arXiv 2403.12776): confidence auto-filter and auto-correct.

Auto-filter keeps rows whose confidence is strictly above gamma (default: the median of the valid
confidences, so about half is kept). Auto-correct (`correct=True`) fine-tunes on the kept rows,
generates y' for every prompt the filter dropped, and replaces y by y' when the judge's confidence
that y' is better than y exceeds eta (0.8), else the row stays dropped. With `rounds > 1` this
repeats (the paper "may iterate"): each further round fine-tunes on the kept rows with the
corrections made so far and retries the rows still dropped.

"y' is better" is a judgement of quality, not of likelihood (a likelihood difference under the base
model rewards fluent greedy text and never checks correctness). So the judge (`judge`) is:

- `"gold"`: for a row whose example has a gold final answer (the example table's `answer`), y' is
  accepted only if `final_answer(y')` equals the normalized gold answer (p_better 1 or 0). The paper
  requires a correction to agree with the known answer where there is one.
- `"pairwise"`: the base model is asked which of two responses to the prompt is better, "(A)" or
  "(B)"; the preference is read from its next-token probabilities over A/B and averaged over both
  orders to cancel position bias, `p_better = (P_B(y, y') + P_A(y', y)) / 2` (so swapping the two
  responses gives exactly `1 - p_better`). This is the paper's pairwise LLM judge with the judge's
  token probability as its confidence, instead of a full BSDetector confidence of the judgement.
- `"likelihood"`: the older token-probability judge `sigmoid((nll_base(y) - nll_base(y')) / T)`,
  cheap, kept as an option; it is not a judgement of correctness.
- `"auto"` (default): gold where the row has a gold answer, pairwise elsewhere.

Replacements are recorded in the extra columns `old_response`, `new_response` and `p_better`; the id
stays the original example's (lineage). `apply_corrections` puts the new responses into the example
table (flows do it before training, and `pipeline.reports.cards.write_card` for the card's subset).

The steps are injectable through the context (`train_fn`, `generate_fn`, `confidence_fn`).
`train_fn` must be given (the select stage passes one: `needs = {"trainer"}`); generation
defaults to greedy decoding with `pipeline.models.generate.generate`; an injected `confidence_fn`
replaces the model judge (pairwise / likelihood), never the gold-answer check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import polars as pl

from pipeline.data import final_answer, normalize_number
from pipeline.models.loading import generation_prompts
from pipeline.selectors import register_selector
from pipeline.selectors.base import SelectContext, Selector, apply_corrections

Judge = Literal["auto", "gold", "pairwise", "likelihood"]
JudgeFn = Callable[[list[str], list[str], list[str]], list[float]]

PAIRWISE = (
    "Question: {question}\n\nResponse (A):\n{a}\n\nResponse (B):\n{b}\n\n"
    "Which response answers the question better and more correctly: (A) or (B)?\n"
    "Reply with the letter of your choice."
)
ANSWER_PREFIX = "Answer: ("


def default_generate_fn(max_new_tokens: int, batch_size: int = 16) -> Callable[[Any, list[str]], list[str]]:
    """Greedy completions from a model folder (or name) with `pipeline.models.generate.generate`."""

    def generate_fn(model: Any, prompts: list[str | list[dict]]) -> list[str]:
        from pipeline.models.generate import generate
        from pipeline.models.loading import load_model, load_tokenizer

        return generate(load_model(model), load_tokenizer(model), prompts, max_new_tokens, batch_size, progress=False)

    return generate_fn


def default_confidence_fn(model_name: str, temperature: float = 1.0) -> JudgeFn:
    """The `likelihood` judge: p(y' better) = sigmoid((nll(y) - nll(y')) / temperature) under the base model.

    Cheap (one forward pass per response) but only a likelihood comparison: it favours fluent
    greedy text and never checks correctness, so it is an option, not the default.
    """

    def confidence_fn(prompts: list[str], old: list[str], new: list[str]) -> list[float]:
        from pipeline.scorers import ScoreContext, get_scorer

        ctx = ScoreContext(model_name=model_name, progress=False)
        n = len(prompts)
        table = pl.DataFrame({"id": [str(i) for i in range(2 * n)], "prompt": prompts + prompts, "response": old + new})
        nll = get_scorer("perplexity")(table, ctx).get_column("nll").to_numpy()
        return list(1.0 / (1.0 + np.exp(-(nll[:n] - nll[n:]) / temperature)))

    return confidence_fn


def pairwise_preference(model: Any, tok: Any, prompts: list[str], first: list[str], second: list[str],
                        max_length: int = 2048, batch_size: int = 8) -> np.ndarray:
    """P(judge answers "(B)") for responses shown in the order (A)=first, (B)=second, one order only.

    The judge prompt (`PAIRWISE`, in the model's chat template) ends with "Answer: (" and the next
    token's probabilities over the letters A and B are renormalized, like the self-reflection
    question of `pipeline.scorers.clear` (reading probabilities instead of parsing free text).
    Long inputs are truncated from the left, so the question and the two responses' ends stay.
    """
    import torch

    from pipeline.models.loading import prompt_text

    dev = next(model.parameters()).device
    letters = [tok.encode(c, add_special_tokens=False)[0] for c in "AB"]
    out: list[np.ndarray] = []
    side, tside = tok.padding_side, tok.truncation_side
    tok.padding_side, tok.truncation_side = "left", "left"
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                end = start + batch_size
                texts = [prompt_text(tok, PAIRWISE.format(question=q, a=a, b=b)) + ANSWER_PREFIX
                         for q, a, b in zip(prompts[start:end], first[start:end], second[start:end], strict=True)]
                enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                          add_special_tokens=False).to(dev)
                logits = model(**enc, logits_to_keep=1).logits[:, -1].float().cpu()
                out.append(torch.softmax(logits[:, letters], dim=-1)[:, 1].double().numpy())
    finally:
        tok.padding_side, tok.truncation_side = side, tside
    return np.concatenate(out) if out else np.zeros(0)


def pairwise_judge_fn(model_name: str, max_length: int = 2048, batch_size: int = 8) -> JudgeFn:
    """The `pairwise` judge: p(y' better than y) from the base model, averaged over both orders.

    `p = (P_B(y, y') + 1 - P_B(y', y)) / 2`: the model sees (A)=y, (B)=y' and then (A)=y', (B)=y, so a
    constant preference for one position cancels, and judging (y', y) gives exactly `1 - p`.
    """

    def judge_fn(prompts: list[str], old: list[str], new: list[str]) -> list[float]:
        from pipeline.models.loading import load_model, load_tokenizer

        if not prompts:
            return []
        model, tok = load_model(model_name), load_tokenizer(model_name)
        new_second = pairwise_preference(model, tok, prompts, old, new, max_length, batch_size)
        old_second = pairwise_preference(model, tok, prompts, new, old, max_length, batch_size)
        return list(0.5 * (new_second + 1.0 - old_second))

    return judge_fn


def gold_answer(value: Any) -> str | None:
    """The normalized gold final answer of a row (None when the row has none or it is not a number)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return normalize_number(str(value))


def _rows(scores: pl.DataFrame, context: SelectContext | None) -> pl.DataFrame:
    """Score rows with prompt/response (and `answer` when the examples have it), joined from context.examples."""
    rows = scores
    if context is not None and context.examples is not None:
        ex = context.examples.select("id", *[c for c in context.examples.columns if c != "id" and c not in scores.columns])
        rows = scores.join(ex, on="id", how="left", maintain_order="left")
    if not {"prompt", "response"} <= set(rows.columns):
        raise ValueError("clear correct=True needs prompt/response columns or context.examples")
    return rows


@register_selector("clear")
class Clear(Selector):
    """Keep confidence > gamma; with `correct`, replace dropped responses whose correction the judge accepts.

    `gamma="median"` is the median of the valid confidences. `judge` picks who decides that y' is
    better (`auto`: the gold final answer where the row has one, else the base model's pairwise
    preference); a correction is accepted when that confidence exceeds `eta`. `rounds` correction
    rounds, each fine-tuning with `ctx.train_fn(kept_rows_with_corrections, ctx.seed)`.
    `max_new_tokens` bounds the default generator's corrections.
    """

    needs = frozenset({"trainer"})  # with `correct`, rounds fine-tune the base (training code keys the stage)

    def __init__(self, column: str = "clear_confidence", gamma: float | Literal["median"] = "median",
                 correct: bool = False, eta: float = 0.8, judge: Judge = "auto", rounds: int = 1,
                 max_new_tokens: int = 160):
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        self.column, self.gamma, self.correct, self.eta = column, gamma, correct, eta
        self.judge, self.rounds, self.max_new_tokens = judge, rounds, max_new_tokens

    def select(self, scores: pl.DataFrame, ctx: SelectContext) -> pl.DataFrame:
        column = self.column
        conf = pl.col(column).cast(pl.Float64)
        valid = conf.is_not_null() & conf.is_not_nan()
        values = scores.filter(valid).get_column(column).cast(pl.Float64)
        if self.gamma == "median":
            g = float(values.median()) if values.len() else float("inf")
        else:
            g = float(self.gamma)
        txt = pl.lit(f"{column}=") + conf.round(4).cast(pl.String)
        out = scores.select(
            "id",
            (valid & (conf > g)).alias("kept"),
            pl.lit(1.0).alias("weight"),
            pl.when(~valid).then(pl.lit("missing score"))
            .when(conf > g).then(pl.lit("kept: clear filter; ") + txt + pl.lit(f" > gamma={g:.4g}"))
            .otherwise(pl.lit("dropped: clear filter; ") + txt + pl.lit(f" <= gamma={g:.4g}")).alias("reason"),
        )
        if not self.correct:
            return out
        return self._correct(out, _rows(scores, ctx), scores.select(valid).to_series().to_numpy(), ctx)

    # -- auto-correct ------------------------------------------------------------------------------

    def _model_judge(self, ctx: SelectContext) -> tuple[str, JudgeFn]:
        """The judge for rows without a gold answer: an injected confidence_fn, or pairwise / likelihood."""
        if ctx.confidence_fn is not None:
            return "confidence_fn", ctx.confidence_fn
        if not ctx.model_name:
            raise ValueError(f"clear judge={self.judge!r} needs context.model_name (the base model that judges) "
                             "or an injected confidence_fn")
        if self.judge == "likelihood":
            return "likelihood", default_confidence_fn(ctx.model_name)
        return "pairwise", pairwise_judge_fn(ctx.model_name)

    def _judge(self, prompts: list[str], old: list[str], new: list[str], gold: list[str | None],
               ctx: SelectContext) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(p_better, accepted, what the judge said) per candidate; p_better is NaN where no judge ran."""
        n, eta = len(prompts), self.eta
        p = np.full(n, np.nan)
        detail = [""] * n
        use_gold = [self.judge in ("auto", "gold") and g is not None for g in gold]
        for i in range(n):
            if use_gold[i]:
                got = final_answer(new[i])
                ok = got is not None and got == gold[i]
                p[i] = 1.0 if ok else 0.0
                detail[i] = f"judge=gold final_answer(y')={got} {'==' if ok else '!='} answer={gold[i]}"
            elif self.judge == "gold":
                detail[i] = "judge=gold: the example has no gold answer"
        model_rows = [i for i in range(n) if not use_gold[i] and self.judge != "gold"]
        if model_rows:
            name, fn = self._model_judge(ctx)
            values = np.asarray(fn([prompts[i] for i in model_rows], [old[i] for i in model_rows],
                                   [new[i] for i in model_rows]), dtype=np.float64)
            if values.size != len(model_rows):
                raise ValueError(f"the {name} judge returned {values.size} values for {len(model_rows)} corrections")
            for i, v in zip(model_rows, values, strict=True):
                p[i] = v
                detail[i] = f"judge={name} p_better={v:.4f} {'>' if v > eta else '<='} eta={eta:g}"
        accepted = np.isfinite(p) & (p > eta)
        return p, accepted, detail

    def _correct(self, out: pl.DataFrame, rows: pl.DataFrame, valid: np.ndarray, ctx: SelectContext) -> pl.DataFrame:
        """`rounds` times: fine-tune on kept rows (corrections applied), regenerate the dropped valid
        prompts, and keep those whose correction the judge accepts (paper's auto-correct, iterated)."""
        if ctx.train_fn is None:
            raise ValueError("clear correct=True needs context.train_fn, (examples, seed) -> model folder: flows "
                             "pass pipeline.training.reference.reference_trainer")
        generate_fn = ctx.generate_fn or default_generate_fn(self.max_new_tokens)
        n = out.height
        kept = out.get_column("kept").to_numpy().copy()
        base_reason = out.get_column("reason").to_list()
        reason = list(base_reason)
        old_resp: list[str | None] = [None] * n
        new_resp: list[str | None] = [None] * n
        p_better = np.full(n, np.nan)
        prompts_all, responses = rows.get_column("prompt").to_list(), rows.get_column("response").to_list()
        gen_all = generation_prompts(rows)
        answers = rows.get_column("answer").to_list() if "answer" in rows.columns else [None] * n
        gold_all = [gold_answer(a) for a in answers]
        needs_model = self.judge in ("pairwise", "likelihood") or (
            self.judge == "auto" and any(gold_all[i] is None for i in np.flatnonzero(~kept & valid)))
        if needs_model:
            self._model_judge(ctx)  # fails now, before any fine-tuning, with the message naming the judge
        for rnd in range(1, self.rounds + 1):
            todo = np.flatnonzero(~kept & valid)
            if todo.size == 0:
                break
            current = [new_resp[i] if new_resp[i] is not None else responses[i] for i in range(n)]
            train_rows = rows.with_columns(pl.Series("response", current, dtype=pl.String)).filter(pl.Series(kept))
            model = ctx.train_fn(train_rows, ctx.seed)
            prompts, old = [prompts_all[i] for i in todo], [responses[i] for i in todo]
            new = list(generate_fn(model, [gen_all[i] for i in todo]))  # a chat row continues its turns
            if len(new) != len(prompts):
                raise ValueError(f"generate_fn returned {len(new)} responses for {len(prompts)} prompts")
            p, accepted, detail = self._judge(prompts, old, new, [gold_all[i] for i in todo], ctx)
            where = f"round {rnd}" if self.rounds > 1 else "clear"
            for j, i in enumerate(todo):
                p_better[i] = p[j]
                if accepted[j]:
                    kept[i], old_resp[i], new_resp[i] = True, old[j], new[j]
                    reason[i] = f"corrected: {where}; {detail[j]}; was: {base_reason[i]}"
                else:
                    reason[i] = f"{base_reason[i]}; correction rejected ({where}): {detail[j]}"
        return out.with_columns(
            pl.Series("kept", kept, dtype=pl.Boolean),
            pl.Series("reason", reason, dtype=pl.String),
            pl.Series("old_response", old_resp, dtype=pl.String),
            pl.Series("new_response", new_resp, dtype=pl.String),
            pl.Series("p_better", p_better, dtype=pl.Float64).fill_nan(None),
        )


__all__ = ["Clear", "apply_corrections", "default_confidence_fn", "default_generate_fn", "gold_answer",
           "pairwise_judge_fn", "pairwise_preference"]
