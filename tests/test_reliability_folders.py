"""Issue 24, rule 1: a run never writes into someone else's folder.

A run folder is created by the project and marked; `--run-dir` takes only a new or empty folder or a
run of the same recipe; publishing replaces nothing outside a marked run; `ingest --out`,
`regenerate --out` and `inspect --export` share one guard against cards, runs and their own inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.core.registry import ConfigError
from pipeline.core.runs import RUN_MARKER, new_run_dir, run_marker
from pipeline.stages.base import publish


def _card(folder: Path, config: dict | None = None) -> Path:
    """A small data card folder (card.json + subset.parquet) recording `config`."""
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps({"name": folder.name, "run": {"config": config or {"name": "c"}}}))
    pl.DataFrame({"id": ["a"], "prompt": ["p"], "response": ["r"]}).write_parquet(folder / "subset.parquet")
    return folder


@pytest.fixture
def world(tmp_path):
    """A user's project folder with a data file, a data card, a finished run of another recipe, an empty folder."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "train.jsonl").write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    other = new_run_dir({"name": "curate-math"}, tmp_path / "other-run")
    (other / "metrics.json").write_text('{"summary": "the first run"}')
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    return {"notes": tmp_path / "notes", "project": project, "card": _card(tmp_path / "cards" / "c1"), "other": other, "empty": tmp_path / "empty",
            "source": project / "data" / "train.jsonl"}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".run.lock"}


@pytest.mark.parametrize("target,expect", [
    ("project", "is not a run folder (no .pipeline-run) and not empty"),
    ("card", "is not a run folder"),
    ("other", "is a run of recipe 'curate-math', not 'curate'"),
    ("source", "is a file, not a folder"),
])
def test_run_dir_takes_only_a_new_empty_or_same_recipe_run(world, tmp_path, target, expect, cli_error):
    before = _snapshot(tmp_path)
    line = cli_error(["run", "curate", "--run-dir", str(world[target]),
                           "--set", f"data.source={world['source']}", "--set", f"cache_dir={tmp_path / 'cache'}"])
    assert line.startswith(f"pipeline: error: --run-dir: {world[target]}") and expect in line, line
    assert _snapshot(tmp_path) == before  # nothing written, nothing replaced
    assert not (world["project"] / "data" / "train.parquet").exists()


def test_run_dirs_the_project_creates_are_marked_and_resumable(world, tmp_path):
    fresh = new_run_dir({"name": "curate"}, tmp_path / "new" / "run")
    assert run_marker(fresh)["recipe"] == "curate" and (fresh / "config.yaml").is_file()
    assert new_run_dir({"name": "curate"}, fresh) == fresh  # resume: same recipe
    assert new_run_dir({"name": "curate"}, world["empty"]) == world["empty"]  # an empty folder becomes a run
    assert (world["empty"] / RUN_MARKER).is_file()
    timestamped = new_run_dir({"name": "curate", "output_dir": str(tmp_path / "runs")})
    assert run_marker(timestamped)["recipe"] == "curate"
    with pytest.raises(ConfigError, match="is a run of recipe 'curate'"):
        new_run_dir({"name": "sft-math"}, fresh)


def test_publish_replaces_nothing_outside_a_marked_run(world, tmp_path):
    src = tmp_path / "src.parquet"
    src.write_bytes(b"new")
    user_file = world["project"] / "data" / "train.jsonl"
    with pytest.raises(ValueError, match="not inside a run folder the project created"):
        publish(src, user_file)
    assert user_file.read_bytes().startswith(b'{"prompt"')
    inside = world["other"] / "data" / "train.parquet"
    inside.parent.mkdir()
    inside.write_bytes(b"old")
    assert publish(src, inside).read_bytes() == b"new"  # a run's own copy is replaced
    fresh = tmp_path / "unmarked" / "x.parquet"
    assert publish(src, fresh).read_bytes() == b"new"  # writing where nothing was is not a removal


@pytest.mark.parametrize("command,target,expect", [
    ("ingest", "card", "is a data card folder"),
    ("ingest", "card/sub", "is a data card folder"),
    ("ingest", "other", "is a run folder"),
    ("ingest", "notes", "a folder that is not empty"),
    ("ingest", "source", "overlaps this command's input"),
    ("regenerate", "card", "is a data card folder"),
    ("regenerate", "other", "is a run folder"),
    ("regenerate", "notes", "a folder that is not empty"),
    ("export", "card/x.parquet", "is a data card folder"),
    ("export", "other/data/x.parquet", "is a run folder"),
    ("export", "project/data/train.jsonl", "file exists; pass --force"),
])
def test_one_output_guard_for_every_command(world, tmp_path, command, target, expect, cli_error):
    head, _, rest = target.partition("/")
    out = world[head] / rest if rest else world[head]
    before = _snapshot(tmp_path)
    if command == "ingest":
        source = world["project"] if head == "source" else world["source"]
        out = world["project"] / "data" / "out" if head == "source" else out
        args = ["ingest", str(source), "--out", str(out)]
        flag = "--out"
    elif command == "regenerate":
        args, flag = ["regenerate", str(world["card"]), "--out", str(out)], "--out"
    else:
        args, flag = ["inspect", str(world["card"]), "--export", str(out)], "--export"
    line = cli_error(args)
    assert line.startswith(f"pipeline: error: {flag} {out}: ") and expect in line, line
    assert _snapshot(tmp_path) == before


def test_the_guard_lets_a_command_reuse_its_own_output(world, tmp_path, capsys):
    out = tmp_path / "ingested"
    for _ in range(2):  # an earlier ingest output (ingest.json) may be written again
        assert main(["ingest", str(world["source"]), "--out", str(out)]) == 0
    assert pl.read_parquet(out / "examples.parquet").height == 1
    export = tmp_path / "kept.jsonl"
    assert main(["inspect", str(world["card"]), "--export", str(export)]) == 0
    assert main(["inspect", str(world["card"]), "--export", str(export), "--force"]) == 0  # a plain file, forced
