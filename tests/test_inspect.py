"""`pipeline inspect` on hand-built run and card directories (no model): exact JSON outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from pipeline.cli import main
from pipeline.reports.inspect import load_table, parse_where

IDS = ["e1", "e2", "e3", "e4", "e5", "e6"]
PPL = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0]
NLL = [0.5, 0.0, 1.5, 1.0, 2.5, 2.0]
TOKENS = [100, 50, 200, 80, 120, 900]
STAMP = 1_700_000_000  # 2023-11-14T22:13:20Z
SELECT = {"rule": "fraction", "column": "ppl", "fraction": 0.5, "order": "lowest"}


def _selection(kept: set[str], reasons: dict[str, str], weights: dict[str, float] | None = None) -> pl.DataFrame:
    weights = weights or {}
    return pl.DataFrame({
        "id": IDS,
        "kept": [i in kept for i in IDS],
        "weight": [weights.get(i, 1.0 if i in kept else 0.0) for i in IDS],
        "reason": [reasons[i] for i in IDS],
    })


def _make_run(root: Path, name: str, selection: pl.DataFrame, metrics: dict | None = None) -> Path:
    run = root / name
    (run / "data").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "sft-math", "select": SELECT}, sort_keys=False))
    pl.DataFrame({
        "id": IDS,
        "prompt": [f"question {i}" for i in IDS],
        "response": [f"answer to {i}" for i in IDS],
        "answer": [str(k) for k in range(6)],
    }).write_parquet(run / "data" / "train.parquet")
    pl.DataFrame({"id": IDS, "nll": NLL, "ppl": PPL, "n_tokens": TOKENS}).write_parquet(run / "scores.parquet")
    selection.write_parquet(run / "selection.parquet")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    os.utime(run / "config.yaml", (STAMP, STAMP))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    """Run A keeps e1 e2 e4 (lowest ppl; e6 too long); run B keeps e2..e5; a card of B's subset."""
    out = tmp_path / "runs"
    low = {"e1", "e2", "e4"}
    reasons_a = {i: f"kept: lowest 0.5 by ppl; ppl={p}" if i in low else f"dropped: not in the lowest 0.5 by ppl; ppl={p}"
                 for i, p in zip(IDS, PPL, strict=True)}
    reasons_a["e6"] = "dropped: too long; n_tokens=900"
    metrics = {"recipe": "sft-math", "selection": {"read": 6, "kept": 3, "dropped": 3},
               "base": {"accuracy": 0.25, "nll": 1.5}, "tuned": {"accuracy": 0.5, "nll": 1.25}}
    a = _make_run(out, "a", _selection(low, reasons_a, {"e4": 0.5}), metrics)
    b_kept = {"e2", "e3", "e4", "e5"}
    b = _make_run(out, "b", _selection(b_kept, {i: "kept" if i in b_kept else "dropped: random" for i in IDS}))
    card = tmp_path / "cards" / "card-b"
    card.mkdir(parents=True)
    subset = pl.read_parquet(b / "data" / "train.parquet").filter(pl.col("id").is_in(sorted(b_kept)))
    subset.with_columns(weight=pl.lit(1.0)).write_parquet(card / "subset.parquet")
    (card / "card.json").write_text(json.dumps({
        "name": "card-b", "rules": [{"rule": "random", "fraction": 0.66}],
        "counts": {"read": 6, "kept": 4, "dropped": 2}, "score_stats": {},
        "run": {"run_dir": str(tmp_path / "gone"), "recipe": "sft-math"},
    }))
    return {"a": a, "b": b, "card": card, "runs": out, "cards": tmp_path / "cards"}


def _json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _ids(report: dict) -> list[str]:
    return [r["id"] for r in report["rows"]]


