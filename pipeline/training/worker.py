"""Entry point run by `accelerate launch` / `torchrun`: one training process of a launched job."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import polars as pl
import torch

from pipeline.core.io import read_json, write_json
from pipeline.training.train import train


def main(job_path: str) -> None:
    if torch.cuda.is_available():  # each process on its own GPU, never all on cuda:0
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    job = read_json(job_path)
    tokens = pl.read_parquet(job["token_columns"], glob=False).to_dict(as_series=False) if job.get("token_columns") else None
    metrics = train(job["model"], pl.read_parquet(job["examples"], glob=False), job["output_dir"], job["cfg"], seed=job["seed"],
                    weights=job["weights"], token_columns=tokens)
    if int(os.environ.get("RANK", "0")) == 0:
        metrics["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
        write_json(Path(job["output_dir"]) / "train_metrics_worker.json", metrics)


if __name__ == "__main__":
    main(sys.argv[1])
