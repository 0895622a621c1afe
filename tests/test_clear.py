"""CLEAR's auto-correct on the real default path (tiny model): judges, rounds, the card, the flow.

Chen & Mueller 2024 (arXiv 2403.12776): a correction y' replaces y only when a judge is confident
y' is better; with a gold final answer, y' must agree with it. Training is a real 1-step fine-tune
of the tiny model; only `generate_fn` is injected, where a test needs known correction texts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline.cli import main
from pipeline.reports.cards import write_card
from pipeline.selectors import SelectContext, get_selector, run_selector
from pipeline.selectors.clear import apply_corrections, pairwise_judge_fn


def real_trainer(model: str, root: Path, calls: list[pl.DataFrame]):
    """`train_fn` that fine-tunes the tiny model for one step (and records what it trained on)."""
    from pipeline.training.train import train

    def train_fn(examples: pl.DataFrame, seed: int) -> str:
        calls.append(examples)
        out = root / f"round{len(calls)}"
        return train(model, examples, out, {"max_steps": 1, "batch_size": 2, "max_length": 64}, seed=seed)["model_dir"]

    return train_fn


def math_rows(n: int = 8) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(score table, example table with gold answers); the first half is confident, the rest is not."""
    ids = [f"m{i}" for i in range(n)]
    examples = pl.DataFrame({
        "id": ids,
        "prompt": [f"What is {i} + {i}?" for i in range(n)],
        "response": [f"{i} + {i} = {i + 1}. #### {i + 1}" for i in range(n)],  # wrong answers
        "answer": [str(2 * i) for i in range(n)],
    })
    scores = pl.DataFrame({"id": ids, "token_confidence": [1.0 - i / n for i in range(n)]})
    return scores, examples


def test_gold_judge_accepts_only_the_right_final_answer(tiny_model_dir, tmp_path):
    scores, examples = math_rows(8)
    calls: list[pl.DataFrame] = []

    def generate_fn(model: str, prompts: list[str]) -> list[str]:
        assert Path(model, "config.json").exists()  # a real fine-tuned folder
        out = []
        for p in prompts:
            i = int(p.split()[2])
            out.append(f"{i} + {i} = {2 * i}. #### {2 * i}" if i % 2 == 0 else f"It is {2 * i + 3}. #### {2 * i + 3}")
        return out

    ctx = SelectContext(examples=examples, model_name=tiny_model_dir, generate_fn=generate_fn,
                        train_fn=real_trainer(tiny_model_dir, tmp_path, calls))
    sel = run_selector(get_selector("clear", column="token_confidence", correct=True), scores, context=ctx)
    assert len(calls) == 1 and calls[0].get_column("id").to_list() == ["m0", "m1", "m2", "m3"]
    rows = {r["id"]: r for r in sel.iter_rows(named=True)}
    for i in (4, 6):  # right final answer: accepted by the gold judge
        r = rows[f"m{i}"]
        assert r["kept"] and r["p_better"] == 1.0 and r["new_response"].endswith(f"#### {2 * i}")
        assert r["old_response"] == examples.get_column("response")[i]
        assert r["reason"].startswith("corrected: clear; judge=gold final_answer(y')=")
    for i in (5, 7):  # wrong final answer: rejected, with the judge and both answers in the reason
        r = rows[f"m{i}"]
        assert not r["kept"] and r["p_better"] == 0.0 and r["new_response"] is None
        assert f"correction rejected (clear): judge=gold final_answer(y')={2 * i + 3} != answer={2 * i}" in r["reason"]
    fixed = apply_corrections(examples, sel).filter(pl.col("id").is_in(["m4", "m6"]))
    assert fixed.get_column("response").to_list() == ["4 + 4 = 8. #### 8", "6 + 6 = 12. #### 12"]


