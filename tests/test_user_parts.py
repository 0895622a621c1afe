"""A new part is one file of the user's: a loss needing a reference's per-token NLL, a column provider, a
selector that trains, a scorer, all from a recipe with no edit under pipeline/ (copy these to start)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from pipeline.cli import main
from tests.test_flow import SMALL

# (a) A Rho-1-like loss of the user's: cross-entropy weighted by how much worse the model does than a
# held-out reference on each token (the built-in `ref_nll` provider makes that column), plus a column
# the user makes themselves with their own provider.
USER_LOSS = '''
import torch

from pipeline.losses import TokenLoss, register_loss
from pipeline.training.columns import ColumnProvider, register_column

SEEN = []  # what the loss saw, for the test


@register_column("position")
class Position(ColumnProvider):
    """Each token's position in its example, as a fraction of the example's length."""

    def compute(self, examples, ctx):
        from pipeline.models.loading import encode_examples, load_tokenizer

        encoded = encode_examples(load_tokenizer(ctx.model), examples, ctx.max_length)
        return {"position": [[i / len(e["input_ids"]) for i in range(len(e["input_ids"]))] for e in encoded]}


@register_loss("excess_weighted")
class ExcessWeighted(TokenLoss):
    """CE with each token weighted by sigmoid(scale * (nll - ref_nll)), detached."""

    requires = ("ref_nll", "position")

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def per_token(self, nll, ctx):
        ref = ctx.column("ref_nll").to(nll)
        SEEN.append((float((ref * ctx.mask).sum() / ctx.mask.sum()), float(ctx.column("position").max())))
        weight = torch.sigmoid(self.scale * (nll.detach() - ref)) * ctx.mask
        return weight * nll / ctx.counts["tokens"]
'''

# (b) A selector of the user's that fine-tunes the base (declares it) and keeps the rows the tuned model
# was trained on; CALLS counts how often it trained.
USER_SELECTOR = '''
import polars as pl

from pipeline.selectors import Selector, register_selector

CALLS = []


@register_selector("train_half")
class TrainHalf(Selector):
    """Fine-tune on the first half of the rows; keep that half."""

    needs = {"trainer"}

    def __init__(self, steps: int = 1):
        self.steps = steps

    def select(self, scores, ctx):
        half = scores.head(scores.height // 2)
        rows = ctx.examples.join(half.select("id"), on="id", how="semi")
        CALLS.append(ctx.train_fn(rows, ctx.seed, {"max_steps": self.steps, "batch_size": 2}))
        kept = scores.get_column("id").is_in(half.get_column("id").implode())
        return pl.DataFrame({"id": scores["id"], "kept": kept, "weight": [1.0] * scores.height,
                             "reason": ["kept: trained on" if k else "dropped: not trained on" for k in kept]})


@register_selector("sneaky")
class Sneaky(Selector):
    """Trains without declaring it: the stage refuses."""

    def select(self, scores, ctx):
        ctx.train_fn(ctx.examples, ctx.seed)
'''

USER_SCORER = '''
import polars as pl

from pipeline.scorers import Scorer, register_scorer


@register_scorer("length")
class Length(Scorer):
    """Response length in characters, times `scale`."""

    uses_model = False

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def columns(self):
        return ["length"]

    def score(self, examples, ctx):
        return pl.DataFrame({"id": examples["id"], "length": examples["response"].str.len_chars() * self.scale})
'''


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """The user's project folder (the working directory) with their part files."""
    project = tmp_path / "project"
    project.mkdir()
    for name, source in (("my_losses", USER_LOSS), ("my_selectors", USER_SELECTOR), ("my_scorers", USER_SCORER)):
        (project / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
    monkeypatch.chdir(project)
    yield project
    for name in ("my_losses", "my_selectors", "my_scorers"):
        sys.modules.pop(name, None)


def _run(tmp_path, model, recipe, run, *extra):
    args = ["run", recipe, "--run-dir", str(tmp_path / run), "--set", f"model={model}",
            "--set", f"cards_dir={tmp_path / 'cards'}", "--set", f"cache_dir={tmp_path / 'cache'}"]
    for s in [*SMALL, *extra]:
        args += ["--set", s]
    return main(args)


def test_users_loss_gets_a_reference_nll_and_their_own_column(user_dir, tmp_path, tiny_model_dir, capsys):
    """(a) `train.loss=my_losses:ExcessWeighted` trains with `ref_nll` from held-out references and the
    user's own `position` column; nothing under pipeline/ names either."""
    refs = "train.token_labels.reference_train={max_steps: 1, batch_size: 4}"
    assert _run(tmp_path, tiny_model_dir, "sft-math", "a", "train.loss=my_losses:ExcessWeighted",
                "train.loss_params.scale=2.0", refs) == 0
    assert "training columns (ref_nll, position)" in capsys.readouterr().out
    seen = sys.modules["my_losses"].SEEN
    assert seen and all(ref > 0 and 0 < pos < 1 for ref, pos in seen)  # real per-token values reached the loss
    references = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "references").glob("*/reference.json")]
    assert len(references) == 2  # cross-fitted: each kept example scored by a reference that never saw it
    assert not set(references[0]["ids"]) & set(references[1]["ids"])
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["train"]["loss"] == "my_losses:ExcessWeighted" and metrics["train"]["steps"] == 2


