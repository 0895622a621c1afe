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


def test_two_process_training_saves_a_loadable_model_that_matches_one_process(tmp_path, tiny_model_dir):
    """torchrun with 2 CPU processes (DDP over gloo: FSDP does not run on CPU) x batch 2 takes the same
    steps as 1 process x batch 4; rank 0 alone saves a plain model folder that loads and scores alike."""
    import torch

    from pipeline.evaluation.heldout import mean_response_nll
    from pipeline.models.loading import load_model, load_tokenizer

    examples = load_math(n_train=8, n_val=1, n_test=1)["train"]
    base = {"max_steps": 2, "max_length": 128, "learning_rate": 1e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant"}
    two = launch_training(tiny_model_dir, examples, tmp_path / "two", {**base, "launcher": "torchrun",
                                                                        "num_processes": 2, "batch_size": 2}, seed=0)
    one = launch_training(tiny_model_dir, examples, tmp_path / "one", {**base, "batch_size": 4}, seed=0)
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == 2
    files = sorted(p.name for p in (tmp_path / "two" / "model").iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files and not [f for f in files if f.startswith(".tmp")]
    tok = load_tokenizer(tiny_model_dir)
    nll = {name: mean_response_nll(load_model(str(path), dtype=torch.float32), tok, examples, 128, progress=False)
           for name, path in (("base", tiny_model_dir), ("one", tmp_path / "one" / "model"),
                              ("two", tmp_path / "two" / "model"))}
    moved = nll["base"] - nll["one"]
    assert moved > 0.01  # training did something measurable
    assert abs(nll["two"] - nll["one"]) < 0.1 * moved