def test_rounds_retrain_on_corrections_and_retry_the_rest(tiny_model_dir, tmp_path):
    scores, examples = math_rows(8)
    calls: list[pl.DataFrame] = []
    seen: list[list[str]] = []

    def generate_fn(model: str, prompts: list[str]) -> list[str]:
        seen.append(prompts)
        first = len(seen) == 1
        return [f"#### {2 * int(p.split()[2]) + (1 if first and int(p.split()[2]) % 2 else 0)}" for p in prompts]

    ctx = SelectContext(examples=examples, generate_fn=generate_fn, train_fn=real_trainer(tiny_model_dir, tmp_path, calls))
    sel = run_selector(get_selector("clear", column="token_confidence", correct=True, judge="gold", rounds=3),
                       scores, context=ctx)
    assert len(calls) == 2  # round 3 has nothing left to retry
    assert seen[1] == ["What is 5 + 5?", "What is 7 + 7?"]  # round 2 retries only the rejected rows
    second = calls[1].sort("id")
    assert second.get_column("id").to_list() == ["m0", "m1", "m2", "m3", "m4", "m6"]
    assert second.filter(pl.col("id") == "m4").get_column("response").to_list() == ["#### 8"]  # trained on y'
    assert sel.get_column("kept").all()
    reasons = dict(zip(sel.get_column("id"), sel.get_column("reason"), strict=True))
    assert reasons["m4"].startswith("corrected: round 1;") and reasons["m5"].startswith("corrected: round 2;")
    assert sel.filter(pl.col("id") == "m5").get_column("old_response").to_list() == [examples["response"][5]]


def test_pairwise_preference_is_the_letters_softmax_of_each_row_alone(tiny_model_dir):
    """P(B) of a batch equals softmax over the letters A, B of the next-token logits of each row run alone."""
    import torch

    from pipeline.models.loading import load_model, load_tokenizer, prompt_text
    from pipeline.selectors.clear import ANSWER_PREFIX, PAIRWISE, pairwise_preference

    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, dtype=torch.float32)
    prompts, a, b = ["What is 2 + 3?", "Name a colour of the sky at noon."], ["5", "Blue."], ["6", "Trains."]
    batched = pairwise_preference(model, tok, prompts, a, b)
    letters = [tok.encode(c, add_special_tokens=False)[0] for c in "AB"]
    for i in range(2):
        text = prompt_text(tok, PAIRWISE.format(question=prompts[i], a=a[i], b=b[i])) + ANSWER_PREFIX
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1, letters].double()
        assert batched[i] == pytest.approx(float(torch.softmax(logits, dim=0)[1]), abs=1e-5)


def test_pairwise_judge_is_a_probability_symmetric_under_swapping(tiny_model_dir):
    judge = pairwise_judge_fn(tiny_model_dir)
    prompts = ["What is 2 + 3?", "Name a colour."]
    a, b = ["2 + 3 = 5. #### 5", "Blue."], ["The answer is 6. #### 6", "I like trains very much."]
    ab, ba = judge(prompts, a, b), judge(prompts, b, a)
    assert len(ab) == 2 and all(0.0 < p < 1.0 for p in ab + ba)
    assert all(math.isclose(x + y, 1.0, abs_tol=1e-9) for x, y in zip(ab, ba, strict=True))
    assert judge([], [], []) == []


def test_model_judges_name_themselves_in_reasons(tiny_model_dir, tmp_path):
    """Without gold answers `auto` uses the pairwise judge; `likelihood` is the old option."""
    scores, examples = math_rows(4)
    examples = examples.drop("answer")
    ctx = SelectContext(examples=examples, model_name=tiny_model_dir, generate_fn=lambda m, ps: ["Fine." for _ in ps],
                        train_fn=real_trainer(tiny_model_dir, tmp_path, []))
    for judge in ("auto", "likelihood"):
        sel = run_selector(get_selector("clear", column="token_confidence", correct=True, judge=judge, eta=0.0),
                           scores, context=ctx)
        fixed = sel.filter(pl.col("new_response").is_not_null())
        assert fixed.height == 2 and fixed.get_column("p_better").is_between(0.0, 1.0, closed="none").all()
        name = "pairwise" if judge == "auto" else "likelihood"
        assert fixed.get_column("reason").str.contains(f"judge={name} p_better=").all()


