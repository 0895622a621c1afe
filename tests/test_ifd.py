"""IFD (Cherry LLM, arXiv 2308.12032) against a direct computation with plain transformers losses."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.data import load_math
from pipeline.models.loading import encode_examples, load_model, load_tokenizer
from pipeline.scorers import ScoreContext, get_scorer


def test_ifd_matches_direct_perplexity_ratio(tiny_model_dir):
    examples = load_math("gsm_symbolic", n_train=4, n_val=1, n_test=1, seed=0)["train"]
    ctx = ScoreContext(model_name=tiny_model_dir, max_length=256, progress=False)
    table = get_scorer("ifd")(examples, ctx)
    assert table.columns == ["id", "ifd", "ppl_conditioned", "ppl_answer"]
    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, dtype=torch.float32)
    for row, enc, response in zip(table.iter_rows(named=True), encode_examples(tok, examples, 256),
                                  examples.get_column("response").to_list(), strict=True):
        ids = torch.tensor([enc["input_ids"]])
        labels = ids.masked_fill(torch.tensor([enc["completion_mask"]]) == 0, -100)
        with torch.no_grad():
            cond = model(input_ids=ids, labels=labels).loss.item()
            alone_ids = torch.tensor([tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
            alone = model(input_ids=alone_ids, labels=alone_ids).loss.item()
        assert row["ppl_conditioned"] == pytest.approx(math.exp(cond), rel=1e-4)
        assert row["ppl_answer"] == pytest.approx(math.exp(alone), rel=1e-4)
        assert row["ifd"] == pytest.approx(math.exp(cond) / math.exp(alone), rel=1e-4)
