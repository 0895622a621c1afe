"""Training-step time and peak memory of each token loss vs TRL's plain `loss_type="nll"` SFTTrainer.

Each variant (TRL's nll baseline, then each of our losses through `TokenLossSFTTrainer`) gets its
own trainer on the same synthetic batch (random token ids; the first quarter of each row is prompt;
random `token_label`, `ref_nll`, `example_weight` columns so every loss does its real work; ASFT
gets a frozen copy of the starting weights as its reference, whose bytes count in its memory). The
measured step is what the loss choice touches: `get_batch_samples` (window counts) +
`compute_loss` (fused forward + loss) + `backward`. The AdamW update is identical for every
variant and is left out, which makes the ratios stricter, not looser.

- Time: all variants in ONE process on one model, interleaved round-robin (baseline, ce, dft, ...,
  then again), median over `--steps` rounds after `--warmup` rounds. Interleaving matters on a
  shared machine: load from other processes drifts over minutes and hits every variant alike.
  `min_ratio` (fastest round / baseline's fastest round) is printed beside it: noise only adds time,
  so it is the steadier estimate when the baseline's own rounds spread by several percent.
- Peak memory (`mem_ratio`): parameter bytes + the peak of tensor memory allocated during one
  measured step, from the torch profiler's allocation events (exact and repeatable on CPU);
  `torch.cuda.max_memory_allocated` on CUDA. `--mem-repeats N` adds peak RSS of N fresh
  processes per variant (minimum kept, `MALLOC_ARENA_MAX=1`): RSS moves by tens of MiB between
  identical processes, so it is a coarse cross-check only.

CPU: SmolLM2-135M (`pipeline.models.assets.smollm2_dir()`), fp32, batch 4 x 256 by default. CUDA: a
random-initialized Qwen2.5-0.5B-like config in bf16 at sequence length 2048 (this path has not
been run: no GPU was available when it was written). Prints a table and a last line
`worst_time_ratio=X worst_mem_ratio=Y`. Run: `python benchmarks/bench_losses.py [--steps 3]`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

VARIANTS: dict[str, dict] = {
    "trl_nll": {},
    "ce": {"loss": "ce"},
    "dft": {"loss": "dft"},
    "talr": {"loss": "talr"},
    "forgetting": {"loss": "forgetting"},
    "token_cleaning": {"loss": "token_cleaning"},
    "rho1": {"loss": "rho1"},
    "eaft": {"loss": "eaft"},  # goal: <= 1.10x time, <= 1.02x peak memory
    "asft": {"loss": "asft"},  # goal: <= 2.2x time (a second forward); memory adds the frozen reference's weights
    "ce+example_weight": {"loss": "ce", "weights": True},
    "ce+masked_thought": {"loss": "ce", "masked_thought": 0.2},
}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_model():
    """SmolLM2-135M fp32 on CPU; a random Qwen2.5-0.5B-like model in bf16 on CUDA."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models.assets import smollm2_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not torch.cuda.is_available():
        return AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32), tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                         tie_word_embeddings=True, torch_dtype="bfloat16")
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(torch.bfloat16).cuda(), tokenizer


def synthetic_dataset(n: int, seq: int, vocab: int, weights: bool):
    """n rows of `seq` random tokens; first quarter prompt; random per-token columns."""
    import datasets

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    prompt = seq // 4
    cols = {
        "input_ids": ids.tolist(),
        "completion_mask": [[0] * prompt + [1] * (seq - prompt)] * n,
        "token_label": torch.randint(-1, 2, (n, seq), generator=g).tolist(),
        "ref_nll": (torch.rand(n, seq, generator=g) * 8).tolist(),
    }
    if weights:
        cols["example_weight"] = (torch.rand(n, generator=g) + 0.5).tolist()
    return datasets.Dataset.from_dict(cols)


def make_trainer(name: str, model, tokenizer, dataset, batch: int, seq: int):
    """TRL's plain SFTTrainer for the baseline, our TokenLossSFTTrainer for every loss variant."""
    from trl import SFTConfig, SFTTrainer

    from pipeline.losses import MaskedThought, get_loss
    from pipeline.losses.base import REFERENCE_KL
    from pipeline.training.trainer import TokenLossSFTTrainer

    spec = VARIANTS[name]
    on_gpu = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_losses_"), max_steps=10, per_device_train_batch_size=batch,
        gradient_checkpointing=False, max_length=seq, completion_only_loss=True, bf16=on_gpu, use_cpu=not on_gpu,
        save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0,
        shuffle_dataset=False, remove_unused_columns=False,
        loss_type=get_loss(spec.get("loss", "ce")).trl_loss_type,
    )
    if name == "trl_nll":
        dataset = dataset.remove_columns(["token_label", "ref_nll", "example_weight"])
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    if not spec.get("weights"):
        dataset = dataset.remove_columns(["example_weight"])
    masked = None
    if spec.get("masked_thought"):
        masked = MaskedThought(p=spec["masked_thought"], vocab_size=len(tokenizer), seed=0)
    loss = get_loss(spec["loss"])
    # a loss anchored to the base (ASFT) gets a frozen copy of the starting weights, as a full fine-tune has
    base = copy.deepcopy(model) if REFERENCE_KL in loss.head_stats else None
    return TokenLossSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                               loss=loss, masked_thought=masked, base_model=base)


