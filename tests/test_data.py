"""The data layer: every kind of bad record gets its own reason, nothing is lost, ids are stable."""

from __future__ import annotations

import base64
import json

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.data import (
    DataError,
    example_id,
    final_answer,
    fingerprint,
    ingest,
    load_math,
    normalize_number,
)

GOOD = {"prompt": "What is 2+2?", "response": "2+2=4\n#### 4"}


def write_lines(path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


@pytest.fixture
def messy(tmp_path):
    lines = [
        json.dumps(GOOD).encode(),  # 1 good
        b'{"prompt": "broken", ',  # 2 bad json
        json.dumps({"response": "no prompt"}).encode(),  # 3 missing prompt
        json.dumps({"prompt": "  ", "response": "x"}).encode(),  # 4 empty prompt
        json.dumps({"prompt": "p", "response": 42}).encode(),  # 5 wrong type
        b'{"prompt": "caf\xe9", "response": "latin-1 bytes"}',  # 6 not utf-8
        json.dumps(GOOD).encode(),  # 7 duplicate
        json.dumps({"prompt": "long", "response": "y" * 500}).encode(),  # 8 too long
        json.dumps([1, 2]).encode(),  # 9 not an object
        json.dumps({"instruction": "Say hi", "output": "hi"}).encode(),  # 10 good via aliases
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}).encode(),  # 11
    ]
    return write_lines(tmp_path / "messy.jsonl", lines)


def test_each_bad_record_has_its_own_reason(messy):
    examples, quarantine = ingest(messy, max_chars=200)
    reasons = {row["line"]: row["reason"].split(":")[0] for row in quarantine.iter_rows(named=True)}
    assert reasons == {
        2: "bad_json", 3: "missing_field", 4: "empty_field", 5: "wrong_type", 6: "not_utf8",
        7: "duplicate_id", 8: "too_long", 9: "not_object",
    }
    assert examples.height + quarantine.height == 11  # nothing lost
    assert examples.get_column("prompt").to_list() == [GOOD["prompt"], "Say hi", "user: q"]
    fields = dict(zip(quarantine["line"].to_list(), quarantine["field"].to_list(), strict=True))
    assert fields[5] == "response" and fields[4] == "prompt" and fields[8] == "response"
    raw6 = quarantine.filter(pl.col("line") == 6)["raw"].item()
    assert "latin-1 bytes" in raw6 and "caf\\xe9" in raw6  # readable text, the bad byte escaped


def test_strict_names_file_line_field(messy):
    with pytest.raises(DataError) as err:
        ingest(messy, strict=True)
    assert str(err.value).startswith(f"{messy}:2: *: bad_json")