def test_a_loss_requiring_a_column_nobody_makes_fails_before_running(user_dir, tmp_path, capsys):
    (user_dir / "bad_loss.py").write_text(
        "from pipeline.losses import TokenLoss\n\nclass NeedsX(TokenLoss):\n    requires = ('x_col',)\n\n"
        "    def per_token(self, nll, ctx):\n        return nll\n")
    assert main(["recipes", "--show", "sft-math", "--set", "train.loss=bad_loss:NeedsX"]) == 2
    err = capsys.readouterr().err
    assert "train.columns.x_col" in err and "@register_column('x_col')" in err


def test_users_trainer_selector_reruns_after_a_training_code_change_only(user_dir, tmp_path, tiny_model_dir,
                                                                        monkeypatch):
    """(b) A selector that declares `needs = {"trainer"}` is keyed on the training code: reused when nothing
    changed, recomputed after an edit under pipeline/training (simulated by changing that layer's hash)."""
    import pipeline.core.hashing as hashing

    args = ("select={rule: my_selectors:TrainHalf, steps: 1}", "train.batch_size=2")
    assert _run(tmp_path, tiny_model_dir, "curate-math", "r1", *args) == 0
    calls = sys.modules["my_selectors"].CALLS
    assert len(calls) == 1
    assert _run(tmp_path, tiny_model_dir, "curate-math", "r2", *args) == 0
    assert len(calls) == 1  # same code, same inputs: the selection was reused
    same = json.loads((tmp_path / "r1" / "metrics.json").read_text())["cache_keys"]
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["cache_keys"] == same

    real = hashing._layer_source_hash.__wrapped__
    monkeypatch.setattr(hashing, "_layer_source_hash", lambda layer: real(layer) + ("-edited" if layer == "training"
                                                                                    else ""))
    assert _run(tmp_path, tiny_model_dir, "curate-math", "r3", *args) == 0
    assert len(calls) == 2  # the training code changed: the selector ran (and trained) again
    keys = json.loads((tmp_path / "r3" / "metrics.json").read_text())["cache_keys"]
    assert keys["scores"] == same["scores"]  # perplexity does not train: its scores were reused


def test_a_selector_that_trains_without_declaring_it_is_stopped(user_dir, tmp_path, tiny_model_dir, capsys):
    assert _run(tmp_path, tiny_model_dir, "curate-math", "s", "select={rule: my_selectors:Sneaky}") == 2
    assert "without declaring needs = {'trainer'}" in capsys.readouterr().err


def test_users_scorer_and_selector_are_checked_like_built_in_ones(user_dir, capsys):
    """(c) `pipeline recipes --show` resolves and checks a user's parts exactly like built-in ones."""
    ok = ["recipes", "--show", "sft-math", "--set", "score.scorer=my_scorers:Length", "--set",
          "score.params.scale=2", "--set", "select={rule: my_selectors:TrainHalf, steps: 3}"]
    assert main(ok) == 0
    assert "my_scorers:Length" in capsys.readouterr().out
    base = ["recipes", "--show", "sft-math", "--set", "score.scorer=my_scorers:Length"]
    for override, key in (("score.params.scael=2", "score.params.scael: length has no parameter 'scael'"),
                          ("score.params.scale=big", "score.params.scale:"),
                          ("select={rule: my_selectors:TrainHalf, stpes: 3}",
                           "select.stpes: train_half has no parameter 'stpes'"),
                          ("select={rule: fraction, column: ppl, fraction: 0.5}",
                           "select.column: no score column 'ppl' (the scorers write: length)")):
        assert main([*base, "--set", override]) == 2, override
        assert key in capsys.readouterr().err, override
