"""Training-step throughput of our `TokenLossSFTTrainer` vs a plain Hugging Face loop vs the matmul ceiling.

Our trainer is built by `pipeline.training.train.build_trainer`, the function `train()` runs, with
the default recipe settings (loss ce, batch 8, max_length 384, AdamW, cosine schedule, grad clipping,
logging every step) on SmolLM2-135M-Instruct (fp32 on CPU) and 48 real gsm_symbolic training
examples: 6 steps = one epoch. Its time is `trainer.train()` from `on_train_begin` to `on_train_end`
(data loading, collation, window counts, forward, loss, backward, clipping, optimizer, logging).

The plain loop runs the SAME 6 batches (recorded from the trainer's own data loader in a warm-up
run: same examples per batch, same padding, labels -100 on prompt and padding) from the same
initial weights: `model(input_ids, attention_mask, labels).loss.backward()` + `torch.optim.AdamW`
(fused: the optimizer our trainer uses, so the ratio isolates the trainer path), full logits, no
clipping, no logging.

- Interleaved in ONE process: every round runs each variant once (order rotated per round) and
  the ceiling once, weights reset before each run; the report takes medians over rounds. Load from
  other processes drifts over minutes and then hits every variant alike.
- Ceiling: `bench_scoring.matmul_ceiling` (a 2048^3 fp32 matmul on CPU), measured every round.
- `ceiling_ratio` = real (non-pad) tokens x 6 x params / our median seconds / median ceiling.
  `vs_plain_loop` = median over rounds of (our seconds / plain loop seconds in the same round).
- `--variants` adds trainer variants (levers) to the rounds, e.g. `trl_head` (TRL's fused head on
  every padded position: the trainer before the CPU path), `padded` (the CPU path's body on the padded
  batch instead of packed rows) or `tokens_1024`; see VARIANTS.
- `--overhead` also runs the whole `train()` once for 6 steps and prints its phases.
- CUDA (not run: no GPU was lent to the sessions that wrote it): the trainer trains in bf16 autocast
  as `sft_config` sets it, the plain loop under the same autocast, the ceiling is a bf16 8192^3
  matmul, and it also prints MFU against the GPU's datasheet bf16 peak when the GPU is listed.

Run: `python benchmarks/bench_training.py [--rounds 3] [--variants trl_head] [--overhead]`.
Last line: `ceiling_ratio=X vs_plain_loop=Y`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scoring import matmul_ceiling, sync  # noqa: E402

MODEL = "smollm2-135m-instruct"
STEPS = 6
# Trainer variants (levers): attributes of `TokenLossSFTTrainer` (cpu_fast_path, pack_rows, forward_tokens,
# token_metrics), `head_vocab_chunk` / `head_token_chunk` (the CPU head's tiles), SFTConfig fields
# (optim, train_sampling_strategy, ...) and `threads` (torch.set_num_threads for that variant).
VARIANTS: dict[str, dict] = {
    "ours": {},
    "trl_head": {"cpu_fast_path": False},
    "padded": {"pack_rows": False},  # the body on the padded batch (the CPU path before packing)
    "tokens_1024": {"forward_tokens": 1024},
    "tokens_2048": {"forward_tokens": 2048},
    "no_token_metrics": {"token_metrics": False},
    "vocab_4096": {"head_vocab_chunk": 4096},
    "vocab_16384": {"head_vocab_chunk": 16384},
    "group_by_length": {"train_sampling_strategy": "group_by_length"},
    "adamw_foreach": {"optim": "adamw_torch"},
    "threads_1": {"threads": 1},
}
# Dense bf16 datasheet peaks (FLOP/s) for the CUDA branch's MFU.
GPU_PEAK_BF16 = {"H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12,
                 "RTX 4090": 165e12, "RTX 3090": 71e12}


class StepClock:
    """TrainerCallback that times `trainer.train()` from on_train_begin to on_train_end."""

    def __init__(self):
        self.seconds = 0.0
        self._start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        sync()
        self._start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        sync()
        self.seconds = time.perf_counter() - self._start

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def build(tmp: str):
    from pipeline.data import load_math
    from pipeline.training.train import build_trainer

    examples = load_math("gsm_symbolic", 48, 16, 48, 0)["train"]
    clock = StepClock()
    trainer = build_trainer(MODEL, examples, tmp, {"max_steps": STEPS}, seed=0, callbacks=[clock])
    return trainer, clock, examples


def record_batches(trainer) -> list[dict]:
    """Run the trainer once (warm-up) and keep each step's input_ids / attention_mask / labels."""
    from transformers import set_seed

    batches: list[dict] = []
    step = trainer.training_step

    def recording(model, inputs, num_items_in_batch=None):
        batches.append({k: inputs[k].detach().clone() for k in ("input_ids", "attention_mask", "labels")})
        return step(model, inputs, num_items_in_batch)

    trainer.training_step = recording
    set_seed(trainer.args.seed)
    try:
        trainer.train()
    finally:
        del trainer.training_step
    return batches


