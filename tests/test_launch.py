"""Launched training: torchrun with 2 CPU processes (DDP over gloo) and accelerate's single CPU process."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline.data import load_math
from pipeline.training.launch import launch_training


@pytest.mark.parametrize("launcher,procs", [("torchrun", 2), ("accelerate", 1)])
def test_launcher_trains_and_saves(tmp_path, tiny_model_dir, launcher, procs):
    examples = load_math(n_train=8, n_val=1, n_test=1)["train"]
    cfg = {"launcher": launcher, "num_processes": procs, "max_steps": 2, "batch_size": 2, "max_length": 128}
    metrics = launch_training(tiny_model_dir, examples, tmp_path / "out", cfg, seed=0)
    assert metrics["steps"] == 2 and metrics["world_size"] == procs
    assert (tmp_path / "out" / "model" / "config.json").exists()
    assert json.loads((tmp_path / "out" / "job" / "job.json").read_text())["cfg"]["max_steps"] == 2
    assert pl.read_parquet(tmp_path / "out" / "job" / "examples.parquet").height == 8


def test_unknown_launcher_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="launcher"):
        launch_training("m", pl.DataFrame(), tmp_path, {"launcher": "slurm"}, seed=0)
