"""CLEAR's k sampled answers per prompt: the slot decoder (what the scorer uses) vs `transformers`' generate.

CLEAR scoring (`pipeline.scorers.clear.sample_answers`) samples its k answers per prompt with the slot
decoder (`pipeline.models.generate.sample_ids`): each answer is a row of its own with its own seed, rows
leave the batch as soon as they end (EOS or the token budget) and freed rows take the next answer, the
chat template's shared prefix is prefilled once. The former path (`_hf_sample_answers`) asks `generate`
for `num_return_sequences=k` on batches of prompts, which keeps finished rows in the batch until the
longest one ends. Both sample from softmax(logits / T) with no top-k or top-p.

Correctness check first: at temperature 1e-4 every one of the k slot-decoder answers must equal
`transformers`' greedy ids for its prompt (`identical=a/b`). Then both paths are timed in interleaved
rounds on the same prompts (sampled tokens differ between the paths, their distribution does not), so
machine load hits both alike; rates are generated tokens per second. A third variant switches one
lever off (`share_prompts=False`: each of a prompt's k copies prefilled on its own) to say what
sharing that prefill gives. Last line: `speedup=X tok_s=Y`.

Run: `python benchmarks/bench_clear_sampling.py [--n 16] [--k 3] [--max-new-tokens 160] [--rounds 2]`.
CUDA: device tensors are used throughout; not run (no GPU lent).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import torch

import pipeline.models.generate as generate_module
from pipeline.data import load_math
from pipeline.models.generate import sample_ids
from pipeline.models.loading import load_model, load_tokenizer, prompt_text
from pipeline.scorers.clear import _hf_sample_answers, sample_answers


@torch.inference_mode()
def hf_greedy(model, tok, texts: list[str], max_new_tokens: int) -> list[list[int]]:
    """`transformers`' greedy ids for each prompt, one prompt at a time (no padding), cut after EOS."""
    outs = []
    for text in texts:
        enc = tok(text, add_special_tokens=False, return_tensors="pt").to(next(model.parameters()).device)
        gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        ids = gen[0, enc["input_ids"].shape[1]:].tolist()
        outs.append(ids[: ids.index(tok.eos_token_id) + 1] if tok.eos_token_id in ids else ids)
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="prompts (gsm_symbolic test problems)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (CLEAR's default)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default=None, help="default: the offline SmolLM2-135M-Instruct")
    opts = ap.parse_args()
    path = opts.model or "smollm2-135m-instruct"  # the offline copy (`pipeline assets download`)
    tok, model = load_tokenizer(path), load_model(path).eval()  # bf16 on a GPU, fp32 on CPU
    rows = load_math("gsm_symbolic", n_train=1, n_val=1, n_test=opts.n, seed=0)["test"]
    prompts = rows.get_column("prompt").to_list()
    texts = [prompt_text(tok, p) for p in prompts]
    ids = rows.get_column("id").to_list()

    want = hf_greedy(model, tok, texts, opts.max_new_tokens)
    got = sample_ids(model, tok, [t for t in texts for _ in range(opts.k)], list(range(len(texts) * opts.k)), 1e-4,
                     opts.max_new_tokens, opts.batch_size * opts.k, 4096)
    same = sum(got[i * opts.k + j] == want[i] for i in range(len(texts)) for j in range(opts.k))
    print(f"greedy check: identical={same}/{len(texts) * opts.k} continuations at T=1e-4 equal transformers' greedy ids")

    def n_tokens(out: list[list[str]]) -> int:
        return sum(len(tok(a, add_special_tokens=False)["input_ids"]) for answers in out for a in answers)

    def before():
        return n_tokens(_hf_sample_answers(model, tok, texts, ids, opts.k, 1.0, opts.max_new_tokens, 4096,
                                           opts.batch_size, 0))

    def after():
        return n_tokens(sample_answers(model, tok, prompts, ids, opts.k, 1.0, opts.max_new_tokens, 4096,
                                       opts.batch_size, 0))

    def after_unshared():  # the same decoder with each copy of a prompt prefilled on its own (the lever off)
        slots = generate_module._greedy_slots
        generate_module._greedy_slots = functools.partial(slots, share_prompts=False)
        try:
            return after()
        finally:
            generate_module._greedy_slots = slots

    variants = [("before", before), ("after", after), ("after_unshared", after_unshared)]
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    tokens: dict[str, int] = {}
    for r in range(opts.rounds):
        for name, fn in (variants if r % 2 == 0 else variants[::-1]):
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
            print(f"round {r}: {name} {times[name][-1]:.1f}s, {tokens[name]} tokens, load {os.getloadavg()[0]:.1f}",
                  flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: tokens[k] / med[k] for k in med}
    print(f"before (generate, num_return_sequences={opts.k}): {med['before']:.1f}s, {rate['before']:.0f} tok/s; "
          f"after (slot decoder: a row per answer, rows leave as they end, freed rows refilled): {med['after']:.1f}s, {rate['after']:.0f} tok/s")
    print(f"after with each copy prefilled on its own (share_prompts=False): {med['after_unshared']:.1f}s, "
          f"{rate['after_unshared']:.0f} tok/s: sharing the prefill of the k copies gives "
          f"{rate['after'] / rate['after_unshared']:.2f}x")
    print(f"speedup={rate['after'] / rate['before']:.2f} tok_s={rate['after']:.0f}")


if __name__ == "__main__":
    main()