def measured_step(trainer, batch: dict) -> float:
    """Seconds for window counting + fused forward + loss + backward on one batch."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    sync()
    start = time.perf_counter()
    samples, n_items = trainer.get_batch_samples(iter([dict(batch)]), 1, trainer.args.device)
    loss = trainer.compute_loss(model, trainer._prepare_inputs(samples[0]), num_items_in_batch=n_items)
    loss.backward()
    sync()
    return time.perf_counter() - start


def setup(names: list[str], batch: int, seq: int):
    """One model, one synthetic dataset, a trainer and a collated batch per variant."""
    model, tokenizer = build_model()
    model.train()
    vocab = min(len(tokenizer), model.config.vocab_size)
    dataset = synthetic_dataset(batch, seq, vocab, weights=True)
    trainers = {n: make_trainer(n, model, tokenizer, dataset, batch, seq) for n in names}
    for t in trainers.values():
        t.state.max_steps, t.state.global_step = 100, 10
    batches = {n: t.data_collator([t.train_dataset[i] for i in range(batch)]) for n, t in trainers.items()}
    return trainers, batches


def allocated_peak(trainer, batch: dict) -> int:
    """Parameter bytes + the peak of tensor memory allocated during one measured step (activations,
    gradients, temporaries), from the profiler's allocation events: exact and repeatable on CPU,
    where peak RSS moves in allocator-sized steps. On CUDA, `torch.cuda.max_memory_allocated`."""
    from torch.profiler import ProfilerActivity, profile

    reference = getattr(trainer, "reference_model", None)  # ASFT's frozen copy of the base counts too
    params = sum(p.numel() * p.element_size() for m in (trainer.model, reference) if m is not None
                 for p in m.parameters())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        measured_step(trainer, batch)
        return torch.cuda.max_memory_allocated()
    trainer.model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        measured_step(trainer, batch)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return params + peak


def time_worker(names: list[str], batch: int, seq: int, warmup: int, steps: int) -> dict:
    """Interleaved round-robin timing of all variants in this process, then each one's allocated peak."""
    trainers, batches = setup(names, batch, seq)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + steps):
        for n in names:
            dt = measured_step(trainers[n], batches[n])
            if r >= warmup:
                times[n].append(dt)
    return {"times": times, "alloc": {n: allocated_peak(trainers[n], batches[n]) for n in names}}


def mem_worker(name: str, batch: int, seq: int) -> int:
    """Peak memory (bytes) of loading plus one measured step of one variant, in a fresh process."""
    trainers, batches = setup([name], batch, seq)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    measured_step(trainers[name], batches[name])
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_worker(kind: str, names: list[str], opts: argparse.Namespace):
    """Run `--worker kind` in a fresh subprocess and return its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--worker", kind, "--variants", ",".join(names), "--out", out,
           "--threads", str(opts.threads), "--batch", str(opts.batch), "--seq", str(opts.seq), "--warmup", str(opts.warmup), "--steps", str(opts.steps)]
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}  # fewer glibc arenas: less RSS noise between processes
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=None if opts.verbose else subprocess.DEVNULL)
    with open(out) as fh:
        result = json.load(fh)
    os.unlink(out)
    return result


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=None, help="default 256 on CPU, 2048 on CUDA")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads on CPU; use 1 on a machine shared with other jobs (less spin-wait)")
    ap.add_argument("--mem-repeats", type=int, default=0,
                    help="also measure peak RSS in this many fresh processes per variant (minimum kept); 0 = off")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--worker", choices=["time", "mem"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    opts.seq = opts.seq or (2048 if torch.cuda.is_available() else 256)
    names = ["trl_nll", *[n for n in opts.variants.split(",") if n != "trl_nll"]]
    if opts.worker:
        torch.set_num_threads(opts.threads)
        if opts.worker == "time":
            result = time_worker(names, opts.batch, opts.seq, opts.warmup, opts.steps)
        else:
            result = mem_worker(names[-1], opts.batch, opts.seq)
        with open(opts.out, "w") as fh:
            json.dump(result, fh)
        return

    started = time.time()
    result = run_worker("time", names, opts)
    times, peaks = result["times"], result["alloc"]
    rss = ({n: min(run_worker("mem", [n], opts) for _ in range(opts.mem_repeats)) for n in names}
           if opts.mem_repeats > 0 else {})
    base_t, base_m = statistics.median(times["trl_nll"]), peaks["trl_nll"]
    print(f"# {machine()}, {opts.threads} torch thread(s); batch {opts.batch} x {opts.seq}; median of {opts.steps} interleaved rounds "
          f"after {opts.warmup} warmup")
    print(f"{'variant':<20}{'step_s':>9}{'time_ratio':>12}{'min_ratio':>11}{'alloc_MiB':>10}{'mem_ratio':>11}"
          + (f"{'rss_MiB':>9}{'rss_ratio':>10}" if rss else ""))
    worst_t = worst_m = 0.0
    for n in names:
        t, m = statistics.median(times[n]), peaks[n]
        extra = f"{rss[n] / 2**20:>9.0f}{rss[n] / rss['trl_nll']:>10.3f}" if rss else ""
        tmin = min(times[n]) / min(times["trl_nll"])
        print(f"{n:<20}{t:>9.3f}{t / base_t:>12.3f}{tmin:>11.3f}{m / 2**20:>10.1f}{m / base_m:>11.4f}{extra}")
        if n != "trl_nll":
            worst_t, worst_m = max(worst_t, t / base_t), max(worst_m, m / base_m)
    spread = max(times["trl_nll"]) / min(times["trl_nll"])
    print(f"# baseline max/min step time over rounds: {spread:.3f}; total {time.time() - started:.0f} s")
    print(f"worst_time_ratio={worst_t:.3f} worst_mem_ratio={worst_m:.3f}")


if __name__ == "__main__":
    main()
