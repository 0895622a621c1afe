"""Chat stays chat end to end: ingest (messages, ShareGPT, Alpaca), encoding (every assistant turn carries
loss, prompt tokens never), truncation, evaluation prompts and NLL, IFD, training loss and the card."""

from __future__ import annotations

import copy
import json
import math

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from pipeline.data import SCHEMA, example_id, ingest
from pipeline.models.loading import (
    encode_chat,
    encode_example,
    encode_examples,
    generation_prompts,
    load_model,
    load_tokenizer,
    prompt_text,
    render_chat,
)

SYSTEM, Q1, A1, Q2, A2 = "Be brief.", "What is 2+2?", "It is 4.", "And 3+3?", "It is 6."
CHAT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1}, {"role": "assistant", "content": A1},
        {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]
END = "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("smollm2-135m-instruct")


def masked_runs(tokenizer, enc: dict) -> list[str]:
    """The decoded text of each run of completion-mask tokens."""
    runs, cur = [], []
    for t, m in zip(enc["input_ids"], enc["completion_mask"], strict=True):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer.decode(r) for r in runs]


def chat_table(chats: list[list[dict]]) -> pl.DataFrame:
    rows = []
    for chat in chats:
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in chat[:-1])
        rows.append({"id": example_id(prompt, chat[-1]["content"], chat), "prompt": prompt,
                     "response": chat[-1]["content"], "source": "t", "domain": "t", "answer": None,
                     "messages": json.dumps(chat), "meta": None})
    return pl.DataFrame(rows, schema=SCHEMA)


# ------------------------------------------------------------------------------------------------
# Encoding


def test_every_assistant_turn_and_its_end_token_carry_loss(tok):
    enc = encode_chat(tok, CHAT)
    assert masked_runs(tok, enc) == [A1 + END, A2 + END]
    text = tok.decode(enc["input_ids"])
    assert text == render_chat(tok, CHAT).rstrip()  # the template's text, up to the last end-of-turn token
    prompt_tokens = tok.decode([t for t, m in zip(enc["input_ids"], enc["completion_mask"], strict=True) if not m])
    assert SYSTEM in prompt_tokens and Q1 in prompt_tokens and Q2 in prompt_tokens
    assert prompt_tokens.count("<|im_start|>assistant\n") == 2  # role headers are context


def test_single_turn_chat_encodes_as_its_prompt_response_row(tok):
    chat = [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1}]
    for max_length in (None, 40, 12, 6, 3, 2):
        assert encode_chat(tok, chat, max_length) == encode_example(tok, Q1, A1, max_length), max_length


def test_null_messages_rows_keep_the_prompt_response_path(tok):
    table = chat_table([CHAT]).vstack(pl.DataFrame(
        [{"id": "x", "prompt": "p", "response": "r", "source": "t", "domain": "t", "answer": None,
          "messages": None, "meta": None}], schema=SCHEMA))
    encoded = encode_examples(tok, table, 64)
    assert encoded[1] == encode_example(tok, "p", "r", 64)
    assert encoded[0] == encode_chat(tok, CHAT, 64)
    assert encode_examples(tok, table.drop("messages"), 64)[0] == encode_example(tok, table["prompt"][0], A2, 64)


def test_generation_markers_give_the_same_mask(tok):
    """A template with {% generation %} goes through transformers' assistant mask (TRL's mechanism)."""
    line = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    assert line in tok.chat_template
    marked = copy.deepcopy(tok)
    marked.chat_template = tok.chat_template.replace(line, (
        "{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}"
        "{{message['content'] + '<|im_end|>'}}{% endgeneration %}{{'\n'}}{% else %}" + line + "{% endif %}"))
    assert render_chat(marked, CHAT) == render_chat(tok, CHAT)
    assert encode_chat(marked, CHAT) == encode_chat(tok, CHAT)
    assert encode_chat(marked, CHAT, 20) == encode_chat(tok, CHAT, 20)


