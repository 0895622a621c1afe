"""Each scorer against a direct computation on the tiny random model (or a hand-worked formula)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.data import SCHEMA, example_id
from pipeline.models.loading import encode_example, encode_examples, load_model, load_tokenizer
from pipeline.scorers import ScoreContext, get_scorer
from pipeline.scorers.clear import agreement, combine
from pipeline.scorers.information_gain import measure_ig
from pipeline.scorers.token_table import (
    align_to_input_ids,
    aligned_column,
    cleaning_labels,
    forgetting_labels,
    from_arrays,
    influence,
    influence_labels,
    token_columns,
)

ROWS = [
    ("What is 2 + 3?", "2 + 3 = 5.\n#### 5", "5"),
    ("Tom has 4 apples and eats 1. How many are left?", "4 - 1 = 3 apples.\n#### 3", "3"),
    ("Name a primary colour.", "Red is a primary colour.", None),
    ("Write a short greeting.", "Hello there, nice to meet you!", None),
    ("What is 10 times 7?", "10 * 7 = 70.\n#### 70", "70"),
    ("Describe the sky on a clear day.", "It is blue and bright.", None),
]


def make_examples(rows=ROWS) -> pl.DataFrame:
    return pl.DataFrame(
        [{"id": example_id(p, r), "prompt": p, "response": r, "source": "test", "domain": "test",
          "answer": a, "messages": None, "meta": None} for p, r, a in rows],
        schema=SCHEMA,
    )


@pytest.fixture(scope="module")
def examples() -> pl.DataFrame:
    return make_examples()


@pytest.fixture(scope="module")
def ctx(tiny_model_dir) -> ScoreContext:
    return ScoreContext(model_name=tiny_model_dir, max_length=128, max_tokens=256, progress=False)


@pytest.fixture(scope="module")
def tiny_model_dir_seed1(tmp_path_factory, tiny_model_dir) -> str:
    """Same architecture as `tiny_model_dir`, different random weights (seed 1)."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(1)
    model = LlamaForCausalLM(AutoConfig.from_pretrained(tiny_model_dir))
    out = tmp_path_factory.mktemp("tiny-seed1")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


def hf_loss(model, enc: dict, response_only: bool = True) -> float:
    """What transformers itself reports: model(input_ids, labels=...).loss on the same tokens."""
    ids = torch.tensor([enc["input_ids"]])
    labels = ids.clone()
    if response_only:
        labels[torch.tensor([enc["completion_mask"]]) == 0] = -100
    with torch.no_grad():
        return float(model(input_ids=ids, labels=labels).loss)


def test_perplexity_matches_hf_loss(examples, ctx, tiny_model_dir):
    full, plain = get_scorer("perplexity", full_text=True), get_scorer("perplexity")
    table, response_only = full(examples, ctx), plain(examples, ctx)  # the second projects only response tokens
    assert "ppl_full" not in response_only.columns
    # the declared columns are the written ones (the stage cache refuses a scorer whose output differs)
    assert table.columns == ["id", *full.columns()] and response_only.columns == ["id", *plain.columns()]
    assert response_only["ppl"].to_list() == pytest.approx(table["ppl"].to_list(), rel=1e-5)
    model, tok = load_model(tiny_model_dir, dtype=torch.float32), load_tokenizer(tiny_model_dir)
    for row, (p, r) in zip(table.iter_rows(named=True), examples.select("prompt", "response").rows(), strict=True):
        enc = encode_example(tok, p, r, ctx.max_length)
        assert row["ppl"] == pytest.approx(math.exp(hf_loss(model, enc)), rel=1e-4)
        assert row["ppl_full"] == pytest.approx(math.exp(hf_loss(model, enc, response_only=False)), rel=1e-4)
        assert row["nll_full"] == pytest.approx(hf_loss(model, enc, response_only=False), rel=1e-4)
        assert row["n_tokens"] == sum(enc["completion_mask"][1:])
    assert table.get_column("id").to_list() == examples.get_column("id").to_list()


