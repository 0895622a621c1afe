"""Cached, sharded, resumable scoring: cache keys, crash-resume, Ray executor, the batching engine."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import pipeline.scorers.cache as scoring
from pipeline.core.hashing import model_revision
from pipeline.core.registry import ConfigError
from pipeline.data import SCHEMA, example_id
from pipeline.models.engine import length_batches, token_nll
from pipeline.scorers import SCORERS, ScoreContext, Scorer, get_scorer, register_scorer
from pipeline.scorers.cache import cache_key_parts, compute_scores, read_meta, score_cached


def make_examples(n: int, tag: str = "") -> pl.DataFrame:
    rows = []
    for i in range(n):
        p, r = f"Q{i}{tag}: add {i} and {i + 1}." + " again" * (i % 4), f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}"
        rows.append({"id": example_id(p, r), "prompt": p, "response": r, "source": "t", "domain": "math",
                     "answer": str(2 * i + 1), "messages": None, "meta": None})
    return pl.DataFrame(rows, schema=SCHEMA)


CALLS: list[int] = []


@register_scorer("_test_length")
class _TestLength(Scorer):
    """A model-free scorer that counts its calls: for cache-key tests."""

    version = "1"

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> tuple[pl.DataFrame, dict]:
        CALLS.append(examples.height)
        table = pl.DataFrame({"id": examples["id"], "length": examples["response"].str.len_chars() * self.scale})
        return table, {"rows": examples.height}


@pytest.fixture(scope="module")
def ctx(tiny_model_dir) -> ScoreContext:
    return ScoreContext(model_name=tiny_model_dir, max_length=64, max_tokens=128, progress=False)


def test_cache_hit_and_miss_on_each_key_part(ctx, tmp_path, tiny_model_dir, monkeypatch):
    ex = make_examples(6)
    CALLS.clear()
    first = score_cached(ex, "_test_length", ctx, tmp_path, {"scale": 1.0}, shard_size=4)
    assert CALLS == [4, 2]
    assert score_cached(ex, "_test_length", ctx, tmp_path, {"scale": 1.0}, shard_size=4) == first
    assert CALLS == [4, 2]  # hit: nothing recomputed
    assert read_meta(first)["key"]["scorer"] == "_test_length"
    assert pl.read_parquet(first).equals(pl.DataFrame({"id": ex["id"], "length": ex["response"].str.len_chars() * 1.0}))

    changed = ex.with_columns(pl.Series("response", ["other"] + ex["response"].to_list()[1:]))
    changed = changed.with_columns(pl.Series("id", [example_id(p, r) for p, r in changed.select("prompt", "response").rows()]))
    misses = [
        score_cached(changed, "_test_length", ctx, tmp_path, {"scale": 1.0}, shard_size=4),  # data content
        score_cached(ex, "_test_length", ctx, tmp_path, {"scale": 2.0}, shard_size=4),  # scorer params
    ]
    other_model = tmp_path / "model-copy"
    other_model.mkdir()
    for f in os.listdir(tiny_model_dir):
        (other_model / f).write_bytes((Path(tiny_model_dir) / f).read_bytes())
    misses.append(score_cached(ex, "_test_length", ScoreContext(model_name=str(other_model), max_length=64,
                                                              progress=False), tmp_path, {"scale": 1.0}))  # model
    monkeypatch.setattr(_TestLength, "version", "2")
    misses.append(score_cached(ex, "_test_length", ctx, tmp_path, {"scale": 1.0}, shard_size=4))  # code version
    assert len({first, *misses}) == 5
    assert len(CALLS) == 2 + 2 + 2 + 1 + 2


def test_model_revision_is_content_based(tmp_path, tiny_model_dir):
    import shutil

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    a = model_revision(folder)
    weights = next(p for p in folder.iterdir() if p.suffix == ".safetensors")
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched, same bytes
    assert model_revision(folder) == a
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    assert model_revision(folder) != a
    assert model_revision("some-org/some-model") == "some-org/some-model"


def test_resume_after_crash_is_byte_identical(ctx, tmp_path, monkeypatch):
    import pipeline.scorers.perplexity as ppl_mod

    ex = make_examples(10)
    clean = score_cached(ex, "perplexity", ctx, tmp_path / "clean", shard_size=3)

    real_write = scoring._write_shard

    def crash_at_shard_2(entry, i, result, shard, scorer):
        if i == 2:
            raise KeyboardInterrupt("simulated kill")
        real_write(entry, i, result, shard, scorer)

    monkeypatch.setattr(scoring, "_write_shard", crash_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        score_cached(ex, "perplexity", ctx, tmp_path / "crash", shard_size=3)
    monkeypatch.setattr(scoring, "_write_shard", real_write)
    shard_dir = next((tmp_path / "crash" / "perplexity").iterdir()) / "shards"
    assert sorted(os.listdir(shard_dir)) == ["00000.parquet", "00001.parquet"]

    scored: list[int] = []
    real_nll = ppl_mod.token_nll
    monkeypatch.setattr(ppl_mod, "token_nll", lambda model, enc, **kw: scored.append(len(enc)) or real_nll(model, enc, **kw))
    resumed = score_cached(ex, "perplexity", ctx, tmp_path / "crash", shard_size=3)
    assert scored == [3, 1]  # only shards 2 and 3 were scored again
    assert resumed.read_bytes() == clean.read_bytes()


def test_unshardable_scorer_runs_once(ctx, tmp_path, monkeypatch):
    monkeypatch.setattr(_TestLength, "shardable", False)
    CALLS.clear()
    path = score_cached(make_examples(7), "_test_length", ctx, tmp_path, shard_size=2)
    assert CALLS == [7] and read_meta(path)["rows"] == 7


def test_compute_scores_still_writes_one_table(ctx, tmp_path):
    ex = make_examples(3)
    path = compute_scores(ex, "_test_length", ctx, tmp_path / "s.parquet", {"scale": 3.0})
    assert pl.read_parquet(path)["length"].to_list() == (ex["response"].str.len_chars() * 3.0).to_list()
    assert read_meta(path) == {"rows": 3}


def test_learnability_trains_its_reference_once(ctx, tmp_path):
    from pipeline.stages.plan import ScorerSpec
    from pipeline.stages.score import with_reference
    from pipeline.training.reference import reference_dir

    ex = make_examples(4)
    params = {"reference_train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2, "warmup_ratio": 0.0}}
    spec = ScorerSpec("learnability", params, get_scorer("learnability", **params))
    wired = with_reference(spec, ex, ctx, str(tmp_path))
    assert Path(wired["reference"]).parent == reference_dir(
        ctx.model_name, ex, tmp_path, {"max_length": ctx.max_length, **params["reference_train"]}, ctx.seed)
    assert with_reference(spec, ex, ctx, str(tmp_path)) == wired  # trained once, then reused
    path = score_cached(ex, "learnability", ctx, tmp_path / "scorers", wired)
    table = pl.read_parquet(path)
    assert np.allclose(table["learnability"], 1 - table["loss_ref"] / table["loss_base"])
    assert (table["loss_ref"] != table["loss_base"]).all()  # the reference moved


def test_length_batches_respect_budget():
    lengths = [5, 50, 7, 48, 3, 30, 31]
    batches = length_batches(lengths, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in b) * len(b) <= 100 for b in batches)


def test_token_nll_batched_equals_one_by_one(tiny_model_dir):
    from pipeline.models.loading import encode_examples, load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, dtype=torch.float32)
    enc = encode_examples(tok, make_examples(5), 64)
    batched = token_nll(model, enc, max_tokens=512, pad_id=tok.pad_token_id, progress=False)
    single = [token_nll(model, [e], max_tokens=512, progress=False)[0] for e in enc]
    for a, b in zip(batched, single, strict=True):
        assert a.shape == (len(b),) and np.allclose(a, b, atol=1e-4)


def test_response_only_projects_only_response_tokens(tiny_model_dir):
    from pipeline.models.loading import encode_examples, load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, dtype=torch.float32)
    enc = encode_examples(tok, make_examples(5), 64)
    full = token_nll(model, enc, max_tokens=512, pad_id=tok.pad_token_id, progress=False)
    resp = token_nll(model, enc, max_tokens=512, pad_id=tok.pad_token_id, progress=False, response_only=True)
    for e, a, b in zip(enc, full, resp, strict=True):
        mask = np.asarray(e["completion_mask"][1:], dtype=bool)
        assert mask.any() and np.isnan(b[~mask]).all()
        assert np.allclose(a[mask], b[mask], atol=1e-5)


def test_ray_executor_matches_in_process(ctx, tmp_path):
    ray = pytest.importorskip("ray")
    ex = make_examples(8)
    local = score_cached(ex, "perplexity", ctx, tmp_path / "local", shard_size=3)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = score_cached(ex, "perplexity", ctx, tmp_path / "ray", shard_size=3, executor="ray")
    finally:
        ray.shutdown()
    assert pl.read_parquet(remote).equals(pl.read_parquet(local))
    assert remote.read_bytes() == local.read_bytes()


def test_registry_lists_all_scorers():
    names = set(SCORERS.names())
    assert {"perplexity", "learnability", "information_gain", "clear_confidence", "token_confidence",
            "embedding", "token_loss"} <= names


def test_scorer_classes_declare_what_the_cache_needs():
    declared = {name: (cls.version, cls.uses_model, cls.shardable, cls.model_params, "reference_model" in cls.needs)
                for name in ("perplexity", "token_loss", "learnability", "information_gain", "clear_confidence",
                             "token_confidence", "embedding") for cls in [SCORERS.get(name)]}
    assert declared == {
        "perplexity": ("2", True, True, (), False),
        "token_loss": ("1", True, True, ("model",), False),
        "learnability": ("2", True, True, ("reference",), True),
        "information_gain": ("2", True, False, ("embedder",), False),
        "clear_confidence": ("3", True, True, ("embedder",), False),
        "token_confidence": ("2", True, True, (), False),
        "embedding": ("1", False, True, ("embedder",), False),
    }
    assert all(SCORERS.get(n).name == n for n in declared)
    assert isinstance(get_scorer("perplexity"), SCORERS.get("perplexity"))


def test_wrong_parameters_fail_before_any_work(ctx, tmp_path):
    with pytest.raises(ConfigError, match=r"score\.params\.ful_text") as err:
        get_scorer("perplexity", ful_text=True)
    assert err.value.key == "score.params.ful_text" and "full_text" in str(err.value)  # names what exists
    with pytest.raises(ConfigError, match=r"score\.params\.full_text") as err:
        get_scorer("perplexity", full_text="maybe")
    assert err.value.key == "score.params.full_text"
    with pytest.raises(ConfigError, match=r"score\.params\.mode"):
        get_scorer("clear_confidence", mode="nli")
    CALLS.clear()
    with pytest.raises(ConfigError, match=r"score\.params\.scal"):
        score_cached(make_examples(3), "_test_length", ctx, tmp_path / "cache", {"scal": 2.0})
    assert CALLS == [] and not (tmp_path / "cache").exists()


def test_register_scorer_takes_only_scorer_classes():
    def plain(examples, ctx):
        return examples.select("id")

    with pytest.raises(TypeError, match="Scorer"):
        register_scorer("_test_plain")(plain)

    class NoScore(Scorer):
        pass

    with pytest.raises(TypeError, match="score"):
        register_scorer("_test_no_score")(NoScore)
    assert "_test_plain" not in SCORERS.names() and "_test_no_score" not in SCORERS.names()


@pytest.mark.parametrize("body, message", [
    ("shardabel = False", "did you mean 'shardable'"),
    ("VERSION = '2'", "did you mean 'version'"),
    ("key_models = ('embedder',)", "did you mean 'model_params'"),
    ("version = 2", "version must be a str"),
    ("model_params = ('embeder',)", "'embeder', which is not a parameter"),
    ("trains_reference = True", "did you mean \"needs = {'reference_model'}\""),
    ("needs = {'reference_model'}", "must take the parameter 'reference'"),
    ("needs = {'gpu'}", "unknown 'gpu'"),
])
def test_misdeclared_scorer_fails_where_it_is_defined(body, message):
    source = f"class Bad(Scorer):\n    {body}\n\n    def __init__(self, embedder: str = 'x'):\n" \
             "        self.embedder = embedder\n\n    def score(self, examples, ctx):\n        return examples\n"
    with pytest.raises(TypeError, match=message):
        exec(source, {"Scorer": Scorer})


def test_docs_write_your_own_scorer_example_runs(ctx, tmp_path, monkeypatch):
    """docs/scorers.md's example scorer, saved as my_scorers.py, works by module:attr and by its name."""
    import re
    import sys

    docs = Path(__file__).resolve().parents[1] / "docs" / "scorers.md"
    section = docs.read_text().split("## Write your own scorer", 1)[1]
    (tmp_path / "my_scorers.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_scorers", raising=False)
    monkeypatch.setattr(SCORERS, "_items", dict(SCORERS._items))
    ex = pl.DataFrame([{"id": "a", "prompt": "Add 2 and 3.", "response": "add 2 and 3: five"},
                       {"id": "b", "prompt": "Hi", "response": ""}])
    path = score_cached(ex, "my_scorers:PromptOverlap", ctx, tmp_path / "cache", {"lowercase": True})
    assert pl.read_parquet(path)["prompt_overlap"].to_list() == pytest.approx([3 / 5, 0.0])  # add, 2, and
    assert get_scorer("prompt_overlap", lowercase=False)(ex, ctx)["prompt_overlap"].to_list() == [2 / 5, 0.0]
    with pytest.raises(ConfigError, match=r"score\.params\.lowercas"):
        get_scorer("my_scorers:PromptOverlap", lowercas=False)


