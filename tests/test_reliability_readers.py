"""Issue 24, rules 2, 4, 5 and 6: cards and recorded configs are data, readers are bounded and literal, chat turns
are validated like rows, damaged caches are detected, and every message names the file, key or record."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.core.runs import new_run_dir

DEEP_JSON = "[" * 3000 + "]" * 3000
BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9 if p else ['x'] * 9)}]\n"
               for p, c in zip(["", "a", "b", "c", "d", "e", "f"], "abcdefg", strict=True))


def _card(folder: Path, config) -> Path:
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps({"name": folder.name, "run": {"config": config}}))
    pl.DataFrame({"id": ["a"], "prompt": ["p"], "response": ["r"]}).write_parquet(folder / "subset.parquet")
    return folder


# --- rule 2: a card is data, never code --------------------------------------------------------------


EVIL = "import pathlib\npathlib.Path('PWNED').write_text('ran')\nclass Part: pass\n"


@pytest.mark.parametrize("config,key", [
    ({"name": "c", "score": {"scorer": "evil:Part"}}, "score.scorer"),
    ({"name": "c", "score": {"scorer": ["perplexity", "evil:Part"]}}, "score.scorer[1]"),
    ({"name": "c", "select": [{"rule": "all"}, {"rule": "evil:Part"}]}, "select[1].rule"),
    ({"name": "c", "train": {"loss": "evil:Part"}}, "train.loss"),
    ({"name": "c", "train": {"columns": {"ref_nll": "evil:Part"}}}, "train.columns.ref_nll"),
    ({"name": "c", "score": {"scorer": "not_an_installed_entry_point"}}, "score.scorer"),
])
def test_regenerate_refuses_a_card_that_names_code(tmp_path, monkeypatch, config, key, cli_error):
    card = _card(tmp_path / "card", config)
    (card / "evil.py").write_text(EVIL)
    monkeypatch.chdir(card)  # where a module:attr would be imported from
    line = cli_error(["regenerate", str(card), "--out", str(tmp_path / "regen")])
    assert line.startswith(f"pipeline: error: {card / 'card.json'}: the recorded config names code ({key}: ")
    assert "--allow-code" in line and not (card / "PWNED").exists()


@pytest.mark.parametrize("config,expect", [
    ({"name": "../../x"}, "run.config.name: value error, '../../x' must be one plain folder name"),
    ({"name": "c", "cards_dir": "x", "data": {"n_train": 10**12}}, "run.config.data.n_train: input should be less"),
    ({"name": "c/../../d"}, "run.config.name"),
])
def test_a_card_is_checked_like_a_recipe(tmp_path, config, expect, cli_error):
    card = _card(tmp_path / "card", config)
    line = cli_error(["regenerate", str(card), "--out", str(tmp_path / "regen")])
    assert line.startswith(f"pipeline: error: {card / 'card.json'}: ") and expect in line, line
    assert not (tmp_path / "regen" / "run").exists()


def test_allow_code_is_the_only_way_past_the_code_check(tmp_path, monkeypatch, cli_error):
    card = _card(tmp_path / "card", {"name": "../x", "score": {"scorer": "evil:Part"}})
    (card / "evil.py").write_text(EVIL)
    monkeypatch.chdir(card)
    assert "names code" in cli_error(["regenerate", str(card), "--out", str(tmp_path / "r")])
    # with --allow-code the code check passes and the next check (the unsafe name) stops it, still before any import
    line = cli_error(["regenerate", str(card), "--out", str(tmp_path / "r"), "--allow-code"])
    assert "run.config.name" in line and not (card / "PWNED").exists()


@pytest.mark.parametrize("content,expect", [
    ("[1, 2]", "a card must be a JSON object, got list"),
    ('{"name": "x"}', "run.config must be the recorded recipe"),
    ('{"run": {"config": [["a", "b"]]}}', "run.config must be the recorded recipe"),
    ('{"run": ' + DEEP_JSON + "}", "nested deeper than 100 levels"),
    ('{"run": ', "not readable JSON"),
])
def test_a_broken_card_is_one_line_naming_it(tmp_path, content, expect, cli_error):
    card = _card(tmp_path / "card", {})
    (card / "card.json").write_text(content)
    line = cli_error(["regenerate", str(card), "--out", str(tmp_path / "regen")])
    assert str(card / "card.json") in line and expect in line, line


# --- rule 4: bounded YAML and JSON, literal paths, whole folders ----------------------------------------


@pytest.mark.parametrize("value,expect", [
    ("[" * 3000 + "]" * 3000, "nested deeper than 100 levels"),
    ("{a: " * 500 + "1" + "}" * 500, "nested deeper than 100 levels"),
    ("[&a [x, x, x, x, x, x, x, x, x], " + ", ".join(["[*a, *a, *a, *a, *a, *a, *a, *a, *a]"] * 3) + "]", None),
])
def test_a_set_value_is_bounded(value, expect, cli_error):
    args = ["recipes", "--show", "sft-math", "--set", f"select.keep={value}"]
    if expect is None:  # a small alias use is fine (it then fails the type check of keep, not the reader)
        assert "not valid YAML" not in cli_error(args)
        return
    line = cli_error(args)
    assert line.startswith("pipeline: error: select.keep: value ") and expect in line and len(line) < 400


@pytest.mark.parametrize("text,expect", [
    (BOMB, "expands to more than 100000 values"),
    ("name: x\ntrain: " + "{a: " * 500 + "1" + "}" * 500 + "\n", "nested deeper than 100 levels"),
    ("a: &a [*a]\n", "an alias refers to a node that contains it"),
])
def test_a_recipe_file_is_bounded(tmp_path, text, expect, cli_error):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(text)
    t0 = time.perf_counter()
    line = cli_error(["recipes", "--show", str(recipe)])
    assert line.startswith(f"pipeline: error: {recipe}") and expect in line, line
    assert time.perf_counter() - t0 < 10


def test_a_bomb_in_a_run_folder_breaks_only_that_folder(tmp_path, capsys, cli_error):
    runs = tmp_path / "runs"
    good = new_run_dir({"name": "curate", "output_dir": str(runs)})
    bad = new_run_dir({"name": "curate", "output_dir": str(runs)})
    (bad / "config.yaml").write_text(BOMB)
    assert main(["inspect", "--list", "--output-dir", str(runs), "--cards-dir", str(tmp_path / "c"), "--json"]) == 0
    rows = {r["path"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert "error" not in rows[str(good)] and "expands to more than" in rows[str(bad)]["error"]
    line = cli_error(["inspect", str(bad)])
    assert str(bad / "config.yaml") in line and "expands to more than" in line


def _jsonl(*records: str) -> bytes:
    return ("\n".join(records) + "\n").encode()


OK = json.dumps({"prompt": "p", "response": "r"})
OK2 = json.dumps({"prompt": "p2", "response": "r2"})


@pytest.mark.parametrize("name,content,bad_lines,reason", [
    ("deep.jsonl", _jsonl(OK, '{"prompt": ' + DEEP_JSON + ', "response": "r"}', OK2), [2], "nested deeper than 100"),
    ("meta.jsonl", _jsonl(OK, '{"prompt": "q", "response": "r", "m": ' + "[" * 150 + "]" * 150 + "}", OK2), [2],
     "nested deeper than 100"),
    ("surrogate.jsonl", _jsonl(OK, '{"prompt": "\\ud800 x", "response": "r"}', OK2), [2], "lone surrogate"),
    ("array.json", f"[{OK},\n{DEEP_JSON},\n{OK2}]".encode(), [2], "nested deeper than 100"),
    ("deep.jsonl.gz", gzip.compress(_jsonl(OK, DEEP_JSON, OK2)), [2], "nested deeper than 100"),
])
def test_one_bad_record_is_quarantined_with_its_line(tmp_path, capsys, name, content, bad_lines, reason):
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["ingest", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "read 3  kept 2  quarantined 1" in capsys.readouterr().out
    quarantine = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert quarantine["line"].to_list() == bad_lines and quarantine["reason"][0].startswith("bad_json: ")
    assert reason in quarantine["reason"][0]


def test_a_parquet_name_is_read_literally(tmp_path, capsys):
    for name, prompt in (("a[1].parquet", "mine"), ("a1.parquet", "other"), ("a*.parquet", "star")):
        pl.DataFrame({"prompt": [prompt], "response": ["r"]}).write_parquet(tmp_path / name)
    for name, prompt in (("a[1].parquet", "mine"), ("a*.parquet", "star")):
        out = tmp_path / f"out-{prompt}"
        assert main(["ingest", str(tmp_path / name), "--out", str(out)]) == 0
        assert pl.read_parquet(out / "examples.parquet")["prompt"].to_list() == [prompt]  # not a1.parquet too
    from pipeline.data.source import read_source

    assert read_source(str(tmp_path / "a[1].parquet"))[0]["prompt"].to_list() == ["mine"]


def test_a_folder_is_read_whole_and_what_is_skipped_is_named(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "sub" / "deeper").mkdir(parents=True)
    (data / "top.jsonl").write_bytes(_jsonl(OK))
    (data / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl(OK2)))
    pl.DataFrame({"prompt": ["p3"], "response": ["r3"]}).write_parquet(data / "sub" / "deeper" / "c.parquet")
    (data / "sub" / "d.parquet.gz").write_bytes(b"x")
    (data / ".hidden").mkdir()
    (data / ".hidden" / "e.jsonl").write_bytes(_jsonl(json.dumps({"prompt": "h", "response": "h"})))
    assert main(["ingest", str(data), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "read 3  kept 3  quarantined 0" in captured.out
    assert "skipped 1 file(s) not in a readable format: sub/d.parquet.gz" in captured.err
    examples = pl.read_parquet(tmp_path / "out" / "examples.parquet")
    assert examples["prompt"].to_list() == ["p2", "p3", "p"]  # path order: sub/b, sub/deeper/c, top
    assert examples["source"].to_list()[0] == str(data / "sub" / "b.jsonl.gz")


# --- rule 5: chat turns like rows; damaged caches recomputed ------------------------------------------------


def _chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


@pytest.mark.parametrize("record,reason", [
    (_chat(("user", ""), ("assistant", "a")), "empty_field: turn 0 (user) has empty content"),
    (_chat(("user", "q"), ("assistant", "  \n")), "empty_field: turn 1 (assistant) has empty content"),
    (_chat(("user", "q"), ("assistant", ""), ("user", "q2"), ("assistant", "a2")),
     "empty_field: turn 1 (assistant) has empty content"),
    (json.dumps({"conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "a"}]}),
     "empty_field: turn 0 (user) has empty content"),
])
def test_an_empty_chat_turn_is_quarantined_like_an_empty_field(tmp_path, capsys, record, reason):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(_jsonl(_chat(("system", ""), ("user", "q"), ("assistant", "a")), record))
    assert main(["ingest", str(path), "--out", str(tmp_path / "out")]) == 0
    quarantine = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert quarantine["line"].to_list() == [2] and quarantine["reason"].to_list() == [reason]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_rows"])
def test_a_damaged_score_shard_is_recomputed(tmp_path, damage):
    from pipeline.core.io import invalidate
    from pipeline.data import load_math
    from pipeline.scorers import ScoreContext, Scorer, register_scorer
    from pipeline.scorers.cache import score_cached

    calls: list[int] = []

    @register_scorer("_chars_i24")
    class Chars(Scorer):
        uses_model = False

        def score(self, examples, ctx):
            calls.append(examples.height)
            return examples.select("id", pl.col("response").str.len_chars().cast(pl.Float64).alias("chars"))

    examples = load_math("gsm_symbolic", n_train=6, n_val=1, n_test=1, seed=0)["train"]
    ctx = ScoreContext(model_name="none", progress=False)
    first = pl.read_parquet(score_cached(examples, "_chars_i24", ctx, tmp_path, shard_size=2))
    assert calls == [2, 2, 2]
    shard = next(tmp_path.rglob("shards/00001.parquet"))
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:50])
    elif damage == "garbage":
        shard.write_bytes(b"PAR1 not a parquet file at all")
    else:
        first.head(2).write_parquet(shard)  # a readable shard holding another shard's rows
    invalidate(shard.parent.parent)  # as if the run was killed before the table was assembled
    again = pl.read_parquet(score_cached(examples, "_chars_i24", ctx, tmp_path, shard_size=2))
    assert calls == [2, 2, 2, 2] and again.equals(first)  # only the damaged shard was scored again


def test_an_incomplete_model_file_is_detected(tmp_path):
    import torch
    from safetensors.torch import save_file

    from pipeline.models.assets import safetensors_complete

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(64, 64), "b": torch.zeros(64)}, str(path))
    assert safetensors_complete(path)
    data = path.read_bytes()
    for broken in (data[:-1], data[: len(data) // 2], data[:6], b""):
        path.write_bytes(broken)
        assert not safetensors_complete(path)


# --- rule 6: the remaining cryptic messages name the file, key or record ----------------------------------


@pytest.mark.parametrize("table,expect", [
    (pl.DataFrame({"id": [], "prompt": [], "response": []}, schema={"id": pl.String, "prompt": pl.String,
                                                                   "response": pl.String}), "no rows"),
    (pl.DataFrame({"id": ["a", "b"], "prompt": ["p", None], "response": ["r", "s"]}),
     "row 1, field prompt: 1 rows have no prompt (null)"),
    (pl.DataFrame({"id": ["a"], "prompt": [1], "response": ["r"]}), "column prompt holds Int64, not text"),
])
def test_a_bad_subset_names_the_file_and_row(tmp_path, table, expect, cli_error):
    subset = tmp_path / "subset.parquet"
    table.write_parquet(subset)
    line = cli_error(["run", "train-subset", "--run-dir", str(tmp_path / "r"), "--set",
                           f"cache_dir={tmp_path / 'cache'}", "--set", f"data.subset={subset}"])
    assert line.startswith(f"pipeline: error: {subset}: ") and expect in line, line