def test_learnability_matches_direct_formula(examples, ctx, tiny_model_dir, tiny_model_dir_seed1):
    table = get_scorer("learnability", reference=tiny_model_dir_seed1)(examples, ctx)
    base = load_model(tiny_model_dir, dtype=torch.float32)
    ref = load_model(tiny_model_dir_seed1, dtype=torch.float32)
    tok = load_tokenizer(tiny_model_dir)
    for row, enc in zip(table.iter_rows(named=True), encode_examples(tok, examples, ctx.max_length), strict=True):
        lb, lr = hf_loss(base, enc), hf_loss(ref, enc)
        assert row["learnability"] == pytest.approx(1 - lr / lb, rel=1e-4, abs=1e-5)
        assert row["loss_diff"] == pytest.approx(lb - lr, rel=1e-4, abs=1e-5)
        assert row["loss_ref"] == pytest.approx(lr, rel=1e-4)
    assert table.get_column("learnability").std() > 0
    # the declared columns are the table's: the score stage caches and joins by them
    assert table.columns == ["id", *get_scorer("learnability").columns()]
    assert table.get_column("id").to_list() == examples.get_column("id").to_list()


def test_information_gain_positive_on_the_objective_itself(ctx, examples, tiny_model_dir):
    """One SGD step on exactly the objective example must lower the objective loss: IG > 0."""
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, dtype=torch.float32)
    encoded = encode_examples(tok, examples, ctx.max_length)
    before = [p.detach().clone() for p in model.parameters()]
    gains, loss0 = measure_ig(model, encoded[:2], encoded[:1], lr=0.5, optimizer="sgd", measure="nll",
                              max_tokens=256, pad_id=tok.pad_token_id)
    assert gains[0] > 0
    assert loss0 > 0
    assert gains[0] > gains[1]  # the objective's own example helps it more than another one
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # restored
    # measure="ppl": the same steps measured as exp(mean NLL), before and after alike
    gains_ppl, ppl0 = measure_ig(model, encoded[:2], encoded[:1], lr=0.5, optimizer="sgd", measure="ppl",
                                 max_tokens=256, pad_id=tok.pad_token_id)
    assert ppl0 == pytest.approx(math.exp(loss0), rel=1e-6)
    assert gains_ppl == pytest.approx([math.exp(loss0) - math.exp(loss0 - g) for g in gains], rel=1e-4)


def test_information_gain_scorer_learner_and_metadata(ctx):
    rows = [(f"Question {i}: what is {i} plus {i}?", f"{i} + {i} = {2 * i}.\n#### {2 * i}", str(2 * i))
            for i in range(14)]
    ex = make_examples(rows)
    table, meta = get_scorer("information_gain", sample_size=8, objective_size=3, lr=0.1)(ex, ctx)
    assert table.height == ex.height and table.get_column("ig_sampled").sum() == 8
    measured = table.filter(pl.col("ig_sampled")).get_column("ig_measured").to_numpy()
    assert abs(measured.mean()) < 1e-9 and measured.std() == pytest.approx(1.0)
    assert table.get_column("information_gain").null_count() == 0
    # the selection column is the learner's prediction everywhere, sampled rows included
    assert table.get_column("information_gain").equals(table.get_column("ig_predicted"), check_names=False)
    info = meta["information_gain"]
    assert info["n_heldout"] == 2 and len(info["objective_ids"]) == 3
    assert set(info["objective_ids"]).isdisjoint(set(table.filter(pl.col("ig_sampled")).get_column("id")))
    assert {"r2_heldout", "spearman_heldout"} <= set(info) and info["n_sampled"] == 8
    raw = table.filter(pl.col("ig_sampled")).get_column("ig_raw").to_numpy()
    assert info["ig_raw_mean"] == pytest.approx(raw.mean()) and info["ig_raw_std"] == pytest.approx(raw.std())


def test_clear_combination_formula():
    s = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    r = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    # O = mean(0.8 s + 0.2 r) = (1 + 0 + 0.8 + 1 + 0) / 5 = 0.56; C = 0.7 * 0.56 + 0.3 * 0.5 = 0.542
    assert float(combine(s, r, 0.5)) == pytest.approx(0.542)
    assert float(combine(np.ones(5), np.ones(5), 1.0)) == pytest.approx(1.0)
    assert float(combine(np.zeros(5), np.zeros(5), 0.0)) == 0.0


def test_clear_agreement_math_and_text():
    samples = [["so #### 5", "#### 6", "it is 5"], ["hello", "Hello", "bye"]]
    vec = {"hello": [1.0, 0.0], "Hello": [1.0, 0.0], "bye": [-1.0, 0.0], "Hello!": [0.6, 0.8]}

    def embed(texts):
        return np.asarray([vec[t] for t in texts])

    s, r = agreement(samples, ["x #### 5.0", "Hello!"], [True, False], embed)
    assert s[0].tolist() == [1, 0, 1] and r[0].tolist() == [1, 0, 1]
    assert s[1].tolist() == pytest.approx([0.6, 0.6, 0.0])  # cosine, negative clipped to 0
    assert r[1].tolist() == [0, 0, 0]


