"""Tokens/s of the perplexity scorer vs a naive per-example HF loop vs the machine's matmul ceiling.

All three are measured in the same run on the same examples. Efficiency = tok/s x 2 x params /
ceiling FLOP rate (the ceiling is a large fp32 matmul on CPU, bf16 on CUDA). On CUDA it also
reports `mfu` for a random-initialized ~0.5B Llama config in bf16 (that path is untested on CPU-only
machines). Run: `python benchmarks/bench_scoring.py [--n 64] [--max-tokens 8192]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from pipeline.data import load_math
from pipeline.models.assets import smollm2_dir
from pipeline.models.engine import default_max_tokens
from pipeline.models.loading import (
    default_dtype,
    device,
    encode_examples,
    load_model,
    load_tokenizer,
)
from pipeline.scorers import ScoreContext, get_scorer


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_ceiling(n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of a large square matmul in the scoring dtype: the machine's practical ceiling."""
    dev, dtype = device(), default_dtype()
    if dev.type == "cuda":
        n = 8192
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(2):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start)


@torch.inference_mode()
def naive_loop(model, encoded: list[dict]) -> float:
    """Seconds for one `model(input_ids, labels=...)` call per example (full logits)."""
    dev = next(model.parameters()).device
    sync()
    start = time.perf_counter()
    for enc in encoded:
        ids = torch.tensor([enc["input_ids"]], device=dev)
        labels = ids.masked_fill(torch.tensor([enc["completion_mask"]], device=dev) == 0, -100)
        model(input_ids=ids, labels=labels).loss.item()
    sync()
    return time.perf_counter() - start


def scorer_run(model_name: str, model, examples, max_tokens: int | None, **params) -> float:
    """Seconds for the registered perplexity scorer over all examples (model already loaded)."""
    ctx = ScoreContext(model_name=model_name, max_tokens=max_tokens, progress=False)
    ctx._cache["model"] = model
    sync()
    start = time.perf_counter()
    get_scorer("perplexity", **params)(examples, ctx)
    sync()
    return time.perf_counter() - start


def mfu_cuda(max_tokens: int | None, ceiling: float) -> float:
    """Model FLOP utilization of the engine on a random ~0.5B Llama in bf16 (CUDA only)."""
    from transformers import AutoConfig, LlamaForCausalLM

    from pipeline.models.engine import token_nll

    config = AutoConfig.from_pretrained(smollm2_dir())
    config.update({"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 64})
    model = LlamaForCausalLM(config).to(device=device(), dtype=torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    encoded = [{"input_ids": torch.randint(0, config.vocab_size, (int(n),), generator=g).tolist()}
               for n in torch.randint(128, 512, (512,), generator=g)]
    token_nll(model, encoded[:16], max_tokens=max_tokens, progress=False)
    sync()
    start = time.perf_counter()
    token_nll(model, encoded, max_tokens=max_tokens, progress=False)
    sync()
    tokens = sum(len(e["input_ids"]) for e in encoded)
    return tokens / (time.perf_counter() - start) * 2 * params / ceiling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    max_tokens = args.max_tokens  # None: the engine's device default
    model_name = str(smollm2_dir())
    tok = load_tokenizer(model_name)
    model = load_model(model_name)
    params = sum(p.numel() for p in model.parameters())
    examples = load_math("gsm_symbolic", n_train=args.n, n_val=1, n_test=1)["train"]
    encoded = encode_examples(tok, examples, ScoreContext().max_length)
    tokens = sum(len(e["input_ids"]) for e in encoded)

    dev = device()
    naive_loop(model, encoded[:2])  # warm-up
    scorer_run(model_name, model, examples.head(4), max_tokens)
    ceiling = matmul_ceiling()
    t_naive = naive_loop(model, encoded)
    t_ours = scorer_run(model_name, model, examples, max_tokens)
    t_full = scorer_run(model_name, model, examples, max_tokens, full_text=True)
    ceiling = max(ceiling, matmul_ceiling())  # take the better of two ceiling measurements

    naive_tps, ours_tps, full_tps = tokens / t_naive, tokens / t_ours, tokens / t_full
    ceiling_tps = ceiling / (2 * params)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {dev.type} {name}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"dtype {default_dtype()}, torch {torch.__version__}, load average after run {load}")
    print(f"model: SmolLM2-135M-Instruct ({params / 1e6:.1f}M params), {len(encoded)} gsm_symbolic examples, "
          f"{tokens} tokens, max_tokens={max_tokens or default_max_tokens(dev)}")
    print(f"ceiling: {ceiling / 1e9:.1f} GFLOP/s = {ceiling_tps:,.0f} tok/s at 2*params FLOP/token")
    print(f"naive per-example loop: {naive_tps:,.0f} tok/s ({naive_tps / ceiling_tps:.2f} of ceiling)")
    print(f"perplexity scorer:      {ours_tps:,.0f} tok/s ({ours_tps / ceiling_tps:.2f} of ceiling)"
          " [default: LM head on response tokens only]")
    print(f"  with full_text=true:  {full_tps:,.0f} tok/s ({full_tps / ceiling_tps:.2f} of ceiling, "
          f"speedup {full_tps / naive_tps:.2f}) [LM head on every token]")
    line = f"speedup={ours_tps / naive_tps:.2f} efficiency={ours_tps / ceiling_tps:.2f}"
    if dev.type == "cuda":
        line += f" mfu={mfu_cuda(max_tokens, ceiling):.2f}"
    print(line)


if __name__ == "__main__":
    main()