def test_summary(runs, capsys):
    report = _json(capsys, str(runs["a"]))
    assert report["counts"] == {"read": 6, "kept": 3, "dropped": 3}
    assert report["recipe"] == "sft-math" and report["select"] == SELECT
    assert report["drop_reasons"] == [["dropped: not in the lowest 0.5 by ppl", 2], ["dropped: too long", 1]]
    assert report["scores"]["ppl"]["kept"] == {"count": 3, "mean": 2.0, "median": 2.0, "min": 1.0, "max": 3.0}
    assert report["scores"]["n_tokens"]["dropped"]["max"] == 900.0
    assert [r["id"] for r in report["kept_examples"]] == ["e1", "e2", "e4"]
    assert report["kept_examples"][0]["reason"] == "kept: lowest 0.5 by ppl; ppl=2.0"
    assert report["kept_examples"][0]["prompt"] == "question e1"
    assert len(_json(capsys, str(runs["a"]), "-n", "1")["dropped_examples"]) == 1


def test_where_and_sort(runs, capsys):
    a = str(runs["a"])
    report = _json(capsys, a, "--where", "ppl < 5", "--sort", "ppl", "--desc")
    assert _ids(report) == ["e3", "e4", "e1", "e2"]
    assert (report["total"], report["matched"], report["shown"]) == (6, 4, 4)
    assert report["columns"] == ["id", "kept", "weight", "reason", "nll", "ppl", "n_tokens", "prompt", "response"]
    assert report["rows"][1] == {"id": "e4", "kept": True, "weight": 0.5, "reason": "kept: lowest 0.5 by ppl; ppl=3.0",
                                 "nll": 1.0, "ppl": 3.0, "n_tokens": 80, "prompt": "question e4",
                                 "response": "answer to e4"}
    assert _ids(_json(capsys, a, "--where", "ppl<5", "--sort", "ppl", "--desc", "--kept")) == ["e4", "e1", "e2"]
    assert _ids(_json(capsys, a, "--dropped", "--sort", "n_tokens")) == ["e5", "e3", "e6"]
    both = _json(capsys, a, "--where", "ppl >= 2", "--where", "n_tokens != 900", "--sort", "nll", "-n", "2")
    assert _ids(both) == ["e1", "e4"] and (both["matched"], both["shown"]) == (4, 2)
    assert _ids(_json(capsys, a, "--where", "reason == 'dropped: too long; n_tokens=900'")) == ["e6"]
    assert _ids(_json(capsys, a, "--where", "kept == false", "--where", "answer = 2")) == ["e3"]
    cols = _json(capsys, a, "--kept", "--columns", "ppl,response")
    assert cols["rows"][0] == {"id": "e1", "ppl": 2.0, "response": "answer to e1"}


def test_where_errors(runs, capsys):
    assert parse_where("  nll_full>=1e-3 ") == ("nll_full", ">=", "1e-3")
    for bad in ("ppl ~ 3", "ppl <", "ppl < abc", "nope < 3", "__import__('os') == 1"):
        capsys.readouterr()
        assert main(["inspect", str(runs["a"]), "--where", bad]) == 2
        assert "pipeline: error: --where" in capsys.readouterr().err
    assert main(["inspect", str(runs["a"]), "--sort", "nope"]) == 2
    assert main(["inspect", str(runs["a"]), "--id", "e1", "--compare", str(runs["b"])]) == 2
    assert main(["inspect", str(runs["a"]), "--id", "e1", "--kept"]) == 2
    assert main(["inspect", "--list", str(runs["a"])]) == 2
    assert main(["inspect"]) == 2
    assert main(["inspect", str(runs["runs"])]) == 2  # not a run or card directory


def test_example(runs, capsys):
    report = _json(capsys, str(runs["a"]), "--id", "e6")
    assert report == {
        "source": str(runs["a"]), "id": "e6", "kept": False, "weight": 0.0,
        "reason": "dropped: too long; n_tokens=900", "select": SELECT,
        "scores": {"nll": 2.0, "ppl": 5.0, "n_tokens": 900}, "ranks": {"nll": 5, "ppl": 5, "n_tokens": 6}, "of": 6,
        "prompt": "question e6", "response": "answer to e6", "other": {"answer": "5"},
    }
    capsys.readouterr()
    assert main(["inspect", str(runs["a"]), "--id", "nope"]) == 2
    assert "no example with id 'nope'" in capsys.readouterr().err