def test_without_a_template_role_lines_and_eos(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    enc = encode_chat(plain, CHAT)
    assert tok.decode(enc["input_ids"]) == f"system: {SYSTEM}\nuser: {Q1}\nassistant: {A1}{END}\nuser: {Q2}\nassistant: {A2}{END}"
    assert masked_runs(plain, enc) == [A1 + END, A2 + END]
    assert prompt_text(plain, CHAT[:4]).endswith(f"user: {Q2}\nassistant: ")


def test_a_template_that_rewrites_earlier_turns_is_refused(tok):
    unstable = copy.deepcopy(tok)
    unstable.chat_template = (  # earlier assistant turns lose their content, as reasoning templates do
        "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n'}}"
        "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{m['content']}}{% endif %}"
        "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")
    with pytest.raises(ValueError, match="not prefix-stable"):
        encode_chat(unstable, CHAT)
    with pytest.raises(ValueError, match="example abc: .*not prefix-stable"):
        encode_examples(unstable, chat_table([CHAT]).with_columns(id=pl.lit("abc")))


def test_truncation_drops_the_earliest_tokens_and_keeps_the_mask_aligned(tok):
    full = encode_chat(tok, CHAT)
    n = len(full["input_ids"])
    last = masked_runs(tok, full)[-1]
    n_last = len(tok(last, add_special_tokens=False)["input_ids"])
    for max_length in range(2, n + 2):
        enc = encode_chat(tok, CHAT, max_length)
        assert len(enc["input_ids"]) == len(enc["completion_mask"]) == min(n, max_length)
        assert sum(enc["completion_mask"][1:]) >= 1  # a response token that is scored
        if max_length > n_last:  # the last turn fits with context: the tail of the whole
            assert enc["input_ids"] == full["input_ids"][-max_length:]
            assert enc["completion_mask"] == full["completion_mask"][-max_length:]
        else:  # one token of context, then the head of the last reply
            assert enc["completion_mask"] == [0] + [1] * (max_length - 1)
            assert enc["input_ids"] == full["input_ids"][n - n_last - 1: n - n_last - 1 + max_length]


def test_a_corrected_response_replaces_the_last_turn(tok):
    table = chat_table([CHAT]).with_columns(response=pl.lit("It is six."))
    fixed = [*CHAT[:-1], {"role": "assistant", "content": "It is six."}]
    assert encode_examples(tok, table)[0] == encode_chat(tok, fixed)


def test_bad_messages_in_the_table_name_the_example(tok):
    table = chat_table([CHAT]).with_columns(messages=pl.lit('[{"role": "user"}]'), id=pl.lit("e1"))
    with pytest.raises(ValueError, match="example e1: messages must be"):
        encode_examples(tok, table)


# ------------------------------------------------------------------------------------------------
# Ingest


def write_jsonl(path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_sharegpt_is_detected_and_kept_whole(tmp_path):
    conv = [{"from": "system", "value": SYSTEM}, {"from": "human", "value": Q1}, {"from": "gpt", "value": A1},
            {"from": "human", "value": Q2}, {"from": "gpt", "value": A2, "weight": 1, "mood": "calm"}]
    examples, quarantine = ingest(write_jsonl(tmp_path / "sg.jsonl", [{"conversations": conv, "lang": "en"}]))
    assert quarantine.height == 0 and examples.height == 1
    row = examples.row(0, named=True)
    # other keys of a turn are kept; ShareGPT's per-turn `weight` is read as `loss_weight` (pipeline.data.weights)
    assert json.loads(row["messages"]) == [*CHAT[:-1], {**CHAT[-1], "mood": "calm", "loss_weight": 1.0}]
    assert row["prompt"] == f"system: {SYSTEM}\nuser: {Q1}\nassistant: {A1}\nuser: {Q2}"
    assert row["response"] == A2
    assert json.loads(row["meta"]) == {"lang": "en"}  # the conversation is in messages, not repeated in meta


def test_messages_keep_system_turns_and_the_id_covers_the_whole_chat(tmp_path):
    other = [*CHAT[:2], {"role": "assistant", "content": "Four."}, *CHAT[3:]]
    examples, quarantine = ingest(write_jsonl(tmp_path / "m.jsonl", [{"messages": CHAT}, {"messages": other},
                                                                     {"messages": CHAT}]))
    assert examples.height == 2 and quarantine["reason"].to_list() == [
        f"duplicate_id: {examples['id'][0]} (same conversation seen before)"]
    assert json.loads(examples["messages"][0]) == CHAT
    assert examples["id"][0] != examples["id"][1]
    assert examples["id"][0] != example_id(examples["prompt"][0], A2)  # not the summary's hash alone
    # two chats whose `role: content` summaries coincide are still two examples
    merged = [{"role": "user", "content": f"{Q1}\nassistant: {A1}\nuser: {Q2}"}, CHAT[-1]]
    split = [CHAT[1], CHAT[2], CHAT[3], CHAT[4]]
    ids = ingest(write_jsonl(tmp_path / "s.jsonl", [{"messages": merged}, {"messages": split}]))[0]["id"]
    assert ids.n_unique() == 2


def test_chat_as_json_text_in_a_parquet_column(tmp_path):
    path = tmp_path / "c.parquet"
    pl.DataFrame({"messages": [json.dumps(CHAT)]}).write_parquet(path)
    examples, quarantine = ingest(str(path))
    assert quarantine.height == 0 and json.loads(examples["messages"][0]) == CHAT


@pytest.mark.parametrize("chat,reason", [
    ([], "wrong_type"),
    ("not json", "wrong_type"),
    ({"role": "user"}, "wrong_type"),
    ([{"role": "user", "content": "q"}, "a"], "wrong_type"),
    ([{"role": "user"}, {"role": "assistant", "content": "a"}], "missing_field"),
    ([{"content": "q"}, {"role": "assistant", "content": "a"}], "missing_field"),
    ([{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}], "unknown_role"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}], "wrong_type"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "missing_field"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}],
     "missing_field"),
    ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
     "bad_order"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}], "empty_field"),
])
def test_bad_chats_are_quarantined_with_a_reason(tmp_path, chat, reason):
    for key in ("messages", "conversations"):
        examples, quarantine = ingest(write_jsonl(tmp_path / f"{key}.jsonl", [{key: chat}]))
        assert examples.height == 0 and quarantine.height == 1
        assert quarantine["reason"][0].split(":")[0] == reason and quarantine["field"][0] == key


