"""LoRA training (peft) through our trainer: adapters train, the saved model is merged and plain."""

from __future__ import annotations

import pytest
import torch

from pipeline.data import load_math
from pipeline.models.loading import load_model
from pipeline.training.train import lora_config, train


def test_lora_trains_and_saves_a_merged_model(tmp_path, tiny_model_dir):
    examples = load_math("gsm_symbolic", n_train=4, n_val=1, n_test=1, seed=0)["train"]
    cfg = {"max_steps": 2, "batch_size": 2, "max_length": 128, "learning_rate": 1e-2, "loss": "dft",
           "lora": {"r": 4, "alpha": 8}}
    metrics = train(tiny_model_dir, examples, tmp_path / "out", cfg, seed=0)
    assert metrics["steps"] == 2
    folder = tmp_path / "out" / "model"
    assert not (folder / "adapter_config.json").exists()  # merged: loads as a plain model
    tuned, base = load_model(str(folder), dtype=torch.float32), load_model(tiny_model_dir, dtype=torch.float32)
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # only the LoRA-targeted linear layers moved
    # merged in place in the trained model: the same weights as the saved adapter merged into a fresh base
    from peft import PeftModel

    fresh = PeftModel.from_pretrained(base, str(tmp_path / "out" / "adapter")).merge_and_unload().state_dict()
    for name, value in tuned.state_dict().items():
        torch.testing.assert_close(value, fresh[name], rtol=1e-6, atol=1e-7, msg=name)


def test_lora_config_rejects_unknown_keys():
    assert lora_config(None) is None
    assert lora_config({"r": 8}).r == 8
    with pytest.raises(ValueError, match="train.lora.rank: unknown key"):
        lora_config({"rank": 8})

