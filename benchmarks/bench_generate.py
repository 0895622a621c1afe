"""Greedy generation of the evaluation stage: tok/s against the machine's decode limit, same run.

Evaluation (`pipeline.evaluation.heldout.math_accuracy`) generates greedy answers for test prompts
with `pipeline.models.generate`; this times that call (`generate_ids`, which `generate` decodes to
text) on real gsm_symbolic test prompts with SmolLM2-135M-Instruct as loaded for evaluation, and
the former path (`transformers`' `generate` on fixed left-padded batches, `_hf_generate`) in the
same process, in interleaved rounds so a varying machine load hits both alike.

The limit is measured in the same rounds: a decode step of `rows` rows (the batch size evaluation
uses) must read every weight once (weight bytes / memory bandwidth, bandwidth = best of a large
tensor sum and copy) and do 2 x params x rows FLOPs (/ the matmul ceiling of bench_scoring.py,
best of 1 thread and the process's thread count); limit tok/s = rows / max of the two times.
Tokens are real generated tokens (up to and including EOS, not the padding after it); time is
the whole call (tokenization, prompt prefill and decode), so prefill counts against us.

Last line: `tok_s=X limit_ratio=Y` (medians over rounds). `--levers` times the decode loop's
levers one by one instead; `--compile` times torch.compile of the decode step (transformers' static
KV cache with its automatic compilation, switched on for the CPU) against the same path eager and
against ours, with the compile time and whether greedy ids stay identical; `--orientation` times every
linear computed as `W @ x.T` instead of `nn.Linear`'s `x @ W.T` (GEMMs alone by rows, then whole calls). CUDA: the
synchronizations and device tensors are written for it but this script has not been run on a GPU
(none was lent to these sessions).
Run: `python benchmarks/bench_generate.py [--n 24] [--max-new-tokens 160] [--rounds 2]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date

import torch
from bench_scoring import matmul_ceiling, sync  # this folder is on sys.path when run as a script

from pipeline.core.config import EvalSection
from pipeline.data import load_math
from pipeline.models.generate import _greedy_slots, _hf_generate, generate_ids
from pipeline.models.loading import default_dtype, device, load_model, load_tokenizer, prompt_text


def decode_weights(model) -> tuple[int, int]:
    """(bytes, params) a decode step reads and multiplies with: every weight, except an untied input
    embedding (a step looks up one row of it per sequence)."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    skip = set() if emb.data_ptr() == head.data_ptr() else {emb.data_ptr()}
    params = [p for p in model.parameters() if p.data_ptr() not in skip]
    return sum(p.numel() * p.element_size() for p in params), sum(p.numel() for p in params)


def bandwidth(mbytes: int = 512, reps: int = 3) -> float:
    """Bytes/s of the faster of a sum (read) and a copy (read + write) over a large tensor."""
    x = torch.ones(mbytes * 2**20 // 4, device=device())
    y = torch.empty_like(x)
    best = 0.0
    for op, moved in ((lambda: x.sum(), 1), (lambda: y.copy_(x), 2)):
        op()
        sync()
        for _ in range(reps):
            start = time.perf_counter()
            op()
            sync()
            best = max(best, moved * x.numel() * 4 / (time.perf_counter() - start))
    return best


@torch.inference_mode()
def gemm_step_seconds(model, rows: int, reps: int = 5) -> float:
    """Seconds of one decode step's matrix products alone at `rows` rows: every `nn.Linear` of the
    model (LM head included) applied once to a [rows, in_features] input, as eager torch runs them.

    This is the part of a step no decode loop removes; its time over the limit's step time bounds
    `limit_ratio` for eager kernels (small-M GEMMs run below the large-matmul ceiling)."""
    dev, dtype = device(), default_dtype()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(rows, m.in_features, device=dev, dtype=dtype) for m in linears]
    best = float("inf")
    for _ in range(reps + 1):  # the first pass warms up
        sync()
        start = time.perf_counter()
        for m, x in zip(linears, inputs, strict=True):
            m(x)
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def best_over_threads(fn):
    """fn() at the process's thread count and at 1 thread (CPU), the larger result."""
    saved = torch.get_num_threads()
    results = [fn()]
    if device().type == "cpu" and saved > 1:
        torch.set_num_threads(1)
        try:
            results.append(fn())
        finally:
            torch.set_num_threads(saved)
    return max(results)


