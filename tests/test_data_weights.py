"""Loss weights from the data (issue 26, item 1): a chat turn's `loss_weight` lands on exactly that turn's
tokens, an example's `weight` (through `data.fields`) multiplies the selection's weight, both reach the
trainer's batch and the loss as `sum w_t nll_t / N`, the card records them, and ingest quarantines bad ones.
Also `train.think_weight` with no reasoning span in any row warns with the count (item 5)."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch

from pipeline.cli import main
from pipeline.data import ingest
from pipeline.data.weights import DATA_WEIGHT, example_weights

END = "<|im_end|>"
A_MASKED, A_HEAVY, A_PLAIN = "Hello there, friend.", "Nine times seven is sixty-three.", "Fine, thanks."


def openai_chat(w1=0, w2=2.5, topic: str = "numbers") -> dict:
    return {"messages": [{"role": "user", "content": f"Say hello about {topic}."},
                         {"role": "assistant", "content": A_MASKED, "loss_weight": w1},
                         {"role": "user", "content": "What is 9 * 7?"},
                         {"role": "assistant", "content": A_HEAVY, "loss_weight": w2}]}


def sharegpt_chat(w1=0, w2=2.5, topic: str = "numbers") -> dict:
    turns = openai_chat(w1, w2, topic)["messages"]
    return {"conversations": [{"from": {"user": "human", "assistant": "gpt"}[t["role"]], "value": t["content"],
                               **({"loss_weight": t["loss_weight"]} if "loss_weight" in t else {})} for t in turns]}


def write_jsonl(path, rows: list, extra_lines: tuple[str, ...] = ()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(x + "\n" for x in extra_lines))
    return path


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from pipeline.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def weighted_text(tok, row: dict, value: float, column: str = "token_weight") -> str:
    """The decoded tokens whose weight in `column` is `value` (on the completion mask, or masked for 0)."""
    keep = [t for t, w, m in zip(row["input_ids"], row[column], row["completion_mask"], strict=True)
            if math.isclose(w, value) and (m or value == 0)]
    return tok.decode(keep)


# ------------------------------------------------------------------------------------------------
# Per-token: a turn's loss_weight lands on exactly that turn


@pytest.mark.parametrize("record", [openai_chat, sharegpt_chat], ids=["openai", "sharegpt"])
def test_turn_weights_land_on_exactly_their_turn(tmp_path, tok, record):
    """Tokens of weight 0 are the first reply (masked), tokens of weight 2.5 the second; nothing else trains."""
    from pipeline.models.loading import response_texts
    from pipeline.training.train import build_dataset

    examples, quarantine = ingest(write_jsonl(tmp_path / "chats.jsonl", [record()]))
    assert quarantine.height == 0 and examples.height == 1
    row = build_dataset(tok, examples, 256)[0]
    assert weighted_text(tok, row, 0.0) == A_MASKED + END
    assert weighted_text(tok, row, 2.5) == A_HEAVY + END
    trained = tok.decode([t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m])
    assert trained == A_HEAVY + END  # the 0-weight turn left the mask
    assert response_texts(examples) == [[A_HEAVY]]  # evaluation's bytes count the trained turn only


def test_turn_weights_multiply_with_think_weight(tmp_path, tok, tiny_model_dir):
    """Inside <think>...</think> of a turn with loss_weight 2.5, think_weight 0.5 gives 1.25; the delimiters 2.5."""
    from pipeline.training.columns import COLUMNS, ColumnContext
    from pipeline.training.train import build_dataset

    chat = openai_chat(w1=1, w2=2.5)
    chat["messages"][3]["content"] = "<think>Seven nines.</think>" + A_HEAVY
    examples, _ = ingest(write_jsonl(tmp_path / "think.jsonl", [chat]))
    think = COLUMNS.build("token_weight", {"think_weight": 0.5}).compute(
        examples, ColumnContext(model=tiny_model_dir, max_length=256, cache_root="unused"))
    row = build_dataset(tok, examples, 256, token_columns=think)[0]
    assert weighted_text(tok, row, 1.25).strip() == "Seven nines."
    heavy = weighted_text(tok, row, 2.5)
    assert heavy.startswith("<think>") and "</think>" + A_HEAVY + END in heavy
    assert weighted_text(tok, row, 1.0) == A_MASKED + END  # the other turn: weight 1, on the mask


def test_a_row_with_nothing_to_train_is_an_error_not_a_nan(tok):
    """Outside ingest (the Python API), a chat whose every assistant turn has weight 0 raises with the reason."""
    from pipeline.models.loading import encode_chat

    with pytest.raises(ValueError, match="every assistant turn has loss_weight 0"):
        encode_chat(tok, openai_chat(0, 0)["messages"])
    with pytest.raises(ValueError, match="turn 1 loss_weight"):
        encode_chat(tok, openai_chat(-1, 1)["messages"])
    table = pl.DataFrame({"id": ["a", "b"], "prompt": ["p", "q"], "response": ["r", "s"], DATA_WEIGHT: [2.0, -1.0]})
    with pytest.raises(ValueError, match="example b: bad_weight: data_weight"):
        example_weights(table)
    assert example_weights(table.head(1), [0.5]) == [1.0] and example_weights(table.head(1).drop(DATA_WEIGHT)) is None


# ------------------------------------------------------------------------------------------------
# The loss


def test_weighted_loss_equals_the_independent_formula(tmp_path, tok, tiny_model_dir):
    """The trainer's loss on a batch of a weighted chat and a weighted prompt/response row is
    sum_b sum_t e_b * w_bt * nll_bt / N (N: trained tokens), from full logits of the model, value and gradient."""
    from pipeline.training.train import build_trainer

    src = write_jsonl(tmp_path / "mix.jsonl", [openai_chat(0, 2.5), {"prompt": "Add 2 and 3.", "response": "5",
                                                                     "w": 3.0}])
    examples, _ = ingest(src, fields={"weight": "w"})
    cfg = {"max_steps": 1, "batch_size": 2, "max_length": 256}
    trainer = build_trainer(tiny_model_dir, examples, tmp_path / "t", cfg, weights=[0.5, 2.0])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["example_weight"].tolist() == [0.5, 6.0]  # selection 0.5 x no data weight; 2.0 x data weight 3
    model = trainer.model
    ids, labels = batch["input_ids"], batch["labels"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].clamp(min=0),
                                            reduction="none")
    mask = (labels[:, 1:] != -100).float()
    w = batch["example_weight"][:, None] * batch["token_weight"][:, 1:] * mask
    expected = (w * nll).sum() / mask.sum()
    assert set(batch["token_weight"][0][batch["labels"][0] != -100].tolist()) == {2.5}
    model.zero_grad()
    expected.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    got = trainer.compute_loss(model, {k: v.clone() for k, v in batch.items()})
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    for name, grad in want.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6), name


# ------------------------------------------------------------------------------------------------
# Ingest


def test_ingest_quarantines_bad_weights_with_a_reason_naming_the_field(tmp_path):
    good = {"prompt": "Add 1 and 1.", "response": "2", "w": 2}
    src = write_jsonl(tmp_path / "w.jsonl", [good, {**good, "prompt": "p2", "w": "0.5"}, {**good, "prompt": "p3",
                      "w": None}, openai_chat(), sharegpt_chat(topic="tea")], (
        json.dumps({**good, "prompt": "p4", "w": -1}), '{"prompt": "p5", "response": "r", "w": NaN}',
        json.dumps({**good, "prompt": "p6", "w": "abc"}), '{"prompt": "p7", "response": "r", "w": Infinity}',
        json.dumps({**good, "prompt": "p8", "w": 0}), json.dumps({**good, "prompt": "p9", "w": True}),
        json.dumps(openai_chat(w1=-1, topic="a")), json.dumps(sharegpt_chat(w2="abc", topic="b")),
        json.dumps(openai_chat(w1=0, w2=0, topic="c")), json.dumps(openai_chat(w1=float("nan"), topic="d"))))
    out = tmp_path / "ing"
    assert main(["ingest", str(src), "--out", str(out), "--field", "weight=w"]) == 0
    examples, quarantine = pl.read_parquet(out / "examples.parquet"), pl.read_parquet(out / "quarantine.parquet")
    info = json.loads((out / "ingest.json").read_text())
    assert info["read"] == 15 and examples.height + quarantine.height == info["read"] == 15
    assert examples.get_column(DATA_WEIGHT).to_list() == [2.0, 0.5, None, None, None]
    assert all("\"w\"" not in (m or "") for m in examples["meta"].to_list())  # consumed, not repeated in meta
    reasons = {r["line"]: (r["field"], r["reason"]) for r in quarantine.iter_rows(named=True)}
    for line in (6, 7, 8, 9, 10, 11):
        assert reasons[line][0] == "w" and "w " in reasons[line][1], reasons[line]
    assert reasons[6][1].startswith("bad_weight") and "-1" in reasons[6][1]
    assert "nan" in reasons[7][1] and "'abc'" in reasons[8][1] and "inf" in reasons[9][1]
    assert reasons[10][1].startswith("zero_weight") and "bool" in reasons[11][1]
    assert reasons[12] == ("messages", "bad_weight: turn 1 loss_weight must be a finite number >= 0, got -1")
    assert reasons[13][0] == "conversations" and "turn 3 loss_weight" in reasons[13][1] and "'abc'" in reasons[13][1]
    assert reasons[14][0] == "messages" and reasons[14][1].startswith("zero_weight: every assistant turn")
    assert reasons[15][0] == "messages" and "nan" in reasons[15][1]
    # a CSV's weights are text; the ingest output folder keeps the column when reused as data.source
    (tmp_path / "w.csv").write_text("prompt,response,weight\na,b,1.5\nc,d,abc\ne,f,\n")
    csv, bad = ingest(tmp_path / "w.csv")
    assert csv.get_column(DATA_WEIGHT).to_list() == [1.5, None] and bad["field"].to_list() == ["weight"]
    from pipeline.data.source import read_source

    assert read_source(str(out))[0].get_column(DATA_WEIGHT).to_list() == [2.0, 0.5, None, None, None]


def test_weight_is_a_canonical_field_and_a_typo_is_still_an_error():
    from pipeline.core.config import DataSection, check_section
    from pipeline.core.registry import ConfigError

    assert check_section(DataSection, {"fields": {"weight": "w"}}, "data").fields == {"weight": "w"}
    with pytest.raises(ConfigError, match="data.fields.*'wieght'.*weight"):
        check_section(DataSection, {"fields": {"wieght": "w"}}, "data")


# ------------------------------------------------------------------------------------------------
# Flow: curate with data weights and a sensitivity selector -> card -> train-subset


def test_data_weights_reach_the_trainer_batch_and_the_card(tmp_path, tiny_model_dir, monkeypatch):
    """A parquet of chats (turn weights) with a per-example weight column mapped by `data.fields`, curated with
    sensitivity sampling: the card records the weights; training on the card gets example_weight = selection
    weight x data weight and token_weight = the turn weights, row for row."""
    from pipeline.training.trainer import TokenLossSFTTrainer

    topics = ["tea", "rain", "trains", "maps", "bees", "salt", "owls", "jazz", "ice", "kites"]
    rows = [{**openai_chat(0 if i % 2 else 1, 2.5, t), "my_w": 0.5 + i / 4} for i, t in enumerate(topics)]
    src = tmp_path / "mine.parquet"
    pl.DataFrame({"messages": [json.dumps(r["messages"]) for r in rows], "my_w": [r["my_w"] for r in rows]}
                 ).write_parquet(src)
    common = ["--set", f"model={tiny_model_dir}", "--set", f"cache_dir={tmp_path / 'cache'}",
              "--set", f"cards_dir={tmp_path / 'cards'}", "--set", "score.max_length=128"]
    assert main(["run", "curate", "--run-dir", str(tmp_path / "c"), *common, "--set", f"data.source={src}",
                 "--set", "data.fields={weight: my_w}", "--set", "score.scorer=[perplexity, embedding]",
                 "--set", "select={rule: sensitivity, m: 6, k: 3, loss: nll}"]) == 0
    card = tmp_path / "c" / "data_card"
    facts = json.loads((card / "card.json").read_text())
    subset = pl.read_parquet(card / "subset.parquet")
    assert DATA_WEIGHT in subset.columns and subset["weight"].n_unique() > 1  # selection weights, not uniform
    assert facts["data_weights"]["examples"]["weighted"] == subset.height
    assert facts["data_weights"]["examples"]["max"] == subset[DATA_WEIGHT].max()
    assert facts["data_weights"]["turns"]["zero"] == sum(json.loads(m)[1]["loss_weight"] == 0
                                                         for m in subset["messages"])
    assert "## Loss weights from the data" in (card / "README.md").read_text()

    seen: list[tuple[list[int], float, list[float]]] = []
    compute = TokenLossSFTTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if self.model.training:
            for ids, mask, e, tw in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(),
                                        inputs["example_weight"].tolist(), inputs["token_weight"].tolist(),
                                        strict=True):
                n = sum(mask)
                seen.append((ids[:n], e, tw[:n]))
        return compute(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(TokenLossSFTTrainer, "compute_loss", spy)
    assert main(["run", "train-subset", "--run-dir", str(tmp_path / "t"), *common, "--set", f"data.subset={card}",
                 "--set", "train.max_steps=1", "--set", f"train.batch_size={subset.height}",
                 "--set", "train.max_length=128"]) == 0
    assert len(seen) == subset.height
    from pipeline.models.loading import encode_chat, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    expected = {tuple(encode_chat(tok, json.loads(m), 128)["input_ids"]): (w * d, json.loads(m))
                for m, w, d in zip(subset["messages"], subset["weight"], subset[DATA_WEIGHT], strict=True)}
    for ids, e, tw in seen:
        product, chat = expected[tuple(ids)]
        assert e == pytest.approx(product, rel=1e-6)
        heavy = tok.decode([t for t, w in zip(ids, tw, strict=True) if w == 2.5])
        assert heavy == chat[3]["content"] + END


# ------------------------------------------------------------------------------------------------
# think_weight with no reasoning span anywhere


def test_think_weight_without_any_span_warns_with_the_count(tiny_model_dir):
    from pipeline.training.columns import COLUMNS, ColumnContext

    examples = pl.DataFrame({"id": ["a", "b", "c"], "prompt": ["Hi", "2+2?", "Bye"], "response": ["Hello.", "4", "Bye."]})
    provider = COLUMNS.build("token_weight", {"think_weight": 2.0})
    ctx = ColumnContext(model=tiny_model_dir, max_length=64, cache_root="unused")
    with pytest.warns(UserWarning, match=r"think_weight=2 changes nothing: .*0 of 3 training rows"):
        provider.compute(examples, ctx)
    spans = examples.with_columns(pl.lit("<think>x</think>y").alias("response"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        provider.compute(spans.head(1), ctx)  # a span found: no warning


def peer_chat(first: dict, second: dict, sharegpt: bool = False) -> dict:
    """openai_chat's two replies with each reply's weight given under a peer's key (`first`, `second`)."""
    turns = openai_chat()["messages"]
    for turn, keys in ((turns[1], first), (turns[3], second)):
        turn.pop("loss_weight")
        turn.update(keys)
    if not sharegpt:
        return {"messages": turns}
    return {"conversations": [{"from": {"user": "human", "assistant": "gpt"}[t.pop("role")], "value": t.pop("content"),
                               **t} for t in turns]}


