"""The data layer: every kind of bad record gets its own reason, nothing is lost, ids are stable."""

from __future__ import annotations

import base64
import bz2
import gzip
import json
import lzma

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


def records(n: int = 3) -> list[dict]:
    return [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(n)]


def jsonl_bytes(recs: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in recs)


@pytest.mark.parametrize("name,opener", [
    ("x.jsonl.gz", gzip.open), ("x.ndjson", open), ("x.JSONL", open), ("x.jsonl.bz2", bz2.open),
    ("x.jsonl.xz", lzma.open), ("x.NDJSON.GZ", gzip.open), ("x.json.gz", gzip.open),
])
def test_json_lines_by_suffix_any_case_and_compressed(tmp_path, name, opener):
    path = tmp_path / name
    with opener(path, "wb") as f:
        f.write(jsonl_bytes(records(3)) + b'{"prompt": "broken"\n')
    examples, quarantine = ingest(str(path))
    assert examples["prompt"].to_list() == ["q0", "q1", "q2"]
    assert quarantine["line"].to_list() == [4] and quarantine["reason"].item().startswith("bad_json")


def test_missing_file_unknown_format_and_unknown_hub_name_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "out")
    for missing in ("x.jsonl.gz", "data/x.ndjson", "x.JSONL", "./x", "nope.csv"):
        assert main(["ingest", missing, "--out", out]) == 2
        assert capsys.readouterr().err == f"pipeline: error: {missing}: no such file\n"
    (tmp_path / "x.txt").write_text("hello\n")
    assert main(["ingest", "x.txt", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipeline: error: x.txt: cannot read .txt; supported: .jsonl") and err.count("\n") == 1
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    assert main(["ingest", "bad.jsonl.gz", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipeline: error: bad.jsonl.gz: cannot read") and err.count("\n") == 1
    assert main(["ingest", "nosuchorg/nosuchds", "--out", out]) == 2  # offline in tests
    err = capsys.readouterr().err
    assert err.startswith("pipeline: error: nosuchorg/nosuchds: no such file") and err.count("\n") == 1
    (tmp_path / "ok.jsonl").write_bytes(jsonl_bytes(records(1)))
    assert main(["ingest", "ok.jsonl", "--out", out, "--field", "prompt"]) == 2
    assert capsys.readouterr().err == "pipeline: error: --field prompt: use CANON=NAME, e.g. prompt=instruction\n"


def test_bom_and_every_line_ending(tmp_path):
    a, b, c, d = (json.dumps(r).encode() for r in records(4))
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + a + b"\r" + b + b"\r\n\r\n" + c + b"\n" + b"\r" + d)
    examples, quarantine = ingest(str(path))
    assert examples["prompt"].to_list() == ["q0", "q1", "q2", "q3"] and quarantine.height == 0
    path.write_bytes(b"\xef\xbb\xbf" + a + b"\r" + b + b"\r\n\r\n{oops\n" + b"\r" + d)
    _, quarantine = ingest(str(path), strict=False)
    assert quarantine["line"].to_list() == [4]  # 1: a, 2: b, 3: blank, 4: oops, 5: blank, 6: d
    utf16 = tmp_path / "ps.jsonl"  # what PowerShell's `>` writes
    utf16.write_bytes((a + b"\r\n" + b + b"\r\n").decode().encode("utf-16"))
    assert ingest(str(utf16))[0]["prompt"].to_list() == ["q0", "q1"]


def test_json_array_object_and_lines(tmp_path):
    recs = [*records(2), {"prompt": "no response"}, {"prompt": "caf\udce9", "response": "x"}]
    text = json.dumps(recs, indent=2, ensure_ascii=False).encode("utf-8", "surrogateescape")
    text = text.replace("caf\udce9".encode("utf-8", "surrogateescape"), b"caf\xe9")  # one latin-1 byte
    path = tmp_path / "arr.json"
    path.write_bytes(text)
    examples, quarantine = ingest(str(path))
    assert examples["prompt"].to_list() == ["q0", "q1"]
    assert quarantine["line"].to_list() == [10, 13]  # each element's starting line
    assert quarantine["reason"].str.extract(r"^(\w+)").to_list() == ["missing_field", "not_utf8"]
    assert base64.b64decode(quarantine["raw_b64"][1]) in text and quarantine["raw_b64"][0] is None

    broken = tmp_path / "broken.json"  # a syntax error ends the array: the rest is one bad record
    broken.write_text(json.dumps(records(3), indent=1).replace('"a1"', '"a1" oops'))
    examples, quarantine = ingest(str(broken))
    assert examples.height == 1 and quarantine.height == 1 and quarantine["line"].item() == 6
    assert quarantine["reason"].item().startswith("bad_json") and '"q2"' in quarantine["raw"].item()

    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"version": 2, "data": records(3)}, indent=2))
    examples, quarantine = ingest(str(obj))
    assert examples.height == 3 and quarantine.height == 0
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": records(2), "test": records(1)}))
    assert ingest(str(splits))[0].height == 2
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"stuff": records(2)}))
    with pytest.raises(ValueError, match="under 'stuff'"):
        ingest(str(odd))
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"prompt": "p", "response": "r", "tags": [1, 2]}, indent=2))
    assert ingest(str(one))[0]["prompt"].to_list() == ["p"]
    lines = tmp_path / "lines.json"
    lines.write_bytes(jsonl_bytes(records(3)) + b"[1, 2]\n")
    examples, quarantine = ingest(str(lines))
    assert examples.height == 3 and quarantine["reason"].item().startswith("not_object")


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