def test_cli_ingest_writes_tables_and_counts(messy, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ingest", messy, "--out", str(out), "--max-chars", "200"]) == 0
    printed = capsys.readouterr().out
    assert "read 11  kept 3  quarantined 8" in printed
    assert pl.read_parquet(out / "examples.parquet").height == 3
    assert pl.read_parquet(out / "quarantine.parquet").height == 8
    assert main(["ingest", messy, "--out", str(out), "--strict"]) == 1
    assert f"{messy}:2:" in capsys.readouterr().err


def test_parquet_source_and_field_mapping(tmp_path):
    path = tmp_path / "d.parquet"
    pl.DataFrame({"q": ["a", "b", None], "a": ["1", "2", "3"]}).write_parquet(path)
    examples, quarantine = ingest(str(path), fields={"prompt": "q", "response": "a"})
    assert examples.height == 2 and quarantine.height == 1
    assert quarantine["line"].item() == 3 and quarantine["reason"].item().startswith("missing_field")


def test_ids_and_fingerprint_are_content_based():
    assert example_id("p", "r") == example_id("p", "r") != example_id("p", "r ")
    a = pl.DataFrame({"id": [example_id("p", "r"), example_id("q", "s")]})
    assert fingerprint(a) == fingerprint(a.clone())
    assert fingerprint(a) != fingerprint(a.reverse())
    assert fingerprint(a) != fingerprint(a.head(1))


def test_math_splits_disjoint_and_deterministic():
    s1 = load_math("gsm_symbolic", n_train=40, n_val=10, n_test=10, seed=3)
    s2 = load_math("gsm_symbolic", n_train=40, n_val=10, n_test=10, seed=3)
    assert {k: v.height for k, v in s1.items()} == {"train": 40, "validation": 10, "test": 10}
    for k in s1:
        assert s1[k].equals(s2[k])
    questions = [set(s1[k]["prompt"].to_list()) for k in ("train", "validation", "test")]
    assert not (questions[0] & questions[1] or questions[0] & questions[2] or questions[1] & questions[2])
    for row in s1["train"].iter_rows(named=True):
        assert final_answer(row["response"]) == row["answer"]  # '#### 168.0' vs '168' normalized


@pytest.mark.parametrize("text,expected", [("1,680.0", "1680"), ("$0.50", "0.5"), ("-3", "-3"), ("none", None)])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def strict_loads(text: str):
    """json.loads that refuses NaN/Infinity, as any other JSON reader would."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_meta_and_messages_are_strict_json(tmp_path, capsys):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join([
        b'{"prompt": "p1", "response": "r1", "score": NaN, "big": Infinity, "nested": {"a": [1, {"b": null}]}}',
        b'{"messages": [{"role": "user", "content": "q", "w": NaN}, {"role": "assistant", "content": "a"}],'
        b' "tags": ["x", "y"]}',
    ]))
    parquet = tmp_path / "x.parquet"
    pl.DataFrame({"prompt": ["p", "q"], "response": ["r", "s"], "score": [float("nan"), 1.5],
                  "info": [{"k": [1.0, float("inf")]}, {"k": []}]}).write_parquet(parquet)
    for source in (path, parquet):
        out = tmp_path / f"out-{source.suffix}"
        assert main(["ingest", str(source), "--out", str(out)]) == 0
        examples = pl.read_parquet(out / "examples.parquet")
        assert examples.height == 2
        for column in ("meta", "messages"):
            for value in examples[column].drop_nulls().to_list():
                strict_loads(value)
    examples, _ = ingest(str(path))
    meta = strict_loads(examples["meta"][0])
    assert meta == {"score": None, "big": None, "nested": {"a": [1, {"b": None}]}}
    assert strict_loads(examples["messages"][1])[0]["w"] is None
    assert strict_loads(ingest(str(parquet))[0]["meta"][0]) == {"score": None, "info": {"k": [1.0, None]}}


def test_not_utf8_bytes_are_recoverable(messy):
    _, quarantine = ingest(messy, max_chars=200)
    row = quarantine.filter(pl.col("line") == 6).row(0, named=True)
    assert base64.b64decode(row["raw_b64"]) == b'{"prompt": "caf\xe9", "response": "latin-1 bytes"}'
    assert quarantine.filter(pl.col("line") != 6)["raw_b64"].null_count() == quarantine.height - 1
    assert list(quarantine.columns) == ["source", "line", "field", "reason", "raw", "raw_b64"]


def records(n: int = 3) -> list[dict]:
    return [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(n)]


def jsonl_bytes(recs: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in recs)


def test_alpaca_input_joins_the_prompt(tmp_path):
    rows = [
        {"instruction": "Translate", "input": "bonjour", "output": "hello"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Count", "output": "1 2 3"},
        {"instruction": "Sum", "input": 3, "output": "3"},
    ]
    path = tmp_path / "alpaca.jsonl"
    path.write_bytes(jsonl_bytes(rows))
    examples, quarantine = ingest(str(path))
    assert examples["prompt"].to_list() == ["Translate\n\nbonjour", "Say hi", "Count"]
    metas = [json.loads(m) for m in examples["meta"].to_list()]
    assert "input" not in metas[0] and metas[1]["input"] == ""  # no input: as before
    assert quarantine["field"].item() == "input" and quarantine["reason"].item().startswith("wrong_type")