def run_ours(trainer, clock, init: dict, variant: dict) -> tuple[float, float, float]:
    """(seconds, train_loss, first step's loss) of one 6-step `trainer.train()` with `variant` applied.

    Weights, optimizer, schedule and seed are reset first, as in the warm-up run, so every run draws
    the same batches and takes the same updates (its train_loss shows it: equal across runs and
    variants up to float tolerance)."""
    from transformers import set_seed

    from pipeline.training import trainer as trainer_module

    trainer.model.load_state_dict(init)
    trainer.optimizer = trainer.lr_scheduler = None  # else train() reuses the last run's AdamW state and schedule
    set_seed(trainer.args.seed)
    saved_threads = torch.get_num_threads()
    undo: list = []
    for key, value in variant.items():
        if key == "threads":
            torch.set_num_threads(value)
        elif key in ("head_vocab_chunk", "head_token_chunk"):
            name = key.upper()
            undo.append((trainer_module, name, getattr(trainer_module, name)))
            setattr(trainer_module, name, value)
        elif hasattr(trainer.args, key):
            undo.append((trainer.args, key, getattr(trainer.args, key)))
            setattr(trainer.args, key, value)
        else:
            undo.append((trainer, key, trainer.__dict__.get(key, getattr(type(trainer), key))))
            setattr(trainer, key, value)
    try:
        result = trainer.train()
    finally:
        for obj, key, value in reversed(undo):
            setattr(obj, key, value)
        torch.set_num_threads(saved_threads)
    first = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return clock.seconds, result.training_loss, first


def run_plain(model, batches: list[dict], init: dict) -> tuple[float, float, float]:
    """(seconds, mean loss, first batch's loss) of the plain loop over the same batches: HF loss on
    response tokens + fused AdamW (constant learning rate: its later losses differ from ours)."""
    model.load_state_dict(init)
    model.train()
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    losses = []
    sync()
    start = time.perf_counter()
    for batch in batches:
        with autocast:
            loss = model(**{k: v.to(dev) for k, v in batch.items()}).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    sync()
    seconds = time.perf_counter() - start
    return seconds, float(torch.stack(losses).mean()), float(losses[0])