def test_not_utf8_bytes_are_recoverable(messy):
    _, quarantine = ingest(messy, max_chars=200)
    row = quarantine.filter(pl.col("line") == 6).row(0, named=True)
    assert base64.b64decode(row["raw_b64"]) == b'{"prompt": "caf\xe9", "response": "latin-1 bytes"}'
    assert quarantine.filter(pl.col("line") != 6)["raw_b64"].null_count() == quarantine.height - 1
    assert list(quarantine.columns) == ["source", "line", "field", "reason", "raw", "raw_b64"]


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


@pytest.mark.parametrize("name,content", [
    ("empty.jsonl", b""), ("blank.jsonl", b"\n \r\n\t\n\r"), ("empty.json", b""), ("blank.json", b"  \n"),
    ("bom.jsonl", b"\xef\xbb\xbf"), ("empty.csv", b""), ("header.csv", b"prompt,response\n"),
    ("empty.json.gz", gzip.compress(b"")), ("empty-array.json", b"[\n]\n"),
])
def test_empty_inputs_read_nothing(tmp_path, capsys, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["ingest", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "read 0  kept 0  quarantined 0" in capsys.readouterr().out


def test_csv_and_tsv(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_bytes(b'\xef\xbb\xbfprompt,response,score\r\n"a, b",c,1\r\nd,,2\r\n')
    examples, quarantine = ingest(str(csv))
    assert examples["prompt"].to_list() == ["a, b"] and strict_loads(examples["meta"][0]) == {"score": "1"}
    assert quarantine["line"].to_list() == [3] and quarantine["field"].item() == "response"
    tsv = tmp_path / "x.TSV.gz"
    tsv.write_bytes(gzip.compress(b'instruction\toutput\nsay "hi"\thi\n'))
    assert ingest(str(tsv))[0]["prompt"].to_list() == ['say "hi"']
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("prompt,response\na,b,c\n")
    with pytest.raises(ValueError, match="ragged.csv: cannot read as CSV"):
        ingest(str(ragged))


def test_folder_is_read_file_by_file(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(jsonl_bytes(records(2)))
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(records(3))))  # q0, q1 again
    (folder / "c.csv").write_text("prompt,response\nz,y\n")
    (folder / "README.md").write_text("not data\n")
    (folder / ".hidden.jsonl").write_text("{}\n")
    examples, quarantine = ingest(str(folder))
    assert examples["prompt"].to_list() == ["q0", "q1", "q2", "z"]
    assert examples["source"].to_list() == [str(folder / f) for f in ("a.jsonl", "a.jsonl", "b.jsonl.gz", "c.csv")]
    assert quarantine["source"].to_list() == [str(folder / "b.jsonl.gz")] * 2
    assert set(quarantine["reason"].str.extract(r"^(\w+)").to_list()) == {"duplicate_id"}
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no data files"):
        ingest(str(tmp_path / "none"))


def test_saved_datasets_folder_as_before(tmp_path):
    import datasets

    datasets.Dataset.from_list(records(3)).save_to_disk(str(tmp_path / "saved"))
    examples, quarantine = ingest(str(tmp_path / "saved"))
    assert examples["prompt"].to_list() == ["q0", "q1", "q2"] and quarantine.height == 0
    assert set(examples["source"].to_list()) == {str(tmp_path / "saved")}
