"""LESS (arXiv 2402.04333): copies of the target rank first, the projection is a seeded JL map, the score is the
reference's formula recomputed independently (Adam direction for the pool, plain gradient for the target,
mean per task, max over tasks), and a `fraction` rule on `less` decides what trains."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.core.registry import ConfigError
from pipeline.data.examples import example_id
from pipeline.scorers import ScoreContext, get_scorer
from pipeline.scorers.less import BLOCK, checkpoint_dirs, influence, project, rademacher_block

TARGET = [(f"What is {a} + {b}?", f"{a} + {b} = {a + b}. #### {a + b}") for a, b in [(3, 4), (12, 9), (25, 17), (8, 6)]]
ARITH = [(f"Compute {a} * {b}.", f"{a} * {b} = {a * b}. #### {a * b}")
         for a, b in [(2, 3), (4, 5), (6, 7), (3, 9), (7, 8), (5, 5), (9, 2), (11, 3)]]
TEXT = [("Describe the weather today.", "It is sunny with a light breeze and a few clouds over the hills."),
        ("Write a line about cats.", "Cats sleep in the warm afternoon light by the window."),
        ("Name a famous painter.", "Claude Monet painted water lilies in his garden at Giverny."),
        ("What is a river?", "A river is a natural stream of water flowing toward an ocean or lake."),
        ("Tell me about bread.", "Bread is baked from flour, water, yeast and salt in a hot oven."),
        ("Say hello politely.", "Good morning, it is a pleasure to meet you."),
        ("Give a travel tip.", "Pack light and keep a copy of your passport somewhere separate."),
        ("Explain photosynthesis briefly.", "Plants turn light, water and carbon dioxide into sugar and oxygen.")]


def rows(pairs: list[tuple[str, str]], domain: str = "math") -> pl.DataFrame:
    return pl.DataFrame({"id": [example_id(p, r) for p, r in pairs], "prompt": [p for p, _ in pairs],
                         "response": [r for _, r in pairs], "domain": [domain] * len(pairs)})


@pytest.fixture(scope="module")
def warmup(tmp_path_factory, tiny_model_dir):
    """A LESS warm-up of the tiny model, trained the way the score stage trains it (one LoRA step per epoch)."""
    from pipeline.training.reference import reference_model

    pool = rows(ARITH + TEXT + TARGET)
    scorer = get_scorer("less", target=str(_target_file(tmp_path_factory.mktemp("t"))), warmup_epochs=2)
    picked, settings = scorer.reference_plan(pool, {"max_length": 128, "learning_rate": 1e-3, "batch_size": 4}, 0)
    assert picked.height == math.ceil(0.05 * pool.height) and settings["save_steps"] == 1
    assert settings["lora"]["r"] == 8 and settings["epochs"] == 2
    return reference_model(tiny_model_dir, picked, tmp_path_factory.mktemp("cache"), settings, 0)


def _target_file(folder):
    path = folder / "target.parquet"
    rows(TARGET).write_parquet(path)
    return path


def _ctx(tiny_model_dir) -> ScoreContext:
    return ScoreContext(model_name=tiny_model_dir, max_length=128, progress=False)


def test_copies_of_the_target_rank_first(tmp_path, tiny_model_dir, warmup):
    """A pool of products, unrelated text and copies of the (sum) target rows: copies rank 1-4, text last."""
    pool = rows(ARITH + TEXT + TARGET)
    scorer = get_scorer("less", target=str(_target_file(tmp_path)), warmup=warmup, dim=256)
    table, meta = scorer.score(pool, _ctx(tiny_model_dir))
    kinds = ["arith"] * len(ARITH) + ["text"] * len(TEXT) + ["copy"] * len(TARGET)
    ranked = table.with_columns(kind=pl.Series(kinds), rank=pl.col("less").rank(descending=True))
    mean_rank = dict(ranked.group_by("kind").agg(pl.col("rank").mean()).iter_rows())
    assert mean_rank["copy"] <= 3.0 and mean_rank["copy"] < mean_rank["arith"] < mean_rank["text"]
    assert meta["less"]["checkpoints"] == ["checkpoint-2"] and meta["less"]["target_rows"] == 4
    assert (tmp_path / "target.parquet").exists() and len(checkpoint_dirs(warmup)) == 2  # one per epoch


def test_projection_is_a_seeded_block_rademacher_map():
    """Deterministic for a seed, another seed gives another map, equal to the explicit matrix product block by
    block, and (JL) it keeps inner products of unit vectors within a few 1/sqrt(dim)."""
    gen = torch.Generator().manual_seed(1)
    grads = torch.randn(6, 2 * BLOCK + 100, generator=gen)
    a, b, c = project(grads, 512, seed=0), project(grads, 512, seed=0), project(grads, 512, seed=1)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.equal(rademacher_block(0, 0, 64, 512), rademacher_block(0, 1, 64, 512))  # blocks differ
    explicit = torch.cat([rademacher_block(0, i, n, 512) for i, n in enumerate([BLOCK, BLOCK, 100])])
    assert explicit.abs().unique().tolist() == pytest.approx([1 / math.sqrt(512)])
    torch.testing.assert_close(a, grads @ explicit, rtol=1e-4, atol=1e-3)
    unit = torch.nn.functional.normalize(grads[:, :3000], dim=1)
    unit[1] = 0.8 * unit[0] + 0.6 * unit[1]  # a pair with inner product near 0.8
    proj = project(unit, 2048, seed=3)
    assert torch.allclose(proj @ proj.T, unit @ unit.T, atol=0.12)


def test_target_file_reads_jsonl_and_parquet_alike(tmp_path):
    """A JSONL target (any source `pipeline ingest` reads) gives the rows and ids of the same parquet target."""
    from pipeline.scorers.less import load_target

    jsonl = tmp_path / "target.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in TARGET))
    from_jsonl, from_parquet = load_target(str(jsonl)), load_target(str(_target_file(tmp_path)))
    assert from_jsonl.select("id", "prompt", "response").equals(from_parquet.select("id", "prompt", "response"))


def test_projection_of_low_precision_gradients_runs_in_float32():
    """bf16 gradients (a GPU run's dtype) are projected in float32: the same features as their float32 copy."""
    grads = torch.randn(3, BLOCK + 7, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    low = project(grads, 64, seed=0)
    assert low.dtype == torch.float32 and torch.equal(low, project(grads.float(), 64, seed=0))


def _independent_features(model, tok, ckpt, prompt: str, response: str, adam: bool) -> torch.Tensor:
    """The LESS feature of one example from scratch: the loss averaged from log-softmax over the response
    tokens, the gradient of the adapter's LoRA weights, the optimizer moments read from optimizer.pt by position."""
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    p_ids = tok(tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                        add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + r_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    on_response = torch.arange(len(targets)) >= len(p_ids) - 1
    loss = -logp[torch.arange(len(targets)), targets][on_response].mean()
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, [p for _, p in named])])
    if not adam:
        return g
    saved = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    m = torch.cat([saved["state"][i]["exp_avg"].reshape(-1) for i in range(len(named))])
    v = torch.cat([saved["state"][i]["exp_avg_sq"].reshape(-1) for i in range(len(named))])
    (b1, b2), eps = saved["param_groups"][0]["betas"], saved["param_groups"][0]["eps"]
    return (b1 * m + (1 - b1) * g) / ((b2 * v + (1 - b2) * g * g) + eps).sqrt()