def test_clear_confidence_in_unit_interval(examples, ctx, capsys):
    ex = examples.head(4)  # two math rows, two free-text rows
    scorer = get_scorer("clear_confidence", k=2, max_new_tokens=6, batch_size=2)
    table = scorer(ex, ctx)
    assert table.columns == ["id", *scorer.columns()] and table["id"].to_list() == ex["id"].to_list()
    for col in ("clear_confidence", "observed_consistency", "self_reflection", "sample_agreement"):
        values = table.get_column(col).to_numpy()
        assert np.all((values >= 0) & (values <= 1)), col
    recombined = 0.7 * table["observed_consistency"] + 0.3 * table["self_reflection"]
    assert np.allclose(table["clear_confidence"].to_numpy(), recombined.to_numpy())
    capsys.readouterr()
    again = get_scorer("clear_confidence", k=2, max_new_tokens=6, batch_size=2)(ex, dataclasses.replace(ctx, progress=True))
    assert again.equals(table)  # seeded sampling
    assert "[clear samples] 8/8 prompts" in capsys.readouterr().err  # a long sampling stage says how far it is


def test_clear_auto_mode_judges_answers_on_math_rows_and_embeddings_on_free_text(examples, ctx):
    """`mode: auto` is `math` where a row has an answer and `text` where it has none; with alpha = 1 the
    observed consistency is the semantic agreement alone, and the confidence mixes it with beta."""
    ex = examples.head(4)  # two math rows, two free-text rows
    kw = {"k": 2, "max_new_tokens": 6, "batch_size": 2, "alpha": 1.0, "beta": 0.4}
    auto, math_, text = (get_scorer("clear_confidence", mode=m, **kw)(ex, ctx) for m in ("auto", "math", "text"))
    has_answer = ex.get_column("answer").is_not_null().to_numpy()
    assert has_answer.any() and not has_answer.all()

    def agreement_of(table):
        return table.get_column("sample_agreement").to_numpy()

    assert not np.allclose(agreement_of(math_)[~has_answer], agreement_of(text)[~has_answer])  # judges differ
    np.testing.assert_allclose(agreement_of(auto)[has_answer], agreement_of(math_)[has_answer])
    np.testing.assert_allclose(agreement_of(auto)[~has_answer], agreement_of(text)[~has_answer], rtol=1e-5)  # float32 embeddings of other batches
    np.testing.assert_allclose(auto.get_column("observed_consistency").to_numpy(), agreement_of(auto))
    mixed = 0.4 * auto["observed_consistency"] + 0.6 * auto["self_reflection"]
    np.testing.assert_allclose(auto.get_column("clear_confidence").to_numpy(), mixed.to_numpy())


def test_token_confidence_is_mean_token_probability(examples, ctx, tiny_model_dir):
    table = get_scorer("token_confidence")(examples, ctx)
    nll = get_scorer("token_loss")(examples, ctx)
    for conf, n, m in zip(table["token_confidence"], nll["nll"], nll["response_mask"], strict=True):
        n, m = np.asarray(n), np.asarray(m)
        assert conf == pytest.approx(float(np.exp(-n[m]).mean()), rel=1e-5)


def test_embedding_matches_direct_mean_pooling(examples, ctx):
    from transformers import AutoModel, AutoTokenizer

    from pipeline.models.assets import minilm_dir
    from pipeline.selectors.sensitivity import embedding_matrix

    table = get_scorer("embedding", field="response")(examples, ctx)
    got = embedding_matrix(table.get_column("embedding"))
    tok, model = AutoTokenizer.from_pretrained(minilm_dir()), AutoModel.from_pretrained(minilm_dir())
    for i, text in enumerate(examples.get_column("response").to_list()):
        enc = tok([text], return_tensors="pt")
        with torch.no_grad():
            mean = model(**enc).last_hidden_state[0].mean(0)  # one text: no padding to mask
        expected = (mean / mean.norm()).numpy()
        assert np.allclose(got[i], expected, atol=1e-5)
    assert got.shape == (examples.height, 384) and got.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# Per-token table.


def _table(ids, nlls, masks):
    return from_arrays(ids, [np.asarray(n, dtype=np.float32) for n in nlls], [np.asarray(m) for m in masks])