def timed(fn):
    """(fn(), wall seconds, this process's CPU seconds)."""
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return out, time.perf_counter() - start, time.process_time() - cpu


def with_threads(threads: int, fn):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(saved)


def count(tokens: list[list[int]]) -> int:
    return sum(len(t) for t in tokens)


def levers(model, tok, texts, args, rows) -> None:
    """The decode loop's levers switched on one at a time (all at 1 thread unless said), interleaved."""
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    n, b = args.max_new_tokens, rows
    fixed = dict(refill=False, compact=False, share_prefix=False, prefill_tokens=10**9)
    variants = {
        "transformers generate, fixed batches (before), 1 thread": lambda: with_threads(
            1, lambda: _hf_generate(model, tok, texts, n, b, False)),
        "transformers generate + static cache, 1 thread": lambda: with_threads(1, lambda: static_hf(model, tok, texts, n, b)),
        "slot loop, fixed batches, one prefill per batch, 1 thread": lambda: _greedy_slots(
            model, ids, n, b, eos, pad, threads=1, **fixed),
        "+ drop finished rows": lambda: _greedy_slots(model, ids, n, b, eos, pad, threads=1, **{**fixed, "compact": True}),
        "+ refill freed rows": lambda: _greedy_slots(
            model, ids, n, b, eos, pad, threads=1, **{**fixed, "compact": True, "refill": True}),
        "+ shared prompt prefix": lambda: _greedy_slots(
            model, ids, n, b, eos, pad, threads=1, refill=True, compact=True, share_prefix=True, prefill_tokens=10**9),
        "+ length-chunked prefill (= ours at 1 thread)": lambda: _greedy_slots(model, ids, n, b, eos, pad, threads=1),
        "ours (default: the process's threads)": lambda: _greedy_slots(model, ids, n, b, eos, pad),
        "ours, threads=\"auto\"": lambda: _greedy_slots(model, ids, n, b, eos, pad, threads="auto"),
        f"ours, one batch of {len(ids)}": lambda: _greedy_slots(model, ids, n, len(ids), eos, pad),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    tokens: dict[str, int] = {}
    for r in range(args.rounds):
        names = list(variants)
        for name in names[r % len(names):] + names[: r % len(names)]:
            out, seconds, _ = timed(variants[name])
            times[name].append(seconds)
            tokens[name] = count(out)
            print(f"  round {r}: {name}: {seconds:.1f}s, {tokens[name]} tokens, load {os.getloadavg()[0]:.1f}", flush=True)
    base = statistics.median(times[names[0]])
    print(f"{'variant':62s} {'median_s':>9s} {'tok/s':>7s} {'vs first':>8s}")
    for name in variants:
        med = statistics.median(times[name])
        print(f"{name:62s} {med:9.1f} {tokens[name] / med:7.1f} {base / med:8.2f}")


def weight_first(model, on: bool) -> None:
    """Switch every `nn.Linear` of `model` to compute `(W @ x.T).T` instead of `x @ W.T` (on), or back."""
    import types

    def forward(self, x):
        y = torch.mm(self.weight, x.reshape(-1, x.shape[-1]).T).T
        return (y if self.bias is None else y + self.bias).reshape(*x.shape[:-1], self.out_features)

    for m in model.modules():
        if type(m) is torch.nn.Linear:
            if on:
                m.forward = types.MethodType(forward, m)
            else:
                m.__dict__.pop("forward", None)


@torch.inference_mode()
def orientation(model, tok, prompts, args) -> None:
    """The linears' product as `W @ x.T` against `nn.Linear`'s `x @ W.T`: GEMMs alone by row count, then
    whole generate calls (interleaved rounds) with every linear switched, and whether greedy ids change."""
    for rows in (1, 2, 4, 8, 16, 24, 32, 48, 512, 1024):
        plain = gemm_step_seconds(model, rows)
        weight_first(model, True)
        try:
            first = gemm_step_seconds(model, rows)
        finally:
            weight_first(model, False)
        print(f"  GEMMs alone at {rows:4d} rows: x @ W.T {plain * 1e3:7.1f} ms, W @ x.T {first * 1e3:7.1f} ms, "
              f"{plain / first:.2f}x", flush=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    outs: dict[bool, list[list[int]]] = {}
    for r in range(args.rounds):
        for on in (False, True) if r % 2 == 0 else (True, False):
            weight_first(model, on)
            try:
                outs[on], s, _ = timed(lambda: generate_ids(model, tok, prompts, args.max_new_tokens,
                                                            args.batch_size, progress=False))
            finally:
                weight_first(model, False)
            times[on].append(s)
            print(f"  round {r}: {'W @ x.T' if on else 'x @ W.T'} {s:.1f}s; load {os.getloadavg()[0]:.1f}", flush=True)
    same = sum(a == b for a, b in zip(outs[True], outs[False], strict=True))
    ratio = statistics.median(times[False]) / statistics.median(times[True])
    print(f"whole generate call: W @ x.T {ratio:.2f}x of x @ W.T (medians); greedy ids identical on {same}/{len(prompts)}")


def static_hf(model, tok, texts, max_new_tokens, batch_size, compile_mode: str | None = None):
    """`_hf_generate` with `cache_implementation="static"` (the lever the issue names); with `compile_mode`,
    transformers compiles the decode step (`CompileConfig`, which by default compiles only on GPUs: the
    private `_compile_all_devices` switch turns it on for the CPU)."""
    from transformers import CompileConfig

    original = model.generate
    extra: dict = {"disable_compile": True}
    if compile_mode:
        config = CompileConfig(fullgraph=False, mode=compile_mode)
        config._compile_all_devices = True
        extra = {"compile_config": config}

    def patched(*a, **kw):
        return original(*a, cache_implementation="static", **extra, **kw)

    model.generate = patched
    try:
        return _hf_generate(model, tok, texts, max_new_tokens, batch_size, False)
    finally:
        del model.generate


def compile_levers(model, tok, prompts, texts, args, rows) -> None:
    """torch.compile of the decode step (static KV cache) against the same path eager and ours. Each variant
    runs apart (a compiled mode keeps its graphs only until the next `torch._dynamo.reset`): a first call
    (compilation, for the compiled modes) timed on its own, then `--rounds` timed calls."""
    n = args.max_new_tokens
    variants = {
        "ours (slot loop, eager)": lambda: generate_ids(model, tok, prompts, n, args.batch_size, progress=False),
        "transformers generate + static cache, eager": lambda: static_hf(model, tok, texts, n, rows),
    }
    for mode in ("default", "max-autotune-no-cudagraphs"):
        variants[f"transformers generate + static cache + compile ({mode})"] = (
            lambda mode=mode: static_hf(model, tok, texts, n, rows, compile_mode=mode))
    outputs: dict[str, list[list[int]]] = {}
    times: dict[str, list[float]] = {}
    for name, fn in variants.items():
        torch._dynamo.reset()
        outputs[name], first, _ = timed(fn)
        times[name] = [timed(fn)[1] for _ in range(args.rounds)]
        print(f"  {name}: first call {first:.1f}s, then {' '.join(f'{t:.1f}s' for t in times[name])}; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    ours = outputs["ours (slot loop, eager)"]
    base = statistics.median(times["ours (slot loop, eager)"])
    print(f"{'variant':62s} {'median_s':>9s} {'tok/s':>7s} {'vs ours':>8s} {'ids = ours':>10s}")
    for name, out in outputs.items():
        med = statistics.median(times[name])
        same = sum(a == b for a, b in zip(out, ours, strict=True))
        print(f"{name:62s} {med:9.1f} {count(out) / med:7.1f} {base / med:8.2f} {same:>6d}/{len(ours)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=EvalSection().n_generate)
    ap.add_argument("--max-new-tokens", type=int, default=EvalSection().max_new_tokens)
    ap.add_argument("--batch-size", type=int, default=EvalSection().batch_size)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-before", action="store_true", help="skip the former path (slow under load)")
    ap.add_argument("--levers", action="store_true", help="time the decode loop's levers one by one")
    ap.add_argument("--compile", action="store_true", help="time torch.compile of the decode step (static cache)")
    ap.add_argument("--orientation", action="store_true", help="time the linears as W @ x.T against x @ W.T")
    args = ap.parse_args()

    test = load_math("gsm_symbolic", 96, 16, 48, 0)["test"]
    prompts = test.head(args.n).get_column("prompt").to_list()
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct")
    texts = [prompt_text(tok, p) for p in prompts]
    rows = min(args.batch_size, len(prompts))
    wbytes, wparams = decode_weights(model)
    dev = device()
    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"machine: {dev.type} {name}, cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
          f"dtype {default_dtype()}, torch {torch.__version__}, {date.today()}, load at start "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"task: {len(prompts)} gsm_symbolic test prompts, max_new_tokens {args.max_new_tokens}, batch size {rows}; "
          f"decode step reads {wbytes / 1e6:.0f} MB of weights, {2 * wparams * rows / 1e9:.2f} GFLOP at {rows} rows")
    generate_ids(model, tok, prompts[:2], 4, rows, progress=False)  # warm-up
    if args.levers:
        levers(model, tok, texts, args, rows)
        return
    if args.compile:
        compile_levers(model, tok, prompts, texts, args, rows)
        return
    if args.orientation:
        orientation(model, tok, prompts, args)
        return

    runs = {"ours": lambda: generate_ids(model, tok, prompts, args.max_new_tokens, args.batch_size, progress=False)}
    if not args.no_before:
        runs["before"] = lambda: _hf_generate(model, tok, texts, args.max_new_tokens, args.batch_size, False)
        if dev.type == "cpu" and torch.get_num_threads() > 1:
            runs["before, 1 thread"] = lambda: with_threads(
                1, lambda: _hf_generate(model, tok, texts, args.max_new_tokens, args.batch_size, False))
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, list[list[int]]] = {}
    limits, ratios, loads, gemm_caps = [], [], [], []
    for r in range(args.rounds):
        ceiling = best_over_threads(matmul_ceiling)
        bw = best_over_threads(bandwidth)
        step = max(wbytes / bw, 2 * wparams * rows / ceiling)
        limit = rows / step
        gemm_caps.append(step / gemm_step_seconds(model, rows))
        names = list(runs)
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            outputs[name], s, c = timed(runs[name])
            seconds[name].append(s)
            cpu[name].append(c)
        tok_s = count(outputs["ours"]) / seconds["ours"][-1]
        limits.append(limit)
        ratios.append(tok_s / limit)
        loads.append(os.getloadavg()[0])
        print(f"round {r}: ceiling {ceiling / 1e9:.0f} GFLOP/s, bandwidth {bw / 1e9:.1f} GB/s -> step "
              f"{step * 1e3:.1f} ms ({'memory' if wbytes / bw > 2 * wparams * rows / ceiling else 'compute'}-bound), "
              f"limit {limit:.0f} tok/s; GEMMs alone at {rows} rows reach {gemm_caps[-1]:.2f} of it; "
              + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in seconds.items())
              + f"; load {loads[-1]:.1f}", flush=True)

    tokens = count(outputs["ours"])
    print(f"{'path':24s} {'median_s':>9s} {'tokens':>7s} {'tok/s':>7s} {'of limit':>8s} {'cpu_s':>7s} {'cpu/wall':>8s}")
    limit = statistics.median(limits)
    for k, v in seconds.items():
        med, med_cpu = statistics.median(v), statistics.median(cpu[k])
        print(f"{k:24s} {med:9.1f} {count(outputs[k]):7d} {count(outputs[k]) / med:7.1f} "
              f"{count(outputs[k]) / med / limit:8.2f} {med_cpu:7.1f} {med_cpu / med:8.2f}")
    print("cpu/wall: CPU seconds this process got per wall second (threads x share of a core); the limit's "
          "short ceiling and bandwidth bursts see a whole core, long runs see their share under load")
    if "before" in outputs:
        same = sum(a == b for a, b in zip(outputs["ours"], outputs["before"], strict=True))
        print(f"greedy token ids identical to before on {same}/{len(prompts)} prompts; "
              f"speedup {statistics.median(seconds['before']) / statistics.median(seconds['ours']):.2f}x")
    print(f"load average per round: {' '.join(f'{x:.1f}' for x in loads)}; at end "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"one decode step's GEMMs alone, eager, at {rows} full rows: {statistics.median(gemm_caps):.2f} of the limit "
          "(no loop can beat this with these kernels; rows that finish early lower it further)")
    tok_s = statistics.median(tokens / s for s in seconds["ours"])
    print(f"tok_s={tok_s:.1f} limit_ratio={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