def test_score_is_the_adam_vs_sgd_cosine_computed_independently(tmp_path, tiny_model_dir, warmup):
    """One pool row, one target row: `less` = cos(P adam(pool), P grad(target)) with Adam's moments of the
    last checkpoint; and the Adam direction is not the plain gradient (the preconditioning matters here)."""
    from pipeline.scorers.less import checkpoint_dirs as ckpts

    target = rows([TARGET[0]])
    target.write_parquet(tmp_path / "one.parquet")
    pool = rows([ARITH[0], TEXT[0]])
    table, _ = get_scorer("less", target=str(tmp_path / "one.parquet"), warmup=warmup, dim=512, seed=7).score(
        pool, _ctx(tiny_model_dir))
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = ckpts(warmup)[-1]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(ckpt), is_trainable=True).eval()
    g_target = _independent_features(model, tok, ckpt, *TARGET[0], adam=False)
    for (prompt, response), got in zip([ARITH[0], TEXT[0]], table["less"].to_list(), strict=True):
        a_pool = _independent_features(model, tok, ckpt, prompt, response, adam=True)
        pa, pg = project(torch.stack([a_pool, g_target]), 512, seed=7)
        assert got == pytest.approx(float(torch.nn.functional.cosine_similarity(pa, pg, dim=0)), abs=1e-4)
        g_pool = _independent_features(model, tok, ckpt, prompt, response, adam=False)
        plain = torch.nn.functional.cosine_similarity(*project(torch.stack([g_pool, g_target]), 512, seed=7), dim=0)
        assert abs(got - float(plain)) > 1e-3


def test_influence_is_lr_weighted_mean_per_task_then_max():
    """`matching.py`: weights normalized to sum 1, cosine summed over checkpoints, mean within each target task,
    max over tasks; checked against numpy on random features."""
    rng = np.random.default_rng(0)
    train = [torch.tensor(rng.normal(size=(5, 8)), dtype=torch.float32) for _ in range(2)]
    target = [torch.tensor(rng.normal(size=(4, 8)), dtype=torch.float32) for _ in range(2)]
    tasks = ["a", "b", "a", "b"]
    got = influence(train, target, [3e-4, 1e-4], tasks)

    def cos(x, y):
        x, y = x.numpy().astype(np.float64), y.numpy().astype(np.float64)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T

    sim = 0.75 * cos(train[0], target[0]) + 0.25 * cos(train[1], target[1])
    expected = np.maximum(sim[:, [0, 2]].mean(axis=1), sim[:, [1, 3]].mean(axis=1))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    one_task = influence(train[:1], target[:1], [1.0], ["x"] * 4)
    np.testing.assert_allclose(one_task, cos(train[0], target[0]).mean(axis=1), rtol=1e-5)