@pytest.mark.parametrize("record", [
    peer_chat({"loss_scale": 0}, {"loss_scale": 2.5}),                       # ms-swift's number
    peer_chat({"loss": False}, {"loss_scale": 2.5}),                          # ms-swift's switch: false masks
    peer_chat({"weight": 0}, {"weight": 2.5}, sharegpt=True),                # axolotl ShareGPT's per-turn weight
    peer_chat({"weight": 0, "loss_weight": 0}, {"loss_weight": 2.5}, sharegpt=True),  # two keys that agree
], ids=["loss_scale", "loss", "sharegpt-weight", "agreeing"])
def test_peer_turn_weight_keys_are_read_as_loss_weight(tmp_path, tok, record):
    """Peers' names for a turn's weight train exactly as `loss_weight` does: the same tokens at the same weights."""
    from pipeline.training.train import build_dataset

    examples, quarantine = ingest(write_jsonl(tmp_path / "peer.jsonl", [record]))
    assert quarantine.height == 0, quarantine.to_dicts()
    turns = json.loads(examples["messages"][0])
    assert [t.get("loss_weight") for t in turns] == [None, 0.0, None, 2.5]
    assert not any(k in t for t in turns for k in ("loss_scale", "weight", "loss"))  # one name downstream
    reference, _ = ingest(write_jsonl(tmp_path / "ours.jsonl", [openai_chat()]))
    got, want = build_dataset(tok, examples, 256)[0], build_dataset(tok, reference, 256)[0]
    assert got["input_ids"] == want["input_ids"] and got["completion_mask"] == want["completion_mask"]
    assert got["token_weight"] == want["token_weight"]


def test_peer_turn_weight_keys_that_disagree_or_are_bad_are_quarantined(tmp_path):
    bad = [peer_chat({"loss": True}, {"loss_scale": 2.5, "loss": True}),  # loss true = 1 but loss_scale 2.5
           peer_chat({"weight": 1, "loss_weight": 0}, {}, sharegpt=True),
           peer_chat({"loss": "no"}, {}),
           peer_chat({"loss_scale": -2}, {})]
    examples, quarantine = ingest(write_jsonl(tmp_path / "bad.jsonl", bad))
    assert examples.height == 0 and quarantine.height == 4
    reasons = quarantine.sort("line").get_column("reason").to_list()
    assert reasons[0] == "bad_weight: turn 3 gives loss_scale=2.5, loss=1 that disagree"
    assert reasons[1] == "bad_weight: turn 1 gives loss_weight=0, weight=1 that disagree"
    assert reasons[2].startswith("bad_weight: turn 1 loss must be true or false") and "'no'" in reasons[2]
    assert reasons[3] == "bad_weight: turn 1 loss_scale must be a finite number >= 0, got -2"