def test_user_scorer_round_trips_through_score_cached(ctx, tmp_path, monkeypatch):
    monkeypatch.setattr(SCORERS, "_items", dict(SCORERS._items))  # registered only for this test
    seen: list[int] = []

    @register_scorer("_test_words")
    class WordCount(Scorer):
        """Words per response, times `weight`: a user's scorer with one parameter and no model."""

        uses_model = False

        def __init__(self, weight: int = 1):
            self.weight = weight

        def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> pl.DataFrame:
            seen.append(examples.height)
            words = examples["response"].str.split(" ").list.len() * self.weight
            return pl.DataFrame({"id": examples["id"], "words": words})

    ex = make_examples(5)
    path = score_cached(ex, "_test_words", ctx, tmp_path, {"weight": 2}, shard_size=2)
    assert WordCount.name == "_test_words" and seen == [2, 2, 1]
    expected = pl.DataFrame({"id": ex["id"], "words": ex["response"].str.split(" ").list.len() * 2})
    assert pl.read_parquet(path).equals(expected)
    key = read_meta(path)["key"]
    assert key["scorer"] == "_test_words" and key["params"] == {"weight": 2} and key["model_revision"] is None
    assert key["code_version"].startswith("1:")  # the base class's default version
    assert score_cached(ex, "_test_words", ctx, tmp_path, {"weight": 2}, shard_size=2) == path
    assert seen == [2, 2, 1]  # hit