def test_missing_target_is_one_config_error(tmp_path):
    from pipeline.stages.score import with_target

    with pytest.raises(ConfigError, match="target: .*no such file"):
        get_scorer("less", target=str(tmp_path / "nope.jsonl"))
    for key, value in (("dim", 0), ("checkpoints", 0), ("warmup_epochs", 0), ("warmup_fraction", 0.0)):
        with pytest.raises(ConfigError, match=f"^score.params.{key}: must be"):
            get_scorer("less", **{key: value})
    assert get_scorer("less", dim=1, checkpoints=1, warmup_epochs=1, warmup_fraction=1.0).dim == 1  # the edges are valid
    with pytest.raises(ConfigError, match="^score.params.lora.r: "):  # at construction, not after the warm-up
        get_scorer("less", lora={"r": 0})

    class Spec:
        scorer, where = get_scorer("less"), "score.params"

    with pytest.raises(ConfigError, match="score.params.target: the run has no validation rows"):
        with_target(Spec(), {}, None, tmp_path)


def test_fraction_on_less_reaches_training(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """sft-math scored by `less` against its validation split, top half kept: the warm-up trained a LoRA on 5% of
    the pool, and the final training set is exactly the kept rows."""
    from pipeline.cli import main
    from pipeline.training import train as train_module
    from tests.test_flow import SMALL

    trained_on: list[list[str]] = []
    build = train_module.build_dataset

    def spy(tokenizer, examples, max_length, weights=None, token_columns=None):
        trained_on.append(examples.get_column("id").to_list())
        return build(tokenizer, examples, max_length, weights, token_columns)

    monkeypatch.setattr(train_module, "build_dataset", spy)
    args = ["run", "sft-math", "--run-dir", str(tmp_path / "run"), "--set", f"model={tiny_model_dir}",
            "--set", f"cards_dir={tmp_path / 'cards'}", "--set", f"cache_dir={tmp_path / 'cache'}"]
    for s in [*SMALL, "score.scorer=less", "score.params={dim: 128, warmup_epochs: 1}", "train.max_steps=1",
              "select={rule: fraction, column: less, fraction: 0.5, order: highest}"]:
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    selection = pl.read_parquet(tmp_path / "run" / "selection.parquet")
    scores = pl.read_parquet(tmp_path / "run" / "scores.parquet")
    kept = set(selection.filter(pl.col("kept"))["id"].to_list())
    top = set(scores.sort("less", descending=True).head(8)["id"].to_list())
    assert len(kept) == 8 and kept == top
    (reference,) = (tmp_path / "cache" / "references").iterdir()
    warm = json.loads((reference / "reference.json").read_text())
    assert warm["rows"] == 1 and warm["train"]["lora"]["r"] == 8  # ceil(5% of 16) rows, LoRA
    assert len(trained_on) == 2 and trained_on[0] == warm["ids"] and set(trained_on[1]) == kept


def test_checkpoint_weight_is_the_mean_learning_rate_of_its_epoch(tmp_path):
    """The paper weighs each checkpoint by its epoch's mean learning rate, read from trainer_state.json."""
    from pipeline.scorers.less import checkpoint_weight

    history = [{"epoch": 0.5, "learning_rate": 4e-4}, {"epoch": 1.0, "learning_rate": 3e-4},
               {"epoch": 1.5, "learning_rate": 2e-4}, {"epoch": 2.0, "learning_rate": 1e-4},
               {"epoch": 2.0, "train_loss": 1.0}]
    for epoch, expected in ((1.0, 3.5e-4), (2.0, 1.5e-4)):
        ckpt = tmp_path / f"checkpoint-{int(epoch)}"
        ckpt.mkdir()
        (ckpt / "trainer_state.json").write_text(json.dumps({"epoch": epoch, "log_history": history}))
        assert checkpoint_weight(ckpt) == pytest.approx(expected)
    (tmp_path / "none").mkdir()
    assert checkpoint_weight(tmp_path / "none") == 1.0  # nothing logged: equal weights


def test_feature_cache_is_keyed_by_max_length(tmp_path, tiny_model_dir, warmup):
    """Features are cached next to the warm-up; scoring again with a shorter `max_length` (other tokens, other
    gradients) must compute new features, not read the longer run's."""
    scorer = get_scorer("less", target=str(_target_file(tmp_path)), warmup=warmup, dim=64, seed=3)
    pool = rows(TEXT[:3])
    full, _ = scorer.score(pool, _ctx(tiny_model_dir))
    short, _ = scorer.score(pool, ScoreContext(model_name=tiny_model_dir, max_length=40, progress=False))
    assert np.isfinite(short["less"].to_numpy()).all()
    assert not np.allclose(full["less"].to_numpy(), short["less"].to_numpy())
