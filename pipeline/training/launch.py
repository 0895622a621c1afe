"""Where training runs: in-process (default), or across processes with accelerate or torchrun.

`train.launcher: accelerate` runs `pipeline.training.worker` under `accelerate launch` with the shipped
FSDP config (`pipeline/training/accelerate_fsdp.yaml`, or `train.accelerate_config`);
`train.launcher: torchrun` runs it under `torch.distributed.run` (DDP; gloo on CPU). Both write the
same model folder and metrics as the in-process path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import torch

from pipeline.core.config import TrainSection
from pipeline.core.io import read_json, write_json, write_parquet

FSDP_CONFIG = Path(__file__).parent / "accelerate_fsdp.yaml"


def process_count(cfg: TrainSection) -> int:
    """Processes a launched run starts: `train.num_processes`, by default the GPU count (1 on CPU)."""
    return cfg.num_processes or max(torch.cuda.device_count(), 1)


def launch_training(model: str, examples: pl.DataFrame, output_dir: str | Path, cfg: TrainSection | dict, seed: int,
                    weights: list[float] | None = None,
                    token_columns: dict[str, list[list]] | None = None, loss: Any = None) -> dict:
    """Train with the launcher `cfg.launcher` names; return the training metrics. `loss` (the built loss) is
    used in-process; launched workers build it again from `cfg` in their own processes."""
    from pipeline.training.train import train, train_settings

    cfg = train_settings(cfg)
    launcher = cfg.launcher
    n = str(process_count(cfg))
    accelerate_config = str(cfg.accelerate_config or FSDP_CONFIG)
    if launcher == "local":
        return train(model, examples, output_dir, cfg, seed=seed, weights=weights, token_columns=token_columns,
                     loss=loss)

    output_dir = Path(output_dir)
    job = output_dir / "job"
    write_parquet(job / "examples.parquet", examples)
    tokens = None
    if token_columns:
        tokens = str(write_parquet(job / "token_columns.parquet", pl.DataFrame(token_columns)))
    write_json(job / "job.json", {"model": model, "output_dir": str(output_dir), "cfg": cfg.model_dump(mode="json"),
                                  "seed": seed,
                                  "weights": weights, "examples": str(job / "examples.parquet"),
                                  "token_columns": tokens})
    worker = ["-m", "pipeline.training.worker", str(job / "job.json")]
    if launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               accelerate_config, "--num_processes", n]
        if not torch.cuda.is_available():
            cmd += ["--cpu", "--mixed_precision", "no"]  # accelerate runs one CPU process
        cmd += worker
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n, *worker]
    subprocess.run(cmd, check=True)
    return read_json(output_dir / "train_metrics_worker.json")