def test_model_params_defaults_enter_the_key(ctx):
    from pipeline.models.assets import DEFAULT_EMBEDDER, resolve_embedder

    parts = cache_key_parts(make_examples(2), "embedding", ctx, {})
    assert parts["models"] == {"embedder": model_revision(resolve_embedder(DEFAULT_EMBEDDER))}
    assert parts["model_revision"] is None  # uses_model = False


def test_a_deterministic_scorer_is_cached_across_seeds_and_a_seeded_one_is_not(ctx, tmp_path):
    """`seeded = False` (perplexity, IFD, embedding, learnability given its reference, ...) takes the seed out of
    the key: a study's other seeds reuse the table; a scorer that samples or trains keeps one table per seed."""
    import dataclasses

    ex = make_examples(4)
    other_seed = dataclasses.replace(ctx, seed=ctx.seed + 1)
    CALLS.clear()
    seeded = [score_cached(ex, "_test_length", c, tmp_path, {"scale": 1.0}) for c in (ctx, other_seed)]
    assert seeded[0] != seeded[1] and len(CALLS) == 2
    first = score_cached(ex, "perplexity", ctx, tmp_path)
    assert score_cached(ex, "perplexity", other_seed, tmp_path) == first
    assert read_meta(first)["key"]["seed"] is None
    assert not get_scorer("perplexity").seeded and not get_scorer("ifd").seeded
    assert get_scorer("clear_confidence").seeded and get_scorer("information_gain").seeded


def test_seeded_must_be_a_bool():
    with pytest.raises(TypeError, match="seeded must be a bool"):
        type("BadSeeded", (Scorer,), {"seeded": "no", "score": lambda self, examples, ctx: None})