def test_card_subset_holds_corrections_and_originals(tmp_path):
    examples = pl.DataFrame({"id": ["a", "b", "c", "d"], "prompt": ["p"] * 4, "response": ["ra", "rb", "rc", "rd"]})
    scores = pl.DataFrame({"id": ["a", "b", "c", "d"], "token_confidence": [0.9, 0.8, 0.1, 0.2]})
    selection = pl.DataFrame({
        "id": ["a", "b", "c", "d"], "kept": [True, True, True, False], "weight": [1.0] * 4,
        "reason": ["kept", "kept", "corrected: clear", "dropped"],
        "old_response": [None, None, "rc", None], "new_response": [None, None, "fixed c", None],
        "p_better": [None, None, 0.9, 0.1],
    })
    card = write_card(tmp_path / "card", name="t", examples=examples, scores=scores, selection=selection,
                      source={}, scorers=[], rules=[], stages=[], score_columns=["token_confidence"])
    subset = pl.read_parquet(card / "subset.parquet")
    assert subset.get_column("response").to_list() == ["ra", "rb", "fixed c"]
    assert subset.get_column("old_response").to_list() == [None, None, "rc"]
    facts = json.loads((card / "card.json").read_text())
    assert facts["corrections"] == {"count": 1, "original_column": "old_response"}
    assert "**1** kept examples carry a corrected response" in (card / "README.md").read_text()
    plain = write_card(tmp_path / "plain", name="t", examples=examples, scores=scores,
                       selection=selection.drop("old_response", "new_response", "p_better"), source={}, scorers=[],
                       rules=[], stages=[], score_columns=["token_confidence"])
    assert pl.read_parquet(plain / "subset.parquet").columns == ["id", "prompt", "response", "weight", "reason"]


def test_curate_flow_card_carries_corrections_through_a_later_stage(tmp_path, tiny_model_dir):
    """clear(correct) -> all in curate-math: the card's subset trains on the corrections.

    The tiny random model cannot solve math, so the gold judge would reject every correction;
    `judge: pairwise` with `eta: 0.0` accepts every one (p_better is in (0, 1)), which is what this
    plumbing test needs. token_confidence: higher is more confident, as `clear` keeps > gamma.
    """
    steps = [{"rule": "clear", "column": "token_confidence", "correct": True, "judge": "pairwise", "eta": 0.0,
              "max_new_tokens": 6}, {"rule": "all"}]
    args = ["run", "curate-math", "--run-dir", str(tmp_path / "curate"), "--set", f"model={tiny_model_dir}",
            "--set", f"cards_dir={tmp_path / 'cards'}", "--set", f"cache_dir={tmp_path / 'cache'}",
            "--set", "data.n_train=8", "--set", "data.n_val=2", "--set", "data.n_test=2",
            "--set", "score.max_length=128", "--set", "score.scorer=[perplexity, token_confidence]",
            "--set", f"select={yaml.safe_dump(steps, default_flow_style=True).strip()}"]
    assert main(args) == 0
    run = tmp_path / "curate"
    card = Path(json.loads((run / "metrics.json").read_text())["data_card"])
    selection = pl.read_parquet(run / "selection.parquet")
    corrected = selection.filter(pl.col("new_response").is_not_null())
    assert corrected.height == 4 and selection.get_column("kept").all()
    subset = pl.read_parquet(card / "subset.parquet")
    got = subset.join(corrected.select("id", "new_response", pl.col("old_response").alias("was")), on="id")
    assert got.height == 4
    assert got.get_column("response").to_list() == got.get_column("new_response").to_list()
    assert got.get_column("old_response").to_list() == got.get_column("was").to_list()
    assert subset.get_column("old_response").null_count() == subset.height - 4
    assert json.loads((card / "card.json").read_text())["corrections"]["count"] == 4

    train = ["run", "train-subset", "--run-dir", str(tmp_path / "train"), "--set", f"model={tiny_model_dir}",
             "--set", f"cache_dir={tmp_path / 'cache'}", "--set", f"data.subset={card}", "--set", "train.max_steps=1",
             "--set", "train.batch_size=2", "--set", "train.max_length=128"]
    assert main(train) == 0  # the card (with old_response) trains as it is
    assert json.loads((tmp_path / "train" / "metrics.json").read_text())["subset"]["rows"] == subset.height


