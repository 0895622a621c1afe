"""CLEAR confidence (Chen & Mueller, arXiv 2403.12776), BSDetector style, from the base model.

`C = beta * O + (1 - beta) * S`, `O = mean_i [alpha * s_i + (1 - alpha) * r_i]` over k answers
sampled at temperature 1 (defaults k=5, alpha=0.8, beta=0.7):

- `s_i` (semantic agreement of sample i with the given response): the paper uses an NLI model
  (1 - P(contradiction), both directions). No NLI model installs offline, so for math (an `answer`
  is present, or `mode="math"`) s_i is agreement of the extracted final answers
  (`pipeline.data.final_answer`), and for free text the cosine similarity of sentence embeddings
  clipped to [0, 1]. Documented substitute, not the paper's NLI.
- `r_i` (exact match): equal final answers for math, equal whitespace-normalized text otherwise.
- `S` (self-reflection): "(A) Correct / (B) Incorrect / (C) Not sure" -> 1 / 0 / 0.5, read as the
  expected value under the model's next-token probabilities over A/B/C (renormalized) after the
  answer prefix, instead of parsing free generation.

`token_confidence` is a cheap variant (one forward pass): the mean probability the model gives to
the response's own tokens. It is not CLEAR; it ranks similarly only where the model is calibrated.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import polars as pl
import torch

from pipeline.data import final_answer
from pipeline.models.assets import DEFAULT_EMBEDDER
from pipeline.models.embedder import embed_texts
from pipeline.models.engine import response_mask, token_nll
from pipeline.models.generate import sample_ids
from pipeline.models.loading import encode_examples, generation_prompts, prompt_text
from pipeline.scorers import register_scorer
from pipeline.scorers.base import ScoreContext, Scorer

REFLECTION = (
    "Question: {question}\nProposed Answer: {answer}\n"
    "Is the proposed answer: (A) Correct (B) Incorrect (C) I am not sure.\n"
    "Reply with the letter of your choice."
)
ANSWER_PREFIX = "Answer: ("


def combine(s: np.ndarray, r: np.ndarray, self_reflection: float | np.ndarray, alpha: float = 0.8,
            beta: float = 0.7) -> np.ndarray:
    """BSDetector: `beta * mean_i(alpha s_i + (1-alpha) r_i) + (1-beta) S`; s, r are [..., k]."""
    observed = (alpha * np.asarray(s, dtype=np.float64) + (1 - alpha) * np.asarray(r, dtype=np.float64)).mean(-1)
    return beta * observed + (1 - beta) * np.asarray(self_reflection, dtype=np.float64)


def _seed(ids: list[str], seed: int) -> int:
    """A sampling seed that depends only on the examples and the context seed (not on shard layout)."""
    return int(hashlib.sha256(f"{seed}:{','.join(ids)}".encode()).hexdigest()[:8], 16)


def _left_padded(tok, texts: list[str], max_length: int, dev: torch.device) -> dict[str, torch.Tensor]:
    side, tside = tok.padding_side, tok.truncation_side
    tok.padding_side, tok.truncation_side = "left", "left"
    try:
        return tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                   add_special_tokens=False).to(dev)
    finally:
        tok.padding_side, tok.truncation_side = side, tside


@torch.inference_mode()
def sample_answers(model, tok, prompts: list[str | list[dict]], ids: list[str], k: int, temperature: float,
                   max_new_tokens: int, max_length: int, batch_size: int, seed: int,
                   progress: bool = False) -> list[list[str]]:
    """k sampled answers per prompt: the slot decoder on `batch_size * k` rows, each answer from its own seed
    (example id, answer index, context seed), so it does not depend on batching; `transformers`' generate
    (one seed per batch) for models the slot decoder does not support."""
    texts = [prompt_text(tok, p) for p in prompts]
    seeds = [_seed([i, str(j)], seed) for i in ids for j in range(k)]
    sampled = sample_ids(model, tok, [t for t in texts for _ in range(k)], seeds, temperature, max_new_tokens,
                         batch_size * k, max_length, progress="clear samples" if progress else False)
    if sampled is not None:
        answers = [tok.decode(x, skip_special_tokens=True) for x in sampled]
        return [answers[i * k : (i + 1) * k] for i in range(len(prompts))]
    return _hf_sample_answers(model, tok, texts, ids, k, temperature, max_new_tokens, max_length, batch_size, seed)


def _hf_sample_answers(model, tok, texts: list[str], ids: list[str], k: int, temperature: float, max_new_tokens: int,
                       max_length: int, batch_size: int, seed: int) -> list[list[str]]:
    """k sampled answers per prompt with `transformers`' generate, `batch_size * k` sequences per call."""
    dev = next(model.parameters()).device
    out: list[list[str]] = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        enc = _left_padded(tok, batch, max_length, dev)
        torch.manual_seed(_seed(ids[start : start + batch_size], seed))
        gen = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             num_return_sequences=k, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id)
        decoded = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out.extend(decoded[i * k : (i + 1) * k] for i in range(len(batch)))
    return out


