"""`data.source`: the user's own data through the curate flow, its card, and train-subset on the card."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.data.source import load_source, source_version


def _chat(topic: str, reply: str = "") -> dict:
    return {"messages": [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": f"Write a short poem about {topic}."},
                         {"role": "assistant", "content": f"A poem on {topic}: quiet lines. {reply}"},
                         {"role": "user", "content": "Shorter."},
                         {"role": "assistant", "content": f"{topic.capitalize()}, briefly."}]}


def _write(path, rows: list, extra_lines: tuple[str, ...] = ()) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra_lines))


def _common(tmp_path, tiny_model_dir) -> list[str]:
    return ["--set", f"model={tiny_model_dir}", "--set", f"cache_dir={tmp_path / 'cache'}",
            "--set", f"cards_dir={tmp_path / 'cards'}", "--set", "score.max_length=128"]


def test_curate_own_chat_data_accounts_for_every_record_and_trains(tmp_path, tiny_model_dir):
    src = tmp_path / "mine.jsonl"
    topics = ["the ocean", "mountains", "a city at night", "autumn", "a lost key", "coffee"]
    _write(src, [{**_chat(t), "domain": "poems"} for t in topics]
           + [{"instruction": "Add 2 and 3.", "input": "", "output": "5", "domain": "math"}],
           ("{broken json", json.dumps({"messages": [{"role": "user", "content": "no reply"}]})))
    run = tmp_path / "curate"
    args = ["run", "curate", "--run-dir", str(run), *_common(tmp_path, tiny_model_dir),
            "--set", f"data.source={src}", "--set", "select=[{rule: quantile, column: ppl, keep: [0.0, 0.5]}]"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    card = json.loads((tmp_path / "cards" / metrics["data_card"].split("/")[-1] / "card.json").read_text())
    counts = card["counts"]
    assert counts["read"] == 9 and counts["quarantined"] == 2
    assert counts["kept"] + counts["dropped"] + counts["quarantined"] == counts["read"]
    assert card["domains"]["poems"]["read"] == 6 and card["domains"]["math"]["read"] == 1
    quarantine = pl.read_parquet(run / "quarantine.parquet")
    assert sorted(quarantine["line"].to_list()) == [8, 9] and quarantine["reason"].str.len_chars().min() > 0
    folder = tmp_path / "cards" / metrics["data_card"].split("/")[-1]
    subset, dropped = pl.read_parquet(folder / "subset.parquet"), pl.read_parquet(folder / "dropped.parquet")
    assert subset.height + dropped.height == 7
    assert subset["reason"].str.starts_with("kept").all() and dropped["reason"].str.starts_with("dropped").all()
    chats = subset.filter(pl.col("messages").is_not_null())
    assert all(len(json.loads(m)) == 5 for m in chats["messages"])  # every turn, system included

    train = ["run", "train-subset", "--run-dir", str(tmp_path / "train"), *_common(tmp_path, tiny_model_dir),
             "--set", f"data.subset={folder}", "--set", "train.max_steps=1", "--set", "train.batch_size=2",
             "--set", "train.max_length=128"]
    assert main(train) == 0
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert trained["subset"]["rows"] == subset.height and trained["train"]["steps"] == 1


def test_folder_source_gives_each_file_its_domain_and_field_mapping(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    _write(folder / "poems.jsonl", [{"q": "A poem about rain?", "a": "Rain falls."}])
    _write(folder / "code.jsonl", [{"q": "Print hi in Python.", "a": "print('hi')", "domain": "python"}])
    out = load_source({"source": str(folder), "fields": {"prompt": "q", "response": "a"}})
    assert dict(zip(out["train"]["prompt"], out["train"]["domain"], strict=True)) == {
        "A poem about rain?": "poems", "Print hi in Python.": "python"}
    assert out["read"] == 2 and out["quarantine"].height == 0
    assert out["validation"].height == 0 and out["test"].height == 0


def test_ingest_output_folder_is_reused_with_its_quarantine(tmp_path):
    src = tmp_path / "raw.jsonl"
    _write(src, [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}], ("not json",))
    assert main(["ingest", str(src), "--out", str(tmp_path / "ing")]) == 0
    out = load_source({"source": str(tmp_path / "ing")})
    assert out["train"].height == 2 and out["quarantine"].height == 1 and out["read"] == 3


def test_source_version_follows_the_bytes(tmp_path):
    src = tmp_path / "a.jsonl"
    _write(src, [{"prompt": "p", "response": "r"}])
    before = source_version(str(src))
    _write(src, [{"prompt": "p", "response": "r2"}])
    assert source_version(str(src)) != before
    assert source_version("org/some-dataset").startswith("hub:")


@pytest.mark.parametrize("override,message", [
    ("data.source=/nope/missing.jsonl", "data.source: /nope/missing.jsonl: no such file or folder"),
    ("data.fields={prompt: q, title: t}", "unknown canonical field 'title'"),
])
def test_bad_source_settings_are_one_line_errors(tmp_path, capsys, override, message):
    assert main(["run", "curate", "--set", override, "--run-dir", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_sft_math_on_own_data_needs_a_test_source(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    _write(src, [{"prompt": "p", "response": "r"}])
    assert main(["run", "sft-math", "--set", f"data.source={src}", "--run-dir", str(tmp_path / "r")]) == 2
    assert "data.test: the sft_math flow evaluates on a test split" in capsys.readouterr().err


def test_curate_without_a_source_says_what_to_set(tmp_path, capsys):
    assert main(["run", "curate", "--run-dir", str(tmp_path / "r")]) == 2
    assert "data.source" in capsys.readouterr().err


def _long_chat(topic: str, i: int) -> dict:
    body = " ".join(f"{topic} fact {j} is described in plain words for readers of item {i}." for j in range(6))
    return {"messages": [{"role": "system", "content": "Answer in full sentences."},
                         {"role": "user", "content": f"Tell me about {topic}."},
                         {"role": "assistant", "content": body},
                         {"role": "user", "content": "Summarize it."},
                         {"role": "assistant", "content": f"In short, {topic} matters for item {i}."}]}


def test_issue_example_dedup_decontaminate_chat_then_train(tmp_path, tiny_model_dir):
    """The curation issue's own example: copies, near copies, evaluation copies and broken records."""
    topics = ["volcanoes", "tides", "bridges", "glaciers", "comets", "orchards"]
    chats = [_long_chat(t, i) for i, t in enumerate(topics)]
    near = json.loads(json.dumps(chats[1]))  # casing, spacing and punctuation changed: a near copy
    near["messages"][2]["content"] = near["messages"][2]["content"].upper().replace(".", " !  ")
    eval_question = ("Which ancient city was buried by the eruption of a volcano near the bay of Naples "
                     "in the year seventy nine of the common era")
    leaked = {"messages": [{"role": "user", "content": f"{eval_question}?"},
                           {"role": "assistant", "content": "Pompeii."}]}
    eval_file = tmp_path / "eval.jsonl"
    _write(eval_file, [{"question": eval_question, "answer": "Pompeii"}])
    src = tmp_path / "chats.jsonl"
    _write(src, [*chats, chats[0], near, leaked], ("{not json", json.dumps({"messages": []})))
    run = tmp_path / "curate"
    args = ["run", "curate", "--run-dir", str(run), *_common(tmp_path, tiny_model_dir), "--set", f"data.source={src}",
            "--set", f"select=[{{rule: dedup}}, {{rule: decontaminate, against: [{eval_file}]}}]"]
    assert main(args) == 0
    card = tmp_path / "cards" / json.loads((run / "metrics.json").read_text())["data_card"].split("/")[-1]
    counts = json.loads((card / "card.json").read_text())["counts"]
    assert counts == {"read": 11, "kept": 6, "dropped": 2, "quarantined": 3}
    subset, dropped = pl.read_parquet(card / "subset.parquet"), pl.read_parquet(card / "dropped.parquet")
    assert sorted(json.loads(m)[1]["content"] for m in subset["messages"]) == sorted(
        f"Tell me about {t}." for t in topics)  # one row per distinct conversation
    assert all(len(json.loads(m)) == 5 for m in subset["messages"])  # with every turn
    kept_id = {json.loads(m)[1]["content"]: i for m, i in zip(subset["messages"], subset["id"], strict=True)}
    reason = {json.loads(m)[0]["content"][:12]: r for m, r in zip(dropped["messages"], dropped["reason"], strict=True)}
    assert reason["Answer in fu"].startswith("dropped: dedup (minhash); duplicate of " + kept_id["Tell me about tides."])
    assert f"matches {eval_file}:1 (field question)" in reason[eval_question[:12]]
    quarantine = pl.read_parquet(card / "quarantine.parquet")
    assert sorted(quarantine["line"].to_list()) == [7, 10, 11]
    copy = quarantine.filter(pl.col("line") == 7)["reason"].item()
    assert copy.startswith(f"duplicate_id: {kept_id['Tell me about volcanoes.']}")  # names the first copy

    # The evaluation file is an input by its bytes: adding a record to it re-runs decontamination.
    _write(eval_file, [{"question": eval_question, "answer": "Pompeii"},
                       {"text": chats[3]["messages"][2]["content"]}])
    assert main([*args[:2], "--run-dir", str(tmp_path / "again"), *args[4:]]) == 0
    card = tmp_path / "cards" / json.loads((tmp_path / "again" / "metrics.json").read_text())["data_card"].split("/")[-1]
    assert json.loads((card / "card.json").read_text())["counts"]["kept"] == 5

    train = ["run", "train-subset", "--run-dir", str(tmp_path / "train"), *_common(tmp_path, tiny_model_dir),
             "--set", f"data.subset={card}", "--set", "train.max_steps=1", "--set", "train.batch_size=2",
             "--set", "train.max_length=128"]
    assert main(train) == 0
    assert json.loads((tmp_path / "train" / "metrics.json").read_text())["subset"]["rows"] == 5
