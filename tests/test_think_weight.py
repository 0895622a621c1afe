"""`train.think_weight`: the loss on tokens inside <think>...</think> is scaled, the delimiters keep weight 1."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from pipeline.cli import main
from pipeline.training.columns import COLUMNS, ColumnContext, span_mask

ROW = {"id": "t1", "prompt": "What is 2 + 3?", "response": "<think>Let me add 2 and 3.</think>The answer is 5."}


def test_weighted_tokens_are_exactly_the_reasoning_span(tiny_model_dir):
    from pipeline.models.loading import encode_examples, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    examples = pl.DataFrame([ROW, {"id": "t2", "prompt": "Hi", "response": "No reasoning here."}])
    provider = COLUMNS.build("token_weight", {"think_weight": 0.25})
    rows = provider.compute(examples, ColumnContext(model=tiny_model_dir, max_length=128, cache_root="unused"))
    enc = encode_examples(tok, examples, 128)
    inside = [t for t, w in zip(enc[0]["input_ids"], rows["token_weight"][0], strict=True) if w == 0.25]
    assert tok.decode(inside).strip() == "Let me add 2 and 3."
    outside = tok.decode([t for t, w, m in zip(enc[0]["input_ids"], rows["token_weight"][0], enc[0]["completion_mask"],
                                                strict=True) if w == 1.0 and m])
    assert "<think>" in outside and "</think>" in outside and "The answer is 5." in outside  # delimiters at 1
    assert set(rows["token_weight"][1]) == {1.0}  # no span, no change
    assert span_mask(tok, tok("a <think>open to the end", add_special_tokens=False)["input_ids"], "<think>",
                     "</think>")[-1]  # an unclosed span runs to the end


def test_every_loss_multiplies_its_token_contributions_by_the_weight():
    """CE with token weights w: sum(w * nll) / N, value and gradient (N: all response tokens, unchanged)."""
    from pipeline.losses import get_loss

    nll = torch.rand(2, 6, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    w = torch.tensor([[1, 0.5, 0.5, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.float32)
    value = get_loss("ce").from_log_probs(-nll, mask, batch={"token_weight": w})
    assert torch.allclose(value, (w * nll).sum() / 12)
    value.backward()
    assert torch.allclose(nll.grad, w / 12)


@pytest.mark.parametrize("value", ["-1", ".nan", ".inf"])
def test_bad_think_weight_ends_in_one_error_line(value, capsys):
    assert main(["recipes", "--show", "sft-math", "--set", f"train.think_weight={value}"]) == 2
    assert capsys.readouterr().err.startswith("pipeline: error: train.think_weight")


def test_think_weight_reaches_training_and_says_how_many_rows_it_touched(tmp_path, tiny_model_dir, capsys):
    """From a recipe: the train stage makes the column and logs the span count (math rows have no spans)."""
    from tests.test_flow import SMALL

    args = ["run", "sft-math", "--run-dir", str(tmp_path / "r"), "--set", f"model={tiny_model_dir}", "--set",
            f"cards_dir={tmp_path / 'cards'}", "--set", f"cache_dir={tmp_path / 'cache'}", "--set",
            "train.think_weight=0.5"]
    for s in SMALL:
        args += ["--set", s]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "think_weight=0.5: <think>...</think> spans in 0 of" in out and "training columns (token_weight)" in out