@torch.inference_mode()
def self_reflection(model, tok, prompts: list[str], responses: list[str], max_length: int,
                    batch_size: int) -> np.ndarray:
    """E[score] under the next-token distribution over A/B/C (1 / 0 / 0.5), renormalized over the three."""
    dev = next(model.parameters()).device
    letters = [tok.encode(c, add_special_tokens=False)[0] for c in "ABC"]
    values = torch.tensor([1.0, 0.0, 0.5])
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = [prompt_text(tok, REFLECTION.format(question=q, answer=a)) + ANSWER_PREFIX
                 for q, a in zip(prompts[start : start + batch_size], responses[start : start + batch_size],
                                 strict=True)]
        enc = _left_padded(tok, texts, max_length, dev)
        logits = model(**enc, logits_to_keep=1).logits[:, -1].float().cpu()
        p = torch.softmax(logits[:, letters], dim=-1)
        out.append((p * values).sum(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def agreement(samples: list[list[str]], responses: list[str], is_math: list[bool], embed=None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(s, r), each [n, k]: semantic agreement and exact match of each sample with the given response."""
    n, k = len(samples), len(samples[0]) if samples else 0
    s, r = np.zeros((n, k)), np.zeros((n, k))
    text_rows = [i for i in range(n) if not is_math[i]]
    for i in range(n):
        if is_math[i]:
            ref = final_answer(responses[i])
            hits = [ref is not None and final_answer(x) == ref for x in samples[i]]
            s[i] = r[i] = np.asarray(hits, dtype=np.float64)
        else:
            r[i] = [_norm(x) == _norm(responses[i]) for x in samples[i]]
    if text_rows:
        if embed is None:
            raise ValueError("free-text examples need an embedder for semantic agreement")
        vec_ref = embed([responses[i] for i in text_rows])
        vec_smp = embed([x for i in text_rows for x in samples[i]]).reshape(len(text_rows), k, -1)
        cos = np.einsum("nd,nkd->nk", vec_ref, vec_smp)
        s[text_rows] = np.clip(cos, 0.0, 1.0)
    return s, r


@register_scorer("clear_confidence")
class ClearConfidence(Scorer):
    """Columns: id, clear_confidence, observed_consistency, self_reflection, sample_agreement."""

    version = "3"  # 2: a chat row samples answers to its own turns; 3: answers from the slot decoder, seeded per answer
    model_params = ("embedder",)

    def __init__(self, k: int = 5, alpha: float = 0.8, beta: float = 0.7, temperature: float = 1.0,
                 max_new_tokens: int = 256, mode: Literal["auto", "math", "text"] = "auto", embedder: str = DEFAULT_EMBEDDER,
                 batch_size: int = 8):
        if mode not in ("auto", "math", "text"):
            raise ValueError(f"mode must be auto, math or text, got {mode!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1 (CLEAR compares k sampled answers with the given one), got {k}")
        self.k, self.alpha, self.beta, self.temperature = k, alpha, beta, temperature
        self.max_new_tokens, self.mode, self.embedder, self.batch_size = max_new_tokens, mode, embedder, batch_size

    def columns(self) -> list[str]:
        return ["clear_confidence", "observed_consistency", "self_reflection", "sample_agreement"]

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> pl.DataFrame:
        """CLEAR confidence of each given response from k sampled answers and the model's self-reflection."""
        k, alpha, beta, batch_size = self.k, self.alpha, self.beta, self.batch_size
        model, tok = ctx.model(), ctx.tokenizer()
        ids = examples.get_column("id").to_list()
        prompts, responses = examples.get_column("prompt").to_list(), examples.get_column("response").to_list()
        answers = examples.get_column("answer").to_list() if "answer" in examples.columns else [None] * len(ids)
        is_math = [self.mode == "math" or (self.mode == "auto" and a is not None) for a in answers]
        samples = sample_answers(model, tok, generation_prompts(examples), ids, k, self.temperature, self.max_new_tokens,
                                 ctx.max_length, batch_size, ctx.seed, progress=ctx.progress)

        def embed(texts: list[str]) -> np.ndarray:
            return embed_texts(texts, *ctx.embedder(self.embedder))

        s, r = agreement(samples, responses, is_math, embed)
        refl = self_reflection(model, tok, prompts, responses, 2 * ctx.max_length, batch_size)
        observed = combine(s, r, 0.0, alpha, beta=1.0)
        return pl.DataFrame({
            "id": ids,
            "clear_confidence": combine(s, r, refl, alpha, beta),
            "observed_consistency": observed,
            "self_reflection": refl,
            "sample_agreement": s.mean(-1),
        })


@register_scorer("token_confidence")
class TokenConfidence(Scorer):
    """Cheap confidence: mean probability of the response's own tokens under the base model (one forward)."""

    version = "2"
    seeded = False  # deterministic given its models

    def columns(self) -> list[str]:
        return ["token_confidence"]

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> pl.DataFrame:
        """Mean response-token probability per example, from one batched forward pass."""
        tok = ctx.tokenizer()
        encoded = encode_examples(tok, examples, ctx.max_length)
        nlls = token_nll(ctx.model(), encoded, max_tokens=ctx.max_tokens, pad_id=tok.pad_token_id or 0,
                         progress=ctx.progress, desc="token confidence", response_only=True)
        conf = []
        for enc, nll in zip(encoded, nlls, strict=True):
            mask = response_mask(enc)
            conf.append(float(np.exp(-nll[mask]).mean()) if mask.any() else float("nan"))
        return pl.DataFrame({"id": examples.get_column("id"), "token_confidence": conf})