def overhead(examples, tmp: str) -> dict:
    """The whole `train()` for 6 steps: its phases (build = model load + dataset + trainer init)."""
    from pipeline.training.train import train

    start = time.perf_counter()
    result = train(MODEL, examples, Path(tmp) / "whole", {"max_steps": STEPS}, seed=0)
    total = time.perf_counter() - start
    return {"total": total, **result["phase_s"], "train_runtime": result["runtime_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="", help=f"comma-separated extra variants from {sorted(VARIANTS)}")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain loop (lever comparisons only)")
    ap.add_argument("--overhead", action="store_true", help="also time one whole train() call")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_import = time.perf_counter()
    import pipeline.training.trainer  # noqa: F401  (TRL's import: paid once per process)

    t_import = time.perf_counter() - t_import
    names = ["ours", *[v for v in args.variants.split(",") if v and v != "ours"]]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    tmp = tempfile.mkdtemp(prefix="bench_training_")
    trainer, clock, examples = build(tmp)
    model = trainer.model
    dev = next(model.parameters()).device
    params = sum(p.numel() for p in model.parameters())
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    batches = record_batches(trainer)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["attention_mask"].numel() for b in batches)
    response = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    if not args.no_plain:
        run_plain(model, batches[:1], init)  # warm-up

    runs = [*names, *([] if args.no_plain else ["plain"]), "ceiling"]
    times: dict[str, list[float]] = {name: [] for name in runs}
    losses: dict[str, list[tuple[float, float]]] = {name: [] for name in runs[:-1]}
    start = time.perf_counter()
    for r in range(args.rounds):
        shift = r % len(runs)
        for name in runs[shift:] + runs[:shift]:
            if name == "ceiling":
                times[name].append(matmul_ceiling())
            else:
                seconds, *loss = (run_plain(model, batches, init) if name == "plain"
                                  else run_ours(trainer, clock, init, VARIANTS[name]))
                times[name].append(seconds)
                losses[name].append(tuple(loss))
        print(f"# round {r + 1}: " + ", ".join(f"{n} {times[n][-1] / (1e9 if n == 'ceiling' else 1):.1f}"
                                                 for n in runs), flush=True)
    wall = time.perf_counter() - start
    whole = overhead(examples, tmp) if args.overhead else None

    ceiling = statistics.median(times["ceiling"])
    flops = real * 6 * params
    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# machine: {dev.type} {name}, cpus {os.cpu_count()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread(s), load average after run {load}")
    print(f"# model: SmolLM2-135M-Instruct ({params / 1e6:.1f}M params, {next(model.parameters()).dtype}"
          f"{', bf16 autocast' if dev.type == 'cuda' else ''}); {len(batches)} steps x batch 8: {real} real tokens "
          f"({padded} padded, {response} response), {args.rounds} interleaved rounds in {wall:.0f} s")
    print(f"# ceiling: matmul {ceiling / 1e9:.1f} GFLOP/s median (min {min(times['ceiling']) / 1e9:.1f}, "
          f"max {max(times['ceiling']) / 1e9:.1f}); FLOPs counted = real tokens x 6 x params")
    print(f"{'run':18s} {'median_s':>9s} {'min_s':>8s} {'max_s':>8s} {'tok/s':>7s} {'ceiling':>8s} {'vs_plain':>9s}")
    for run in runs[:-1]:
        t = times[run]
        med = statistics.median(t)
        vs = ("" if args.no_plain else
              f"{statistics.median(a / b for a, b in zip(t, times['plain'], strict=True)):9.3f}")
        print(f"{run:18s} {med:9.1f} {min(t):8.1f} {max(t):8.1f} {real / med:7.0f} "
              f"{flops / med / ceiling:8.3f} {vs}")
    print("# same batches: (train_loss, first step's loss) per run: "
          + "; ".join(f"{n} " + " ".join(f"({a:.4f}, {b:.4f})" for a, b in v) for n, v in losses.items()))
    if whole is not None:
        print(f"# whole train() for {STEPS} steps: {whole['total']:.1f} s = build {whole['build']:.1f} "
              f"(model load + dataset + trainer init) + train {whole['train']:.1f} (train_runtime "
              f"{whole['train_runtime']:.1f}) + save {whole['save']:.1f}; first import of the trainer (TRL) "
              f"{t_import:.1f} s, once per process")
    ours = statistics.median(times["ours"])
    line = f"ceiling_ratio={flops / ours / ceiling:.2f}"
    if not args.no_plain:
        line += f" vs_plain_loop={statistics.median(a / b for a, b in zip(times['ours'], times['plain'], strict=True)):.2f}"
    if dev.type == "cuda":
        peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
        line += f" mfu={flops / ours / peak:.2f}" if peak else " mfu=unknown_gpu"
    print(line)


if __name__ == "__main__":
    main()