def test_alpaca_and_plain_rows_are_unchanged(tmp_path):
    examples, _ = ingest(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate", "input": "bonjour",
                                                               "output": "hello"}, {"prompt": "p", "response": "r",
                                                                                     "messages": None}]))
    assert examples["prompt"].to_list() == ["Translate\n\nbonjour", "p"]
    assert examples["messages"].to_list() == [None, None]
    assert examples["id"].to_list() == [example_id("Translate\n\nbonjour", "hello"), example_id("p", "r")]


# ------------------------------------------------------------------------------------------------
# Evaluation, IFD, training, card (tiny random model)


def assistant_nll(model, enc: dict) -> tuple[float, int]:
    """Summed next-token NLL over the completion-mask positions, computed directly."""
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    target = ids[0, 1:]
    mask = torch.tensor(enc["completion_mask"][1:], dtype=torch.bool)
    nll = F.cross_entropy(logits, target, reduction="none")[mask]
    return float(nll.sum()), int(mask.sum())


def test_evaluation_scores_every_assistant_turn_and_generates_from_the_context(tiny_model_dir, monkeypatch):
    from pipeline.evaluation import heldout

    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, dtype=torch.float32)
    table = chat_table([CHAT]).vstack(pl.DataFrame(
        [{"id": "x", "prompt": "p", "response": "r", "source": "t", "domain": "t", "answer": "4",
          "messages": None, "meta": None}], schema=SCHEMA))
    nll = heldout.response_nll_table(model, tok, table, 128, progress=False)
    expected, n = assistant_nll(model, encode_chat(tok, CHAT, 128))
    assert nll["nll_sum"][0] == pytest.approx(expected, rel=1e-4)
    assert nll["n_tokens"][0] == n == len(tok(A1 + END + A2 + END, add_special_tokens=False)["input_ids"])
    assert nll["n_bytes"].to_list() == [len(A1) + len(A2), 1]

    assert generation_prompts(table) == [CHAT[:4], "p"]
    seen = {}

    def fake_generate(model, tokenizer, prompts, *args, **kwargs):
        seen["texts"] = [prompt_text(tokenizer, p) for p in prompts]
        return ["#### 6", "#### 4"]

    monkeypatch.setattr(heldout, "generate", fake_generate)
    heldout.math_accuracy(model, tok, table, progress=False)
    assert seen["texts"][0] == tok.apply_chat_template(CHAT[:4], tokenize=False, add_generation_prompt=True)
    assert seen["texts"][1] == prompt_text(tok, "p")