def test_correction_of_a_chat_row_continues_its_own_turns(tiny_model_dir, tmp_path):
    """A dropped chat row's correction is generated from every turn before its last reply (system and
    earlier replies included), not from the flattened prompt summary."""
    from pipeline.selectors.clear import Clear

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 + 3?"},
            {"role": "assistant", "content": "It is 7. #### 7"}]
    examples = pl.DataFrame({"id": ["a", "b"], "prompt": ["p a", "user: What is 2 + 2?\n..."],
                             "response": ["#### 1", "It is 7. #### 7"], "answer": ["1", "6"],
                             "messages": [None, json.dumps(chat)]})
    scores = pl.DataFrame({"id": ["a", "b"], "token_confidence": [0.9, 0.1]})
    seen: list = []

    def generate_fn(model: str, prompts: list) -> list[str]:
        seen.extend(prompts)
        return ["#### 6" for _ in prompts]

    ctx = SelectContext(examples=examples, model_name=tiny_model_dir, generate_fn=generate_fn,
                        train_fn=lambda rows, seed: tiny_model_dir)
    sel = run_selector(Clear(column="token_confidence", correct=True), scores, context=ctx)
    assert seen == [chat[:4]]
    assert sel.filter(pl.col("id") == "b")["kept"].item()


def test_auto_judge_needs_no_model_when_every_row_it_corrects_has_a_gold_answer():
    """`judge=auto` asks for a model judge only for dropped rows without a gold answer: kept rows without
    one (here the confident half) must not make it demand `model_name` (a mutant checking `~kept | valid` did)."""
    scores, examples = math_rows(8)
    examples = examples.with_columns(pl.Series("answer", [None] * 4 + examples["answer"][4:].to_list()))
    ctx = SelectContext(examples=examples, train_fn=lambda rows, seed: "unused-model",
                        generate_fn=lambda model, prompts: [f"#### {2 * int(p.split()[2])}" for p in prompts])
    sel = run_selector(get_selector("clear", column="token_confidence", correct=True, judge="auto"), scores, context=ctx)
    assert sel.get_column("kept").all()
    assert all("judge=gold" in r for r in sel.filter(pl.col("id").is_in(["m4", "m5", "m6", "m7"]))["reason"])


@pytest.mark.parametrize("judge", ["pairwise", "likelihood"])
def test_model_judge_without_a_model_fails_before_any_fine_tuning(judge):
    """A model judge with no `model_name` is refused before the first round's fine-tune, not after it."""
    scores, examples = math_rows(8)
    trained: list = []
    ctx = SelectContext(examples=examples, train_fn=lambda rows, seed: trained.append(rows.height) or "unused",
                        generate_fn=lambda model, prompts: ["#### 0" for _ in prompts])
    with pytest.raises(ValueError, match=f"judge={judge!r} needs context.model_name"):
        run_selector(get_selector("clear", column="token_confidence", correct=True, judge=judge), scores, context=ctx)
    assert trained == []


def test_gold_judge_says_when_a_row_has_no_gold_answer():
    """`judge=gold` never asks a model: a dropped row without an answer keeps its response, and says why."""
    scores, examples = math_rows(8)
    examples = examples.with_columns(pl.Series("answer", examples["answer"][:6].to_list() + [None, None]))
    ctx = SelectContext(examples=examples, train_fn=lambda rows, seed: "unused-model",
                        generate_fn=lambda model, prompts: [f"#### {2 * int(p.split()[2])}" for p in prompts])
    sel = run_selector(get_selector("clear", column="token_confidence", correct=True, judge="gold"), scores, context=ctx)
    no_gold = sel.filter(pl.col("id").is_in(["m6", "m7"]))
    assert not no_gold["kept"].any()
    assert no_gold["reason"].str.contains("judge=gold: the example has no gold answer").all()
    assert sel.filter(pl.col("id").is_in(["m4", "m5"]))["kept"].all()  # right answers with gold: accepted
