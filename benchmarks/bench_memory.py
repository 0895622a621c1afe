"""Peak resident memory of `pipeline run sft-math` and `train-subset` against the floor measured in the same run.

Each command runs in a fresh child process on an empty stage cache (so every stage runs: scoring, base
evaluation, training, tuned evaluation); its peak is the child's `ru_maxrss`. The floor (issue 28) is what
training cannot do without, measured on the trainer the run itself builds (`build_trainer`, the run's
`train` section, its kept rows):

    floor = weights + AdamW state (2 x trainable parameter bytes)
            + peak tensor memory of one training step on the run's largest batch (its `batch_size` longest
              kept rows: activations, gradients, temporaries; torch profiler allocation events)

Also printed, as context and not part of the floor: `runtime_gb`, the resident memory of a process that has
imported what a run imports (torch, transformers, TRL, Prefect, the pipeline) and loaded no model.
Last line: `peak_rss_gb=X floor_gb=Y ratio=Z` for the worse of the two commands. Goal: ratio <= 1.5 on CPU.

CUDA (not run: no GPU was lent): the peak is the child's device memory, sampled every 0.2 s with
`nvidia-smi --query-compute-apps`, and the floor's step peak is `torch.cuda.max_memory_allocated`.

Run from the project root: `python benchmarks/bench_memory.py [--keep DIR]` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
GB = 1024 ** 3


def run_child(args: list[str]) -> tuple[float, float]:
    """(peak memory in GB, seconds) of one command in a fresh child process: RSS on CPU, device memory on CUDA."""
    wrapper = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *args], stdout=subprocess.PIPE, text=True)
    gpu_peak = [0.0]
    if torch.cuda.is_available():
        threading.Thread(target=_sample_gpu, args=(proc, gpu_peak), daemon=True).start()
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed with exit code {proc.returncode}")
    rss_gb = int(out.strip().splitlines()[-1]) * 1024 / GB  # ru_maxrss is in KiB on Linux
    return (gpu_peak[0] if torch.cuda.is_available() else rss_gb), time.perf_counter() - t0


def _sample_gpu(proc: subprocess.Popen, peak: list[float]) -> None:
    """Largest device memory any process of this user held while `proc` ran (nvidia-smi, MiB)."""
    while proc.poll() is None:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout
        peak[0] = max([peak[0], *(float(x) / 1024 for x in out.split() if x.strip())])
        time.sleep(0.2)


def runtime_gb() -> float:
    """Resident memory of a process that imported what a run imports and loaded no model (a grandchild, as the
    runs: Linux carries a parent's peak into a forked child's `ru_maxrss` through exec)."""
    code = "import torch, transformers, trl, prefect, polars, datasets, pipeline.cli, pipeline.training.trainer"
    return run_child([sys.executable, "-c", code])[0]


def floor_gb(model: str, subset: Path, train: dict, work: Path) -> dict[str, float]:
    """The floor's terms (GB) for training `subset`'s rows with the `train` section on `model`."""
    import polars as pl
    from bench_losses import allocated_peak

    from pipeline.training.train import build_trainer

    examples = pl.read_parquet(subset, glob=False)
    weights = examples.get_column("weight").to_list() if "weight" in examples.columns else None
    trainer = build_trainer(model, examples, work / "floor", train, weights=weights)
    data = trainer.train_dataset
    size = trainer.args.per_device_train_batch_size
    longest = sorted(range(len(data)), key=lambda i: -len(data[i]["input_ids"]))[:size]
    batch = trainer.data_collator([data[i] for i in longest])
    params = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
    step = allocated_peak(trainer, batch) - params  # activations + gradients + temporaries of one step
    return {"weights": params / GB, "adam_state": 2 * trainable / GB, "step_peak": step / GB,
            "tokens": int(batch["input_ids"].numel()), "real_tokens": int(batch["attention_mask"].sum()),
            "floor": (params + 2 * trainable + step) / GB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="write the runs here (default: a temporary folder)")
    opts = ap.parse_args()
    work = Path(opts.keep or tempfile.mkdtemp(prefix="bench_memory_"))
    cache = work / "cache"
    pipeline_cli = [sys.executable, "-m", "pipeline.cli"]
    load = os.getloadavg()[0]
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; load {load:.1f}")

    sft = work / "sft-math"
    peak_sft, secs_sft = run_child([*pipeline_cli, "run", "sft-math", "--run-dir", str(sft),
                                    "--set", f"cache_dir={cache}", "--set", f"cards_dir={work / 'cards'}"])
    card = sft / "data_card"  # the run's copy of its card: subset.parquet holds the kept rows and weights
    subset = card / "subset.parquet"
    config = _config(sft)
    tsub = work / "train-subset"
    peak_tsub, secs_tsub = run_child([*pipeline_cli, "run", "train-subset", "--run-dir", str(tsub),
                                      "--set", f"cache_dir={work / 'cache-train'}", "--set", f"data.subset={card}"])

    floor = floor_gb(config["model"], subset, config["train"], work)
    base = runtime_gb()
    print(f"floor: weights {floor['weights']:.2f} + AdamW state {floor['adam_state']:.2f} + one step on the "
          f"largest batch ({floor['tokens']} padded, {floor['real_tokens']} real tokens) {floor['step_peak']:.2f} = {floor['floor']:.2f} GB; "
          f"runtime with no model {base:.2f} GB (context, not in the floor)")
    rows = [("sft-math", peak_sft, secs_sft), ("train-subset", peak_tsub, secs_tsub)]
    for name, peak, secs in rows:
        print(f"{name:13s} peak {peak:.2f} GB in {secs:.0f} s: ratio {peak / floor['floor']:.2f} to the floor, "
              f"{peak / (floor['floor'] + base):.2f} to floor + runtime")
    name, peak, _ = max(rows, key=lambda r: r[1])
    print(f"# load average at the end {os.getloadavg()[0]:.1f}; worst: {name}")
    print(f"peak_rss_gb={peak:.2f} floor_gb={floor['floor']:.2f} ratio={peak / floor['floor']:.2f}")


def _config(run_dir: Path) -> dict:
    """The resolved recipe a run recorded (`config.yaml`)."""
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


if __name__ == "__main__":
    main()