def test_token_labels_and_alignment():
    base = _table(["a", "b"], [[9, 3, 2, 1], [5, 4, 3]], [[False, True, True, True], [False, True, True]])
    ref = _table(["a", "b"], [[0, 1, 1, 0.5], [0, 0, 2.9]], [[False, True, True, True], [False, True, True]])
    infl = influence(base, ref)
    assert infl["influence"].to_list() == [pytest.approx([0, 2, 1, 0.5]), pytest.approx([0, 4, 0.1])]
    # Five response tokens with influence 2, 1, 0.5, 4, 0.1: top 70% = round(3.5) = 4 tokens.
    forget = forgetting_labels(infl, rho=0.7)
    assert forget["token_label"].to_list() == [[0, 1, 1, 1], [0, 1, -1]]
    clean = cleaning_labels(infl, keep=0.6)  # top 3: 4, 2, 1
    assert clean["token_label"].to_list() == [[0, 1, 1, 0], [0, 1, 0]]
    assert align_to_input_ids([7, 8, 9], [False, True, True]) == [0, 0, 8, 9]
    assert aligned_column(clean, "token_label", ["b", "a"]) == [[0, 0, 1, 0], [0, 0, 1, 1, 0]]
    # Prompt positions take `fill` (the first input token has no prediction, the masked ones are the prompt).
    assert aligned_column(infl, "influence", ["a"], fill=-100, mask_from=base) == [[-100, -100, 2, 1, 0.5]]
    # The methods' defaults (Pang et al.: keep 0.6; forgetting tokens: rho 0.7) are the labellers' own.
    assert influence_labels(infl, "token_cleaning").equals(clean)
    assert influence_labels(infl, "forgetting").equals(forget)
    assert influence_labels(infl, "token_cleaning", 1.0)["token_label"].to_list() == [[0, 1, 1, 1], [0, 1, 1]]
    with pytest.raises(ValueError, match="unknown token method"):
        influence_labels(infl, "cleaning")


def test_token_columns_from_scored_tables(examples, ctx, tiny_model_dir, tiny_model_dir_seed1, tmp_path):
    base = get_scorer("token_loss")(examples, ctx)
    ref = get_scorer("token_loss", model=tiny_model_dir_seed1)(examples, ctx)
    base.write_parquet(tmp_path / "base.parquet")
    ref.write_parquet(tmp_path / "ref.parquet")
    encoded = encode_examples(load_tokenizer(tiny_model_dir), examples, ctx.max_length)
    cols = token_columns(tmp_path / "base.parquet", tmp_path / "ref.parquet", "forgetting")
    rho1 = token_columns(tmp_path / "base.parquet", tmp_path / "ref.parquet", "rho1")
    n_resp = sum(sum(e["completion_mask"][1:]) for e in encoded)
    labels = cols["token_label"]
    assert sum(v == 1 for row in labels for v in row) == round(0.7 * n_resp)
    for enc, lab, rn, refrow in zip(encoded, labels, rho1["ref_nll"], ref["nll"], strict=True):
        assert len(lab) == len(rn) == len(enc["input_ids"])
        for t, (m, v) in enumerate(zip(enc["completion_mask"], lab, strict=True)):
            assert (v != 0) == bool(m and t > 0)  # labels only on response tokens
        assert rn[-1] == pytest.approx(refrow[-1])  # token t's reference NLL sits at index t


def test_clear_samples_with_transformers_where_the_slot_decoder_does_not_apply(examples, ctx, tiny_model_dir):
    """A model whose generation config processes logits (here a repetition penalty) samples through
    `transformers`' generate: k answers per prompt, the same for the same seed, others for another."""
    from pipeline.models.generate import slots_supported
    from pipeline.models.loading import load_model, load_tokenizer
    from pipeline.scorers.clear import sample_answers

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    model.generation_config.repetition_penalty = 1.3
    assert not slots_supported(model)
    prompts, ids = examples.head(3).get_column("prompt").to_list(), examples.head(3).get_column("id").to_list()
    one = sample_answers(model, tok, prompts, ids, 2, 1.0, 6, 128, 2, seed=0)
    assert len(one) == 3 and all(len(answers) == 2 for answers in one)
    assert one == sample_answers(model, tok, prompts, ids, 2, 1.0, 6, 128, 2, seed=0)
    assert one != sample_answers(model, tok, prompts, ids, 2, 1.0, 6, 128, 2, seed=1)
    # An answer that ends in EOS (forced at the last step here) is read as text, without the special token.
    model.generation_config.forced_eos_token_id = tok.eos_token_id
    ended = sample_answers(model, tok, prompts, ids, 2, 1.0, 6, 128, 2, seed=0)
    assert all(a and tok.eos_token not in a for answers in ended for a in answers)


def test_clear_needs_at_least_one_sample():
    with pytest.raises(ValueError, match="k must be >= 1"):
        get_scorer("clear_confidence", k=0)
