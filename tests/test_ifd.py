"""IFD (Cherry LLM, arXiv 2308.12032) against a direct computation with plain transformers losses."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.data import load_math
from pipeline.models.loading import encode_examples, load_model, load_tokenizer
from pipeline.scorers import ScoreContext, get_scorer


@pytest.mark.parametrize("ratio", ["loss", "ppl"])
def test_ifd_matches_direct_loss_and_perplexity_ratios(tiny_model_dir, ratio):
    """`loss` (default): L(A|Q) / L(A), as Cherry LLM's data_by_IFD.py ranks; `ppl`: PPL(A|Q) / PPL(A)."""
    examples = load_math("gsm_symbolic", n_train=4, n_val=1, n_test=1, seed=0)["train"]
    ctx = ScoreContext(model_name=tiny_model_dir, max_length=256, progress=False)
    scorer = get_scorer("ifd", **({} if ratio == "loss" else {"ratio": ratio}))
    table = scorer(examples, ctx)
    assert table.columns == ["id", "ifd", "ppl_conditioned", "ppl_answer"] == ["id", *scorer.columns()]
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
        expected = cond / alone if ratio == "loss" else math.exp(cond) / math.exp(alone)
        assert row["ifd"] == pytest.approx(expected, rel=1e-4)


def test_ifd_rule_drops_misaligned_rows_then_keeps_the_highest():
    """The reference's selection: IFD > 1 skipped, then the top share of the aligned rows by IFD."""
    import polars as pl

    from pipeline.selectors import get_selector, run_selector

    scores = pl.DataFrame({"id": list("abcdefgh"), "ifd": [0.2, 0.9, 1.3, 0.5, 0.95, 1.01, None, 0.7]})
    sel = run_selector(get_selector("ifd", fraction=0.5), scores)
    kept = sel.filter(pl.col("kept"))["id"].to_list()
    assert sorted(kept) == ["b", "e"]  # 5 aligned rows (a b d e h): the top int(0.5 * 5) = 2 by IFD
    reason = dict(zip(sel["id"], sel["reason"], strict=True))
    assert reason["c"].startswith("dropped: misaligned, ifd=1.3 > 1") and reason["f"].startswith("dropped: misaligned")
    assert reason["g"] == "missing score" and reason["h"].startswith("dropped: not in the top 0.5")
    wider = run_selector(get_selector("ifd", fraction=0.5, max_ifd=2.0), scores)
    assert sorted(wider.filter(pl.col("kept"))["id"].to_list()) == ["c", "e", "f"]  # 7 aligned: top 3