def test_compare_runs_and_card(runs, capsys):
    report = _json(capsys, str(runs["a"]), "--compare", str(runs["b"]))
    # A keeps {e1, e2, e4}, B keeps {e2, e3, e4, e5}: overlap 2, union 5.
    assert report["a"] == {"path": str(runs["a"]), "kind": "run", "name": "a", "recipe": "sft-math", "read": 6, "kept": 3}
    assert (report["overlap"], report["union"], report["jaccard"]) == (2, 5, 0.4)
    assert (report["only_a"], report["only_b"]) == (1, 2)
    # ppl A: 2, 1, 3 -> mean 2, median 2; B: 1, 4, 3, 6 -> mean 3.5, median 3.5.
    assert report["shift"]["ppl"] == {"a": {"count": 3, "mean": 2.0, "median": 2.0},
                                      "b": {"count": 4, "mean": 3.5, "median": 3.5},
                                      "mean_shift": 1.5, "median_shift": 1.5}
    # n_tokens A: 100, 50, 80 -> mean 230/3, median 80; B: 50, 200, 80, 120 -> mean 112.5, median 100.
    assert report["shift"]["n_tokens"]["mean_shift"] == pytest.approx(112.5 - 230 / 3)
    assert report["shift"]["n_tokens"]["median_shift"] == 20.0
    assert report["borrowed_scores"] == {}

    card = _json(capsys, str(runs["a"]), "--compare", str(runs["card"]))
    assert card["b"] == {"path": str(runs["card"]), "kind": "card", "name": "card-b", "recipe": "sft-math",
                         "read": 6, "kept": 4}
    assert (card["overlap"], card["jaccard"], card["only_a"], card["only_b"]) == (2, 0.4, 1, 2)
    assert card["shift"] == report["shift"]  # the card has no scores: B's are read from A's score table
    assert card["borrowed_scores"] == {"b": ["nll", "ppl", "n_tokens"]}


def test_card_as_subset(runs, capsys):
    card = str(runs["card"])
    summary = _json(capsys, card)
    assert summary["counts"] == {"read": 6, "kept": 4, "dropped": 2}
    assert [r["id"] for r in summary["kept_examples"]] == ["e2", "e3", "e4"]
    rows = _json(capsys, card, "--where", "answer >= 3", "--kept")
    assert _ids(rows) == ["e4", "e5"] and rows["rows"][0]["reason"] == "kept: in data card card-b"
    assert _json(capsys, card, "--id", "e3")["kept"] is True


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_export_round_trip(runs, tmp_path, capsys, suffix):
    out = tmp_path / "export" / f"kept.{suffix}"
    report = _json(capsys, str(runs["a"]), "--export", str(out), "--kept", "--sort", "ppl")
    expected = load_table(runs["a"]).filter(pl.col("kept")).sort("ppl")
    assert report == {"source": str(runs["a"]), "path": str(out), "format": suffix, "rows": 3,
                      "columns": expected.columns}
    back = pl.read_parquet(out) if suffix == "parquet" else pl.read_ndjson(out, schema=expected.schema)
    assert_frame_equal(back, expected)
    assert back["id"].to_list() == ["e2", "e1", "e4"]
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # atomic: no temp file left
    assert main(["inspect", str(runs["a"]), "--export", str(tmp_path / "x.csv")]) == 2


def test_list(runs, capsys):
    report = _json(capsys, "--list", "--output-dir", str(runs["runs"]), "--cards-dir", str(runs["cards"]))
    assert report == {
        "output_dir": str(runs["runs"]), "cards_dir": str(runs["cards"]),
        "runs": [
            {"name": "a", "path": str(runs["a"]), "recipe": "sft-math", "started": "2023-11-14T22:13:20Z",
             "status": "done", "read": 6, "kept": 3,
             "metrics": {"accuracy": {"base": 0.25, "tuned": 0.5}, "nll": {"base": 1.5, "tuned": 1.25}}},
            {"name": "b", "path": str(runs["b"]), "recipe": "sft-math", "started": "2023-11-14T22:13:20Z",
             "status": "selected", "read": 6, "kept": 4, "metrics": None},
        ],
        "cards": [{"name": "card-b", "path": str(runs["card"]), "rules": [{"rule": "random", "fraction": 0.66}],
                   "read": 6, "kept": 4, "run_dir": str(runs["card"].parent.parent / "gone")}],
    }
    empty = _json(capsys, "--list", "--output-dir", str(runs["runs"] / "none"), "--cards-dir", str(runs["a"]))
    assert empty["runs"] == [] and empty["cards"] == []


