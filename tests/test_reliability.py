"""Runs and caches under hostile conditions: same-second runs, live run dirs, damaged caches,
concurrent runs, killed runs, stored results, and user mistakes inside a flow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.core.registry import ConfigError
from pipeline.core.runs import new_run_dir

REPO = Path(__file__).resolve().parents[1]


def curate(tmp_path, tiny_model_dir, run: str, *extra: str) -> list[str]:
    args = ["run", "curate-math", "--run-dir", str(tmp_path / run)]
    for s in (f"model={tiny_model_dir}", f"cards_dir={tmp_path / 'cards'}", f"cache_dir={tmp_path / 'cache'}",
              "data.n_train=12", "score.max_length=128", *extra):
        args += ["--set", s]
    return args


def test_two_runs_in_one_second_get_two_folders(tmp_path):
    config = {"name": "r", "output_dir": str(tmp_path)}
    a, b = new_run_dir(config), new_run_dir(config)
    assert a != b and a.parent == b.parent == tmp_path
    assert a.name.startswith("r-") and (a / "config.yaml").exists() and (b / "config.yaml").exists()


def test_run_dir_of_a_live_run_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pipeline.core.runs import claim
        Path({str(tmp_path / 'run')!r}).mkdir()
        claim(Path({str(tmp_path / 'run')!r}))
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=r"in use by a live run \(pid \d+\)"):
            new_run_dir({"name": "r"}, tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    assert new_run_dir({"name": "r"}, tmp_path / "run") == tmp_path / "run"  # its process is gone: free again


def test_damaged_cache_files_are_recomputed_and_old_runs_keep_their_copies(tmp_path, tiny_model_dir, capsys):
    assert main(curate(tmp_path, tiny_model_dir, "a")) == 0
    scores_a = pl.read_parquet(tmp_path / "a" / "scores.parquet")
    cache = tmp_path / "cache"
    cached_scores = next((cache / "scores").glob("*/scores.parquet"))
    cached_scores.write_bytes(cached_scores.read_bytes()[:100])  # truncated
    next((cache / "data").glob("*/train.parquet")).unlink()  # deleted
    capsys.readouterr()

    assert main(curate(tmp_path, tiny_model_dir, "b")) == 0
    assert "scored with perplexity" in capsys.readouterr().out  # recomputed, not a polars error
    assert pl.read_parquet(tmp_path / "b" / "scores.parquet").equals(scores_a)
    assert pl.read_parquet(tmp_path / "a" / "scores.parquet").equals(scores_a)  # the old run is intact


def test_concurrent_scoring_of_one_key_computes_once(tmp_path, tiny_model_dir):
    from pipeline.data import load_math
    from pipeline.scorers import ScoreContext, Scorer, register_scorer
    from pipeline.scorers.cache import score_cached

    calls: list[int] = []

    @register_scorer("_slow_count")
    class SlowCount(Scorer):
        uses_model = False

        def score(self, examples, ctx):
            calls.append(examples.height)
            time.sleep(0.5)
            return examples.select("id", pl.col("response").str.len_chars().cast(pl.Float64).alias("chars"))

    examples = load_math("gsm_symbolic", n_train=6, n_val=1, n_test=1, seed=0)["train"]
    ctx = ScoreContext(model_name=tiny_model_dir, progress=False)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(score_cached(examples, "_slow_count", ctx, tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [6] and len(set(paths)) == 1  # the second waited on the lock, then reused


def test_flows_persist_no_task_results(tmp_path, tiny_model_dir):
    """Nothing is written to Prefect's result storage, so nothing can ever be unpickled from it."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    before = {p: p.stat().st_mtime for p in storage.rglob("*")} if storage.exists() else {}
    assert main(curate(tmp_path, tiny_model_dir, "a")) == 0
    after = {p: p.stat().st_mtime for p in storage.rglob("*")} if storage.exists() else {}
    assert after == before


def test_killed_run_leaves_no_prefect_server_behind(tmp_path, tiny_model_dir):
    marker = f"sft-pipeline-test-{os.getpid()}-{time.time_ns()}"
    env = {**os.environ, "SFT_PIPELINE_CRASH": "score:1", "SFT_PIPELINE_TEST_MARKER": marker,
           "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *curate(tmp_path, tiny_model_dir, "a")],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed by SIGKILL after the first score shard

    def survivors() -> list[int]:
        found = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and marker.encode() in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
        return found

    deadline = time.time() + 20
    while survivors() and time.time() < deadline:
        time.sleep(0.5)
    assert survivors() == []


def test_a_mistake_inside_a_flow_is_one_line(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "subset.parquet"
    pl.DataFrame({"id": ["a"], "prompt": ["p"]}).write_parquet(bad)  # no response column
    code = main(["run", "train-subset", "--run-dir", str(tmp_path / "r"), "--set", f"model={tiny_model_dir}",
                 "--set", f"cache_dir={tmp_path / 'cache'}", "--set", f"data.subset={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"pipeline: error: {bad}: missing columns ['response'] "
                                           "(need id, prompt, response)")