def test_ifd_on_chat_rows(tiny_model_dir):
    from pipeline.scorers import ScoreContext, get_scorer

    single = [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1}]
    table = chat_table([CHAT, single])
    ctx = ScoreContext(model_name=tiny_model_dir, max_length=128, progress=False)
    scores = get_scorer("ifd")(table, ctx)
    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, dtype=torch.float32)
    enc = encode_chat(tok, CHAT, 128)
    cond, n = assistant_nll(model, enc)
    alone_ids = tok(A1 + END + A2 + END, add_special_tokens=False)["input_ids"]  # the replies, no context
    alone, m = assistant_nll(model, {"input_ids": alone_ids, "completion_mask": [1] * len(alone_ids)})
    assert m == n - 1  # the same tokens, the first without context
    row = scores.row(0, named=True)
    assert row["ppl_conditioned"] == pytest.approx(math.exp(cond / n), rel=1e-4)
    assert row["ppl_answer"] == pytest.approx(math.exp(alone / m), rel=1e-4)
    assert row["ifd"] == pytest.approx((cond / n) / (alone / m), rel=1e-4)  # the default ratio: mean losses
    plain = pl.DataFrame([{"id": "s", "prompt": Q1, "response": A1, "source": "t", "domain": "t", "answer": None,
                           "messages": None, "meta": None}], schema=SCHEMA)
    same = get_scorer("ifd")(plain, ctx).row(0, named=True)  # a one-turn chat scores as its plain row
    assert scores.row(1, named=True)["ifd"] == pytest.approx(same["ifd"], rel=1e-6)


def test_training_dataset_and_loss_cover_both_assistant_turns(tiny_model_dir, tmp_path):
    from pipeline.losses import get_loss
    from pipeline.training.train import build_dataset, sft_config, train_settings
    from pipeline.training.trainer import TokenLossSFTTrainer

    other = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."},
             {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Red, or green."}]
    table = chat_table([CHAT, other])
    tok = load_tokenizer(tiny_model_dir)
    dataset = build_dataset(tok, table, 128)
    assert masked_runs(tok, dataset[0]) == [A1 + END, A2 + END]
    assert masked_runs(tok, dataset[1]) == ["Blue." + END, "Red, or green." + END]

    model = load_model(tiny_model_dir, dtype=torch.float32).train()
    args = sft_config(train_settings({"loss": "ce", "max_steps": 1, "batch_size": 2, "max_length": 128}),
                      tmp_path / "ckpt", 0)
    args.shuffle_dataset = False
    trainer = TokenLossSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                                  loss=get_loss("ce"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    n = int((batch["labels"][:, 1:] != -100).sum())
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n)
    total, count = 0.0, 0
    for row in dataset:  # independent: cross-entropy over exactly the assistant tokens, no padding
        s, k = assistant_nll(model, row)
        total, count = total + s, count + k
    assert count == n
    torch.testing.assert_close(loss.detach(), torch.tensor(total / count), rtol=1e-5, atol=1e-6)


def test_card_subset_keeps_the_messages(tmp_path):
    from pipeline.reports.cards import write_card

    examples = chat_table([CHAT, [CHAT[1], CHAT[2]]])
    ids = examples["id"].to_list()
    scores = pl.DataFrame({"id": ids, "perplexity": [1.0, 2.0]})
    selection = pl.DataFrame({"id": ids, "kept": [True, True], "weight": [1.0, 1.0], "reason": ["kept", "kept"]})
    card = write_card(tmp_path / "card", name="t", examples=examples, scores=scores, selection=selection,
                      source={}, scorers=[], rules=[], stages=[], score_columns=["perplexity"])
    subset = pl.read_parquet(card / "subset.parquet")
    assert subset["messages"].to_list() == examples["messages"].to_list()
