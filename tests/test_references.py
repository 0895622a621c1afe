"""Reference models (learnability, CLEAR, datamix, token labels) train with the recipe's own train settings."""

from __future__ import annotations

import json

from pipeline.cli import main
from pipeline.training.reference import reference_train


def test_reference_train_takes_the_recipes_training_not_its_loss():
    train = {"loss": "dft", "loss_params": {"x": 1}, "learning_rate": 1e-4, "lora": {"r": 4}, "max_length": 128,
             "masked_thought": {"p": 0.2}, "launcher": "torchrun"}
    assert reference_train(train) == {"learning_rate": 1e-4, "lora": {"r": 4}, "max_length": 128}
    assert reference_train(train, {"max_steps": 3})["max_steps"] == 3  # a part's own settings go on top


def test_learnability_reference_is_trained_with_the_recipes_settings(tmp_path, tiny_model_dir):
    args = ["run", "curate-math", "--run-dir", str(tmp_path / "run")]
    for s in (f"model={tiny_model_dir}", f"cards_dir={tmp_path / 'cards'}", f"cache_dir={tmp_path / 'cache'}",
              "data.n_train=8", "score.max_length=96", "score.scorer=learnability",
              "select={rule: fraction, column: learnability, fraction: 0.5, order: highest}",
              "train.max_steps=1", "train.batch_size=4", "train.learning_rate=3e-4", "train.lora={r: 4, alpha: 8}"):
        args += ["--set", s]
    assert main(args) == 0
    (record,) = (tmp_path / "cache" / "references").glob("*/reference.json")
    train = json.loads(record.read_text())["train"]
    assert train["learning_rate"] == 3e-4 and train["max_steps"] == 1 and train["lora"]["r"] == 4
    assert train["max_length"] == 96  # the score stage's tokenization, so reference and scores see the same tokens
