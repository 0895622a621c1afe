"""The curate, train and evaluate flows compose: curate a card, train on it, evaluate the trained model."""

from __future__ import annotations

import json

import polars as pl

from pipeline.cli import main


def _common(tmp_path, tiny_model_dir) -> list[str]:
    return ["--set", f"model={tiny_model_dir}", "--set", f"cache_dir={tmp_path / 'cache'}"]


def test_curate_then_train_then_evaluate(tmp_path, tiny_model_dir, capsys):
    curate = ["run", "curate-math", "--run-dir", str(tmp_path / "curate"), *_common(tmp_path, tiny_model_dir),
              "--set", f"cards_dir={tmp_path / 'cards'}", "--set", "data.n_train=12", "--set", "data.n_val=2",
              "--set", "data.n_test=2", "--set", "score.max_length=128"]
    assert main(curate) == 0
    card = json.loads((tmp_path / "curate" / "metrics.json").read_text())["data_card"]
    subset = pl.read_parquet(f"{card}/subset.parquet")

    train = ["run", "train-subset", "--run-dir", str(tmp_path / "train"), *_common(tmp_path, tiny_model_dir),
             "--set", f"data.subset={card}", "--set", "train.max_steps=1", "--set", "train.batch_size=2",
             "--set", "train.max_length=128", "--set", "train.loss=dft"]
    assert main(train) == 0
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert trained["subset"]["rows"] == subset.height and trained["train"]["steps"] == 1
    assert (tmp_path / "train" / "model" / "config.json").exists()

    capsys.readouterr()
    evaluate = ["run", "eval-math", "--run-dir", str(tmp_path / "eval"), *_common(tmp_path, tiny_model_dir),
                "--set", f"model={tmp_path / 'train' / 'model'}", "--set", "data.n_train=12", "--set", "data.n_val=2",
                "--set", "data.n_test=3", "--set", "eval.n_generate=1", "--set", "eval.max_new_tokens=4",
                "--set", "eval.max_length=128"]
    assert main(evaluate) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["eval"]["n_nll"] == 3 and result["eval"]["n_generate"] == 1 and result["eval"]["nll"] > 0
    assert "accuracy" in capsys.readouterr().out


def test_train_flow_needs_a_subset(tmp_path, tiny_model_dir, capsys):
    args = ["run", "train-subset", "--run-dir", str(tmp_path / "t"), *_common(tmp_path, tiny_model_dir)]
    assert main(args) == 2
    assert "data.subset: recipe train-subset needs it" in capsys.readouterr().err


def test_train_flow_rejects_bad_weights_with_file_row_and_field(tmp_path, tiny_model_dir, capsys):
    subset = tmp_path / "subset.parquet"
    pl.DataFrame({"id": ["a", "b"], "prompt": ["p", "q"], "response": ["r", "s"],
                  "weight": [1.0, float("nan")]}).write_parquet(subset)
    args = ["run", "train-subset", "--run-dir", str(tmp_path / "t"), *_common(tmp_path, tiny_model_dir),
            "--set", f"data.subset={subset}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{subset}: row 1 (id b), field weight" in err
