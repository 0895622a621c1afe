"""CLEAR's k sampled answers per prompt: `transformers`' generate vs one prefill with k continuations (prototype).

CLEAR scoring (`pipeline.scorers.clear.sample_answers`) asks `generate` for `num_return_sequences=k`, which
copies each prompt k times before the prefill and keeps finished rows in the batch until the longest one
ends. The prototype here (`sampled_slots`, not yet used by the scorer) prefills each prompt once, repeats its
KV cache k times, samples each continuation from the same distribution (softmax(logits / T), no top-k/top-p,
as the scorer asks) and drops rows from the batch as soon as they end (EOS or the token budget).

Correctness check first: with argmax instead of sampling, every one of the k continuations must equal
`transformers`' greedy ids for its prompt (`identical=a/b`). Then both paths are timed in interleaved
rounds on the same prompts (sampled tokens differ between the paths, their distribution does not); the
ratio is taken in one run, so machine load hits both alike. Last line: `speedup=X tok_s=Y`.

Run: `python benchmarks/bench_clear_sampling.py [--n 16] [--k 3] [--max-new-tokens 160] [--rounds 2]`.
CUDA: device tensors are used throughout; not run (no GPU lent).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pipeline.data import load_math
from pipeline.models.generate import cache_kwarg
from pipeline.models.loading import load_model, load_tokenizer, prompt_text
from pipeline.scorers.clear import sample_answers


@torch.inference_mode()
def sampled_slots(model, tok, texts: list[str], k: int, max_new_tokens: int, temperature: float, seed: int,
                  greedy: bool = False) -> list[list[int]]:
    """k continuations of each prompt (row i*k + j is prompt i's j-th): one prefill, cache repeated k times,
    finished rows dropped at once. `greedy` takes the argmax (the correctness check)."""
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    prompts = tok(texts, add_special_tokens=False)["input_ids"]
    rows, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((rows, width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache, name = DynamicCache(config=model.config), cache_kwarg(model)
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev), use_cache=True,
                logits_to_keep=1, **{name: cache})
    logits = out.logits[:, -1].repeat_interleave(k, 0)
    cache.batch_repeat_interleave(k)
    mask, last = mask.repeat_interleave(k, 0).to(dev), positions[:, -1].repeat_interleave(k, 0).to(dev)
    alive = torch.arange(rows * k)
    outs: list[list[int]] = [[] for _ in range(rows * k)]
    gen = torch.Generator(device=dev).manual_seed(seed)
    for step in range(max_new_tokens):
        if greedy:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)[:, 0]
        for row, token in zip(alive.tolist(), nxt.tolist(), strict=True):
            outs[row].append(token)
        keep = nxt != tok.eos_token_id
        if step == max_new_tokens - 1 or not keep.any():
            break
        if not keep.all():
            idx = keep.nonzero()[:, 0]
            cache.batch_select_indices(idx)
            alive, nxt, mask, last = alive[idx.cpu()], nxt[idx], mask[idx], last[idx]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        last = last + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], use_cache=True,
                    **{name: cache})
        logits = out.logits[:, -1]
    return outs


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
    got = sampled_slots(model, tok, texts, opts.k, opts.max_new_tokens, 1.0, 0, greedy=True)
    same = sum(got[i * opts.k + j] == want[i] for i in range(len(texts)) for j in range(opts.k))
    print(f"greedy check: identical={same}/{len(texts) * opts.k} continuations equal transformers' greedy ids")

    def before():
        out = sample_answers(model, tok, prompts, ids, opts.k, 1.0, opts.max_new_tokens, 4096, opts.batch_size, 0)
        return sum(len(tok(a, add_special_tokens=False)["input_ids"]) for answers in out for a in answers)

    def after():
        total = 0
        for start in range(0, len(texts), opts.batch_size):
            out = sampled_slots(model, tok, texts[start:start + opts.batch_size], opts.k, opts.max_new_tokens, 1.0, 0)
            total += sum(len(o) for o in out)
        return total

    times: dict[str, list[float]] = {"before": [], "after": []}
    tokens: dict[str, int] = {}
    for r in range(opts.rounds):
        for name, fn in ((("before", before), ("after", after)) if r % 2 == 0 else (("after", after), ("before", before))):
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
            print(f"round {r}: {name} {times[name][-1]:.1f}s, {tokens[name]} tokens, load {os.getloadavg()[0]:.1f}",
                  flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: tokens[k] / med[k] for k in med}
    print(f"before (generate, num_return_sequences={opts.k}): {med['before']:.1f}s, {rate['before']:.0f} tok/s; "
          f"after (one prefill, k continuations, rows dropped as they end): {med['after']:.1f}s, {rate['after']:.0f} tok/s")
    print(f"speedup={rate['after'] / rate['before']:.2f} tok_s={rate['after']:.0f}")


if __name__ == "__main__":
    main()