def test_rich_output(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells at 80 columns when not on a terminal
    a, b = str(runs["a"]), str(runs["b"])
    cases = [
        ([a], ["read 6  kept 3  dropped 3", "fraction(column=ppl", "dropped: too long"]),
        ([a, "--where", "ppl < 5", "--sort", "ppl", "--desc"], ["4 of 6 match", "e3"]),
        ([a, "--id", "e6"], ["dropped", "too long", "question e6", "answer to e6"]),
        ([a, "--compare", b], ["overlap 2", "Jaccard 0.4", "only in B 2", "ppl"]),
        ([a, "--compare", str(runs["card"])], ["read from the other side"]),
        ([a, "--export", str(tmp_path / "o.parquet")], ["wrote 6 rows"]),
        (["--list", "--output-dir", str(runs["runs"]), "--cards-dir", str(runs["cards"])],
         ["0.250 -> 0.500", "4/6", "random(fraction=0.66)"]),
    ]
    for args, expected in cases:
        capsys.readouterr()
        assert main(["inspect", *args]) == 0, args
        out = capsys.readouterr().out
        for text in expected:
            assert text in out, (args, text, out)


# --- user mistakes end in one line, never a traceback; inspect never writes into a run or card ---------


def _error(capsys, *args: str) -> str:
    """Run `pipeline inspect ARGS`, expect exit status 2 and exactly one `pipeline: error:` line."""
    capsys.readouterr()
    assert main(["inspect", *args]) == 2, args
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pipeline: error: "), (args, captured.err)
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


MARKUP = {"e1": "[bold]loud[/bold]", "e2": "a [/x] b", "e3": "[link=https://example.com]click[/link]",
          "e4": ":smile: [red]", "e5": "back\\", "e6": "plain"}


@pytest.fixture
def markup_run(tmp_path: Path) -> Path:
    """A run whose prompts, responses and reasons are rich markup look-alikes."""
    run = _make_run(tmp_path / "runs", "m[x]", _selection({"e1", "e2", "e3"}, MARKUP))
    pl.DataFrame({"id": IDS, "prompt": [f"p {MARKUP[i]}" for i in IDS],
                  "response": [f"r {MARKUP[i]}" for i in IDS]}).write_parquet(run / "data" / "train.parquet")
    return run


def test_rich_prints_user_text_literally(markup_run, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    run = str(markup_run)
    cases = [
        ([run], ["[bold]loud[/bold]", "a [/x] b", "[link=https://example.com]click[/link]", "m[x]"]),
        ([run, "--where", "reason == a [/x] b"], ["reason == a [/x] b", "1 of 6 match", "p a [/x] b"]),
        ([run, "--where", "reason != [/x]", "--columns", "prompt,response,reason"],
         ["p :smile: [red]", "r [bold]loud[/bold]", "back\\"]),
        ([run, "--id", "e3"], ["reason: [link=https://example.com]click[/link]",
                               "p [link=https://example.com]click[/link]", "r [link=https://example.com]click[/link]"]),
        ([run, "--id", "e4"], ["p :smile: [red]", "r :smile: [red]"]),
        (["--list", "--output-dir", str(markup_run.parent)], ["m[x]"]),
    ]
    for args, expected in cases:
        capsys.readouterr()
        assert main(["inspect", *args]) == 0, args
        captured = capsys.readouterr()
        assert captured.err == "", (args, captured.err)
        for text in expected:
            assert text in captured.out, (args, text, captured.out)
        assert "😄" not in captured.out


def test_export_unwritable_path_is_one_line(runs, tmp_path, capsys):
    a = str(runs["a"])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = _error(capsys, a, "--export", str(blocker / "x.parquet"))
    assert line.startswith(f"pipeline: error: --export {blocker / 'x.parquet'}: ") and "not a folder" in line
    assert _error(capsys, a, "--export", "/proc/x.parquet").startswith("pipeline: error: --export /proc/x.parquet: ")
    folder = tmp_path / "export-to"
    folder.mkdir()
    (tmp_path / "d.parquet").mkdir()
    assert "is a folder" in _error(capsys, a, "--export", str(tmp_path / "d.parquet"))
    if os.geteuid() != 0:  # root writes anywhere
        folder.chmod(0o555)
        try:
            line = _error(capsys, a, "--export", str(folder / "x.parquet"))
            assert line.startswith(f"pipeline: error: --export {folder / 'x.parquet'}: Permission denied")
        finally:
            folder.chmod(0o755)


def test_export_never_writes_into_a_run_or_card(runs, tmp_path, capsys):
    a, card = runs["a"], runs["card"]
    before = {p: p.read_bytes() for p in (a / "selection.parquet", card / "subset.parquet")}
    for target in (a / "selection.parquet", a / "data" / "x.parquet", a / "new" / "deep" / "x.jsonl",
                   card / "subset.parquet", runs["b"] / "x.parquet"):
        line = _error(capsys, str(a), "--kept", "--export", str(target), "--force")
        assert line.startswith(f"pipeline: error: --export {target}: ") and "folder" in line, line
    assert not (a / "new").exists() and not (a / "data" / "x.parquet").exists()
    assert {p: p.read_bytes() for p in before} == before
    # A relative path through `..` is resolved before the check.
    sneaky = a / "data" / ".." / "selection.parquet"
    assert "is a run folder" in _error(capsys, str(a), "--export", str(sneaky), "--force")
    assert "is a data card folder" in _error(capsys, str(card), "--export", str(card / "out.parquet"))

    out = tmp_path / "kept.parquet"
    out.write_bytes(b"old")
    assert _error(capsys, str(a), "--kept", "--export", str(out)) == \
        f"pipeline: error: --export {out}: file exists; pass --force to overwrite it"
    assert out.read_bytes() == b"old"
    assert _json(capsys, str(a), "--kept", "--export", str(out), "--force")["rows"] == 3
    assert pl.read_parquet(out).height == 3
    assert _error(capsys, str(a), "--force") == "pipeline: error: --force applies to --export only"


def _broken_runs(root: Path) -> dict[str, str]:
    """Runs next to good ones, each broken one way; name -> a fragment of its expected error."""
    kept = _selection({"e1"}, {i: "r" for i in IDS})
    bad_yaml = _make_run(root, "bad-yaml", kept)
    (bad_yaml / "config.yaml").write_text("name: [unclosed\n")
    not_mapping = _make_run(root, "not-mapping", kept)
    (not_mapping / "config.yaml").write_text("- a list\n")
    truncated = _make_run(root, "truncated-metrics", kept, {"base": {"accuracy": 0.5}})
    (truncated / "metrics.json").write_text('{"base": {"accu')
    corrupt = _make_run(root, "corrupt-selection", kept)
    (corrupt / "selection.parquet").write_bytes(b"PAR1 not really parquet")
    no_kept = _make_run(root, "no-kept", kept.drop("kept"))
    binary = _make_run(root, "binary-config", kept)
    (binary / "config.yaml").write_bytes(b"\xff\xfe\x00name")
    return {"bad-yaml": f"{bad_yaml / 'config.yaml'}: invalid YAML at line 2",
            "not-mapping": f"{not_mapping / 'config.yaml'}: expected a YAML mapping",
            "truncated-metrics": f"{truncated / 'metrics.json'}: invalid JSON",
            "corrupt-selection": f"{corrupt / 'selection.parquet'}: cannot read parquet",
            "no-kept": f"{no_kept / 'selection.parquet'}: no column kept",
            "binary-config": f"{binary / 'config.yaml'}: cannot read"}


def test_list_shows_broken_runs_and_cards_as_rows(runs, capsys, monkeypatch):
    broken = _broken_runs(runs["runs"])
    bad_card = runs["cards"] / "bad-card"
    bad_card.mkdir()
    (bad_card / "card.json").write_text('{"name": "bad-')
    pl.DataFrame({"id": ["e1"]}).write_parquet(bad_card / "subset.parquet")
    args = ["--list", "--output-dir", str(runs["runs"]), "--cards-dir", str(runs["cards"])]
    report = _json(capsys, *args)
    by_name = {r["name"]: r for r in report["runs"]}
    assert sorted(by_name) == sorted(["a", "b", *broken])
    assert by_name["a"]["status"] == "done" and "error" not in by_name["a"]
    for name, fragment in broken.items():
        assert set(by_name[name]) == {"name", "path", "error"}, by_name[name]
        assert by_name[name]["error"].startswith(fragment), (name, by_name[name]["error"])
    cards = {c["name"]: c for c in report["cards"]}
    assert cards["card-b"]["kept"] == 4
    assert cards["bad-card"]["error"].startswith(f"{bad_card / 'card.json'}: invalid JSON")

    monkeypatch.setenv("COLUMNS", "250")
    capsys.readouterr()
    assert main(["inspect", *args]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "0.250 -> 0.500" in captured.out and "bad-yaml" in captured.out
    assert "invalid YAML" in captured.out and "random(fraction=0.66)" in captured.out
    # Inspecting a broken run itself is one error line naming the file.
    for name, fragment in broken.items():
        assert _error(capsys, str(runs["runs"] / name)).startswith(f"pipeline: error: {fragment}")


def test_where_nan_and_inf(runs, capsys):
    run = runs["a"]
    pl.DataFrame({"id": IDS, "nll": NLL, "ppl": [2.0, float("nan"), 4.0, 3.0, 6.0, float("nan")],
                  "n_tokens": TOKENS}).write_parquet(run / "scores.parquet")
    a = str(run)
    for op in ("<", "<=", ">", ">="):
        line = _error(capsys, a, "--where", f"ppl {op} nan")
        assert line == (f"pipeline: error: --where 'ppl {op} nan': no number is {op} NaN, so this would match "
                        "nothing; use 'ppl == nan' to find NaN values or 'ppl != nan' to leave them out")
    assert _ids(_json(capsys, a, "--where", "ppl == NaN")) == ["e2", "e6"]
    assert _ids(_json(capsys, a, "--where", "ppl != nan")) == ["e1", "e3", "e4", "e5"]
    # IEEE: a NaN score is neither above nor below anything (polars alone orders NaN above all numbers).
    assert _ids(_json(capsys, a, "--where", "ppl > 3")) == ["e3", "e5"]
    assert _ids(_json(capsys, a, "--where", "ppl < inf")) == ["e1", "e3", "e4", "e5"]
    assert _ids(_json(capsys, a, "--where", "ppl > -inf", "--where", "ppl <= 2")) == ["e1"]
    assert _ids(_json(capsys, a, "--where", "n_tokens == nan")) == []
    assert _ids(_json(capsys, a, "--where", "n_tokens >= 900")) == ["e6"]
    assert _error(capsys, a, "--where", "ppl < abc") == \
        "pipeline: error: --where 'ppl < abc': column ppl is numeric (Float64), 'abc' is not a number"
    assert _error(capsys, a, "--where", "n_tokens == '3'") == \
        "pipeline: error: --where \"n_tokens == '3'\": column n_tokens is numeric (Int64), \"'3'\" is not a number"
    assert _error(capsys, a, "--where", "kept == maybe") == \
        "pipeline: error: --where 'kept == maybe': column kept is true/false, not 'maybe'"


def test_paths_with_glob_characters_are_literal(tmp_path, capsys):
    root = tmp_path / "runs"
    _make_run(root, "ra", _selection({"e1"}, {i: "ra" for i in IDS}))
    _make_run(root, "rb", _selection({"e2"}, {i: "rb" for i in IDS}))
    lit = _make_run(root, "r[ab]", _selection({"e3", "e4"}, {i: "literal" for i in IDS}))
    summary = _json(capsys, str(lit))
    assert summary["counts"] == {"read": 6, "kept": 2, "dropped": 4}
    assert [r["id"] for r in summary["kept_examples"]] == ["e3", "e4"]
    rows = _json(capsys, str(lit), "--columns", "reason")
    assert rows["total"] == 6 and {r["reason"] for r in rows["rows"]} == {"literal"}
    assert _json(capsys, str(lit), "--id", "e3")["kept"] is True
    assert _json(capsys, str(lit), "--compare", str(root / "ra"))["overlap"] == 0
    listing = _json(capsys, "--list", "--output-dir", str(root), "--cards-dir", str(tmp_path / "none"))
    assert {r["name"]: r["kept"] for r in listing["runs"]} == {"r[ab]": 2, "ra": 1, "rb": 1}
    nested = tmp_path / "o[ab]"
    _make_run(nested, "only", _selection({"e1"}, {i: "x" for i in IDS}))
    (tmp_path / "oa").mkdir()
    _make_run(tmp_path / "oa", "decoy", _selection({"e1"}, {i: "x" for i in IDS}))
    listing = _json(capsys, "--list", "--output-dir", str(nested), "--cards-dir", str(tmp_path / "none"))
    assert [r["name"] for r in listing["runs"]] == ["only"]
    # A card that recorded a run path with glob characters reads that run's scores only.
    card = tmp_path / "cards" / "c[ab]"
    card.mkdir(parents=True)
    pl.DataFrame({"id": ["e3"], "prompt": ["q"]}).write_parquet(card / "subset.parquet")
    (card / "card.json").write_text(json.dumps({"name": "c", "run": {"run_dir": str(lit)}}))
    assert _json(capsys, str(card), "--id", "e3")["reason"] == "literal"
    out = tmp_path / "x[ab].parquet"
    assert _json(capsys, str(lit), "--export", str(out))["rows"] == 6 and out.is_file()


def test_other_mistakes_are_one_line(runs, tmp_path, capsys):
    a = str(runs["a"])
    assert _error(capsys, a, "-n", "-1") == "pipeline: error: -n -1: must be 0 or more"
    assert _error(capsys, a, "--kept", "-n", "-5").endswith("-n -5: must be 0 or more")
    assert _error(capsys, a, "--export", str(tmp_path / "x.parquet"), "-n", "-1").endswith("must be 0 or more")
    assert _json(capsys, a, "--kept", "-n", "0")["shown"] == 0
    train = runs["a"] / "data" / "train.parquet"
    pl.read_parquet(train).with_columns(tags=pl.Series([["x"], ["y", "z"], [], ["a"], ["b"], ["c"]])).write_parquet(train)
    assert _error(capsys, a, "--sort", "tags") == \
        "pipeline: error: --sort 'tags': column tags holds List(String); sort by a number, true/false or text column"
    assert "column tags holds List(String)" in _error(capsys, a, "--where", "tags == x")
    assert _json(capsys, a, "--columns", "tags", "-n", "2")["rows"][1] == {"id": "e2", "tags": ["y", "z"]}
    bare = _make_run(tmp_path / "runs", "bare", _selection(set(), {i: "" for i in IDS}))
    for name in ("selection.parquet", "scores.parquet"):
        (bare / name).unlink()
    assert _json(capsys, str(bare))["status"] == "no selection yet"
    assert _error(capsys, str(bare), "--kept") == f"pipeline: error: {bare} has no selection.parquet or scores.parquet yet"
    assert _error(capsys, str(tmp_path / "nope")) == f"pipeline: error: {tmp_path / 'nope'} does not exist"
    assert _error(capsys, a, "--id", "nope") == f"pipeline: error: no example with id 'nope' in {a}"
    assert _error(capsys, a, "--id", "e1", "--columns", "ppl") == "pipeline: error: --columns applies to listings, not --id"
    assert _error(capsys, a, "--id", "e1", "-n", "3") == "pipeline: error: -n does not apply to --id"
    assert _error(capsys, a, "--output-dir", "runs") == "pipeline: error: --output-dir/--cards-dir apply to --list only"
    # A score table without ids, or a non-boolean kept column, names the file.
    pl.DataFrame({"ppl": PPL}).write_parquet(runs["b"] / "scores.parquet")
    assert _error(capsys, str(runs["b"])).startswith(f"pipeline: error: {runs['b'] / 'scores.parquet'}: no column id")
