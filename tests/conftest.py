"""Shared fixtures: offline mode, a tiny random model built from SmolLM2's real config, the real tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct folder (installed and converted by `pipeline assets download`)."""
    from pipeline.models.assets import smollm2_dir as path

    return path()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir):
    """A random-initialized 2-layer Llama with SmolLM2's config and real tokenizer (seeded)."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(smollm2_dir)
    config.update({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-smollm2")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(out)
    return str(out)


@pytest.fixture
def cli_error(capsys):
    """Run the CLI with `args`, expect exit 2 and one `pipeline: error:` line (no traceback); return that line."""
    from pipeline.cli import main

    def run(args: list[str]) -> str:
        code = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, err
        assert err and err[-1].startswith("pipeline: error: ") and "Traceback" not in "\n".join(err)
        return err[-1]

    return run


TINY_PROMPTS = ["What is 2+2?", "Name a color.", "Say hi.", "Count to three."]
TINY_RESPONSES = ["4", "Blue is a color I like.", "Hi there!", "One, two, three."]


@pytest.fixture
def tiny_trainer(tiny_model_dir, tmp_path):
    """Build a `TokenLossSFTTrainer` for `loss` on the tiny model over four fixed rows (weights 1, 2, 0.5, 1; no
    shuffling); `lora` adds a LoRA adapter, `base_model=True` gives the trainer the tiny model as frozen reference."""
    import polars as pl

    from pipeline.models.loading import load_model, load_tokenizer
    from pipeline.training.train import build_dataset, lora_config, sft_config, train_settings
    from pipeline.training.trainer import TokenLossSFTTrainer

    def build(loss, lora: dict | None = None, base_model: bool = False):
        tokenizer = load_tokenizer(tiny_model_dir)
        model = load_model(tiny_model_dir, dtype=torch.float32).train()
        args = sft_config(train_settings({"max_steps": 2, "batch_size": 4}), tmp_path / "trainer", 0, loss)
        args.shuffle_dataset = False
        rows = pl.DataFrame({"prompt": TINY_PROMPTS, "response": TINY_RESPONSES})
        dataset = build_dataset(tokenizer, rows, 64, weights=[1.0, 2.0, 0.5, 1.0])
        extra = {"base_model": tiny_model_dir} if base_model else {}
        return TokenLossSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                   loss=loss, peft_config=lora_config(lora), **extra)

    return build


@pytest.fixture
def tiled_step(monkeypatch):
    """One `compute_loss` of `trainer` on its first four rows with the fused head cut into several vocabulary
    tiles (the last one ragged), backward included: returns (batch, loss, {parameter: gradient}) and leaves
    the model's gradients zeroed for the reference formula."""

    def step(trainer):
        from pipeline.training import trainer as trainer_module

        monkeypatch.setattr(trainer_module, "HEAD_VOCAB_CHUNK", 5000)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        n = int((batch["labels"][:, 1:] != -100).sum())
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
        trainer.model.zero_grad()
        return batch, loss, grads

    return step


@pytest.fixture
def train_subset_run(tiny_model_dir, tmp_path, monkeypatch):
    """`pipeline run train-subset --set train.loss=<loss> [--set extra...]` on the tiny model over the four rows:
    returns the run's metrics and every dict the trainer logged."""
    import json

    import polars as pl

    from pipeline.cli import main
    from pipeline.training.trainer import TokenLossSFTTrainer

    def run(loss: str, *extra: str) -> tuple[dict, list[dict]]:
        logs: list[dict] = []
        log = TokenLossSFTTrainer.log

        def spy(self, values, *args, **kwargs):
            log(self, values, *args, **kwargs)
            logs.append(dict(values))

        monkeypatch.setattr(TokenLossSFTTrainer, "log", spy)
        subset = tmp_path / "subset.parquet"
        pl.DataFrame({"id": [f"r{i}" for i in range(4)], "prompt": TINY_PROMPTS,
                      "response": TINY_RESPONSES}).write_parquet(subset)
        args = ["run", "train-subset", "--run-dir", str(tmp_path / "run"), "--set", f"model={tiny_model_dir}",
                "--set", f"data.subset={subset}", "--set", f"cache_dir={tmp_path / 'cache'}",
                "--set", f"train.loss={loss}", "--set", "train.max_steps=2", "--set", "train.batch_size=2",
                "--set", "train.max_length=64"]
        for setting in extra:
            args += ["--set", setting]
        assert main(args) == 0
        return json.loads((tmp_path / "run" / "metrics.json").read_text()), logs

    return run
