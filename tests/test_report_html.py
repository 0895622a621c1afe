"""`pipeline report`: the self-contained HTML page of a real curate run (tiny model), its card, a study and an
audit; escaping; half-finished runs; the flow hook; TensorBoard curves; and the page in a real headless browser."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.reports import html as report_html
from pipeline.reports.html import example_data, rule_cuts, write_report

XSS_PROMPT = "<script>document.title='pwned'</script> what is 2+2?"
XSS_RESPONSE = "</script><!--<script>--><img src=x onerror=\"document.title='pwned'\"> four & more"
WORD = "lighthouse"  # in the prompts of exactly three rows


def _rows() -> list[dict]:
    rows = [{"prompt": f"Question {i}: name a colour number {i}.", "response": f"Colour {i} is " + "blue " * (i % 4 + 1),
             "domain": "colours" if i % 2 else "shapes"} for i in range(9)]
    rows += [{"prompt": f"Tell me about the {WORD} number {i}.", "response": f"The {WORD} stands.", "domain": "places"}
             for i in range(3)]
    rows.append({"prompt": XSS_PROMPT, "response": XSS_RESPONSE, "domain": "shapes"})
    rows.append({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"},
                              {"role": "assistant", "content": "hello, friend"}], "domain": "chat"})
    return rows


@pytest.fixture(scope="module")
def curated(tmp_path_factory, tiny_model_dir) -> dict:
    """A real `pipeline run curate` of 14 records + 1 broken line (quarantined), quantile on ppl."""
    root = tmp_path_factory.mktemp("report")
    src = root / "mine.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _rows()) + "{not json\n")
    common = ["--set", f"model={tiny_model_dir}", "--set", f"cache_dir={root / 'cache'}",
              "--set", f"cards_dir={root / 'cards'}", "--set", "score.max_length=96"]
    run = root / "run"
    assert main(["run", "curate", "--run-dir", str(run), *common, "--set", f"data.source={src}",
                 "--set", "select=[{rule: quantile, column: ppl, keep: [0.0, 0.5]}]"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    return {"root": root, "run": run, "card": Path(metrics["data_card"]), "common": common, "src": src}


def _table(run: Path) -> pl.DataFrame:
    """The run's rows computed here from its parquet files (independent of the report's code)."""
    sel = pl.read_parquet(run / "selection.parquet")
    return (sel.join(pl.read_parquet(run / "scores.parquet"), on="id", how="left")
            .join(pl.read_parquet(run / "data" / "train.parquet"), on="id", how="left"))


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert m, "no embedded data block"
    return json.loads(m.group(1))


def _count(page: str, name: str) -> str:
    m = re.search(rf'id="count-{name}">([^<]*)<', page)
    return m.group(1) if m else ""


def test_flow_writes_a_report_with_counts_cuts_and_every_example(curated):
    run = curated["run"]
    page = (run / "report.html").read_text()
    t = _table(run)
    kept, dropped = t.filter(pl.col("kept")), t.filter(~pl.col("kept"))
    quarantined = pl.read_parquet(run / "quarantine.parquet").height
    assert quarantined == 1
    assert _count(page, "read") == str(t.height + 1) and _count(page, "quarantined") == "1"
    assert _count(page, "kept") == str(kept.height) and _count(page, "dropped") == str(dropped.height)
    assert "dropped: outside quantile [0.0, 0.5]" in page and "places" in page  # reasons and domains
    for col in ("ppl", "nll", "n_tokens"):
        assert f'id="hist-{col}"' in page
    top = kept.get_column("ppl").max()
    assert f"quantile 0.5: highest kept {top:.4g}" in page  # the cut is drawn where the rule cut
    data = _data(page)
    assert data["totals"] == {"rows": t.height, "kept": kept.height, "dropped": dropped.height, "undecided": 0}
    assert sorted(r["id"] for r in data["rows"]) == sorted(t.get_column("id").to_list())
    by_id = {r["id"]: r for r in data["rows"]}
    for r in t.iter_rows(named=True):
        assert by_id[r["id"]]["scores"]["ppl"] == pytest.approx(r["ppl"])
    chat = next(r for r in data["rows"] if r["turns"])
    assert [x["role"] for x in chat["turns"]] == ["system", "user", "assistant"]
    assert "pipeline report" in page and "quantile(column=ppl" in page  # what ran


def test_text_is_escaped_and_nothing_is_fetched(curated):
    page = (curated["run"] / "report.html").read_text()
    assert "<script>document.title" not in page and "<img src=x" not in page and "<!--<script>" not in page
    assert page.count("<script") == 2  # our data block and our script, nothing from the examples
    xss = next(r for r in _data(page)["rows"] if r["prompt"] == XSS_PROMPT)
    assert xss["response"] == XSS_RESPONSE  # the text survives exactly, as data
    for fetch in ("<link", 'src="http', "src='http", 'href="http', "url(http", "@import"):
        assert fetch not in page
    assert report_html.json_for_script({"a": "</script><!--"}) == '{"a": "\\u003c/script\\u003e\\u003c!--"}'


def test_card_report_shows_its_counts_domains_and_rows(curated):
    card = curated["card"]
    out = write_report(card, curated["root"] / "card.html")
    page = out.read_text()
    facts = json.loads((card / "card.json").read_text())
    for k in ("read", "kept", "dropped", "quarantined"):
        assert _count(page, k) == str(facts["counts"][k])
    data = _data(page)
    subset, dropped = pl.read_parquet(card / "subset.parquet"), pl.read_parquet(card / "dropped.parquet")
    assert len(data["rows"]) == subset.height + dropped.height
    assert {r["id"] for r in data["rows"] if r["kept"]} == set(subset.get_column("id"))
    assert 'id="hist-ppl"' in page  # the card's run still has its scores


def test_a_card_whose_run_is_gone_shows_its_recorded_statistics(curated, tmp_path):
    card = tmp_path / "card"
    shutil.copytree(curated["card"], card)
    facts = json.loads((card / "card.json").read_text())
    facts["run"]["run_dir"] = str(tmp_path / "gone")
    (card / "card.json").write_text(json.dumps(facts))
    page = html.unescape(write_report(card).read_text())
    assert "the card's run (and its scores.parquet) is gone" in page and 'id="hist-ppl"' not in page
    assert f"{facts['score_stats']['ppl']['kept']['median']:.4g}" in page  # the recorded statistics instead


def test_an_unfinished_study_says_which_cells_started(tmp_path):
    (tmp_path / "config.yaml").write_text("name: s\nflow: study\n")
    for cell in ("baseline-seed0", "dft-seed0"):
        (tmp_path / "cells" / cell).mkdir(parents=True)
    page = write_report(tmp_path).read_text()
    assert "the study has not finished (2 cells started: baseline-seed0, dft-seed0)" in page


def test_not_a_report_folder_is_one_error_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    for target, expect in ((tmp_path, "is not a run, data card, study or audit folder"),
                           (tmp_path / "notes.txt", "is a file"), (tmp_path / "nope", "does not exist")):
        capsys.readouterr()
        assert main(["report", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pipeline: error:") and expect in err[0]


def test_out_never_replaces_a_users_file(curated, tmp_path, capsys):
    mine = tmp_path / "mine.html"
    mine.write_text("<p>my notes</p>")
    assert main(["report", str(curated["run"]), "--out", str(mine)]) == 2
    assert mine.read_text() == "<p>my notes</p>" and "not replacing it" in capsys.readouterr().err
    assert main(["report", str(curated["run"]), "--out", str(tmp_path / "x.parquet")]) == 2
    out = tmp_path / "r.html"
    assert main(["report", str(curated["run"]), "--out", str(out)]) == 0
    assert main(["report", str(curated["run"]), "--out", str(out)]) == 0  # an earlier report is replaced


def test_half_finished_and_broken_runs_still_open_and_say_what_is_missing(curated, tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    for name in ("config.yaml", "scores.parquet"):
        shutil.copy(curated["run"] / name, half / name)
    page = write_report(half).read_text()
    assert "no selection yet" in page and "no metrics.json" in page
    assert "not selected yet: every scored row" in page and _data(page)["totals"]["undecided"] == 14
    broken = tmp_path / "broken"
    shutil.copytree(curated["run"], broken, symlinks=True)
    (broken / "report.html").unlink()
    (broken / "selection.parquet").write_bytes(b"PAR1 not really parquet")
    (broken / "metrics.json").write_text("{truncated")
    page = write_report(broken).read_text()
    assert 'id="missing"' in page and "selection.parquet" in page and "metrics.json" in page
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(curated["run"] / "config.yaml", started / "config.yaml")
    page = write_report(started).read_text()
    assert "no scores yet" in page and "What ran" in page


def test_a_report_error_never_fails_the_flow(curated, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report_html, "write_report", boom)
    run = curated["root"] / "run-no-report"
    capsys.readouterr()
    assert main(["run", "curate", "--run-dir", str(run), *curated["common"], "--set", f"data.source={curated['src']}",
                 "--set", "select=[{rule: quantile, column: ppl, keep: [0.0, 0.5]}]"]) == 0
    assert (run / "metrics.json").is_file() and not (run / "report.html").exists()
    assert "warning: report.html not written" in capsys.readouterr().err


def test_the_prefect_summary_links_to_the_report(curated, tmp_path, monkeypatch):
    import prefect.artifacts

    from pipeline.flows.common import publish_artifacts

    run = tmp_path / "copy"
    shutil.copytree(curated["run"], run, symlinks=True)
    (run / "report.html").unlink()
    seen: dict = {}
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lambda **kw: seen.update(kw))
    monkeypatch.setattr(prefect.artifacts, "create_table_artifact", lambda **kw: None)
    publish_artifacts("curate", {"run_dir": str(run)}, [])
    assert f"[report.html]({(run / 'report.html').resolve().as_uri()})" in seen["markdown"]
    assert (run / "report.html").is_file()


def _big_run(folder: Path, n_kept: int, n_dropped: int, text: int) -> pl.DataFrame:
    n = n_kept + n_dropped
    ids = [f"r{i:06d}" for i in range(n)]
    ppl = [float(i) for i in range(n)]
    folder.mkdir()
    (folder / "data").mkdir()
    (folder / "config.yaml").write_text("name: big\nflow: curate\nselect: {rule: fraction, column: ppl, fraction: 0.5}\n")
    pl.DataFrame({"id": ids, "kept": [i < n_kept for i in range(n)], "weight": [1.0] * n,
                  "reason": ["kept: x" if i < n_kept else "dropped: y; ppl=1" for i in range(n)]}
                 ).write_parquet(folder / "selection.parquet")
    pl.DataFrame({"id": ids, "ppl": ppl}).write_parquet(folder / "scores.parquet")
    pl.DataFrame({"id": ids, "prompt": ["p" * text] * n, "response": ["r"] * n}).write_parquet(
        folder / "data" / "train.parquet")
    return pl.DataFrame({"id": ids, "ppl": ppl})


def test_big_runs_embed_a_stated_capped_sample_and_histograms_use_every_row(tmp_path):
    _big_run(tmp_path / "big", 30_000, 6_000, text=report_html.TEXT_CAP + 500)
    page = write_report(tmp_path / "big").read_text()
    data = _data(page)
    assert len(data["rows"]) == report_html.SAMPLE_KEPT + report_html.SAMPLE_DROPPED
    assert sum(r["kept"] for r in data["rows"]) == report_html.SAMPLE_KEPT
    assert "kept (n=30,000)" in page and "dropped (n=6,000)" in page  # histograms: every row
    assert f"holds {report_html.SAMPLE_KEPT + report_html.SAMPLE_DROPPED:,} of 36,000 examples" in page
    first = data["rows"][0]["prompt"]
    assert first.startswith("p" * report_html.TEXT_CAP) and first.endswith(f"{report_html.TEXT_CAP + 500:,} characters]")
    assert len(page) < 25_000_000


def test_rule_cuts_are_the_rules_own_bounds_or_the_last_kept_value():
    kept = [3.0, 1.0, 2.0, float("nan"), None]
    assert rule_cuts({"rule": "threshold", "column": "ppl", "min": 0.5, "max": 4}, "ppl", kept) == [
        (0.5, "threshold min 0.5"), (4.0, "threshold max 4")]
    assert rule_cuts([{"rule": "fraction", "column": "ppl", "fraction": 0.5, "order": "lowest"}], "ppl", kept)[0][0] == 3.0
    assert rule_cuts({"rule": "top_k", "column": "ppl", "k": 3}, "ppl", kept)[0][0] == 1.0  # highest kept: cut below
    assert [c[0] for c in rule_cuts({"rule": "quantile", "column": "ppl", "keep": [0.1, 0.9]}, "ppl", kept)] == [1.0, 3.0]
    assert rule_cuts({"rule": "fraction", "column": "nll"}, "ppl", kept) == []
    assert rule_cuts({"rule": "all"}, "ppl", kept) == []


def test_clear_corrections_show_old_and_new_side_by_side():
    table = pl.DataFrame({"id": ["a", "b"], "kept": [True, True], "weight": [1.0, 1.0], "reason": ["kept", "kept"],
                          "prompt": ["q1", "q2"], "response": ["old one", "fine"],
                          "new_response": ["new one", None], "old_response": [None, None]})
    rows = {r["id"]: r for r in example_data(table)["rows"]}
    assert (rows["a"]["old"], rows["a"]["new"]) == ("old one", "new one")
    assert rows["b"]["old"] is None and rows["b"]["new"] is None
    card_side = table.drop("new_response").with_columns(pl.Series("old_response", ["orig", None]))
    rows = {r["id"]: r for r in example_data(card_side)["rows"]}
    assert (rows["a"]["old"], rows["a"]["new"]) == ("orig", "old one")  # a card's response is the correction


def test_study_page_has_the_results_with_cis_forest_plot_and_noise(tmp_path):
    from pipeline.reports.study import write_results

    rows = []
    for variant, shift in (("baseline", 0.0), ("dft", -0.3)):
        for seed in (0, 1):
            for i in range(6):
                rows.append({"variant": variant, "seed": seed, "id": f"t{i}", "nll_sum": 10.0 + i + shift * 10,
                             "n_tokens": 10, "n_bytes": 40, "correct": (i + seed) % 2 == 0})
    runs = pl.DataFrame({"variant": ["baseline", "baseline", "dft", "dft"], "seed": [0, 1, 0, 1], "steps": [2] * 4,
                         "noise_kept_all": [3, 5, 1, 1], "noise_kept_swapped": [2, 2, 0, 1]})
    minutes = {"data": 0.1, "scoring": 12.0, "selection": 0.2, "training": 30.5, "evaluation": 8.0, "total": 50.8,
               "unrecorded": 0}
    written = write_results(tmp_path, pl.DataFrame(rows), runs, "baseline",
                            {"recipe": "s", "seeds": [0, 1], "compute_minutes": minutes}, n_boot=200, oracle="dft")
    page = write_report(tmp_path).read_text()
    assert "data 0.1, scoring 12.0, selection 0.2, training 30.5, evaluation 8.0; total 50.8" in page
    assert "scoring 12.0, selection 0.2, training 30.5, evaluation 8.0; total 50.8" in (tmp_path / "results.md").read_text()
    dft = next(r for r in written["rows"] if r["variant"] == "dft")
    assert f"{dft['d_nll']:+.4f} [{dft['d_nll_lo']:+.4f}, {dft['d_nll_hi']:+.4f}]" in page
    assert "Forest plot" in page and page.count("<svg") == 1
    assert "Noisy training rows kept" in page and "<td>swapped</td>" not in page and ">swapped<" in page
    assert "<td>0.5</td>" in page  # dft kept half a swapped row per seed on average
    assert "share of dft&#x27;s ΔNLL" in page or "share of dft's ΔNLL" in page
    assert "<td>1.00 [1.00, 1.00]</td>" in page  # the oracle recovers all of its own gain


def test_audit_page_has_a_heat_map(tmp_path):
    from pipeline.reports.audit import write_audit

    table = pl.DataFrame({"column": ["ppl", "ppl", "ifd", "ifd", "selection"], "kind": ["refusal", "swapped"] * 2
                          + ["refusal"], "auroc": [0.95, 0.55, 0.6, None, None], "lo": [0.9, 0.4, 0.5, None, None],
                          "hi": [0.99, 0.7, 0.7, None, None], "direction": ["high", "low", "low", None, None],
                          "recall_at_budget": [0.9, 0.2, 0.3, None, 0.8], "n": [4] * 5})
    write_audit(tmp_path, table, {"recipe": "audit", "canaries": 8})
    page = write_report(tmp_path).read_text()
    cell = re.search(r'<td style="background:(rgb\([^)]*\))" title="ppl / refusal[^"]*">0.95</td>', page)
    strength = (0.95 - 0.5) / 0.5  # 0.9 of the way from white to the full red (201, 42, 42)
    assert cell and cell.group(1) == "rgb({},{},{})".format(*(round(255 - (255 - c) * strength) for c in (201, 42, 42)))
    assert re.search(r'title="ppl / swapped[^"]*">0.55</td>', page)
    assert "AUROC heat map" in page and ">ifd<" in page


def test_train_flow_logs_curves_to_tensorboard_and_report_to_none_logs_nothing(curated):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.core.config import TrainSection
    from pipeline.training.train import sft_config

    run = curated["root"] / "train"
    assert main(["run", "train-subset", "--run-dir", str(run), *curated["common"], "--set", f"data.subset={curated['card']}",
                 "--set", "train.max_steps=2", "--set", "train.batch_size=2", "--set", "train.max_length=96",
                 "--set", "train.loss=talr"]) == 0
    events = [p for p in (run / "tensorboard").rglob("events.out.tfevents*")]
    assert events, "no TensorBoard event file in the run folder"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/talr_tau", "train/entropy"} <= tags
    history = json.loads(((run / "model").resolve().parent / "train_metrics.json").read_text())["loss_history"]
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in logged] == [h["step"] for h in history]
    assert [v for _, v in logged] == pytest.approx([h["loss"] for h in history], rel=1e-5)
    page = (run / "report.html").read_text()
    assert "tensorboard --logdir" in page and "Training" in page
    assert sft_config(TrainSection(report_to="none"), run / "x", 0).report_to == []
    assert sft_config(TrainSection(), run / "x", 0).report_to == ["tensorboard"]


def test_study_cells_land_in_variant_seed_folders(tmp_path):
    from pipeline.flows.common import gather_tensorboard

    sources = {}
    for cell in ("baseline/seed0", "dft/seed0"):
        stage = tmp_path / "cache" / cell.replace("/", "-")
        (stage / "checkpoints" / "runs" / "Dec04_host").mkdir(parents=True)
        (stage / "checkpoints" / "runs" / "Dec04_host" / "events.out.tfevents.1").write_bytes(cell.encode())
        (stage / "model").mkdir()
        sources[cell] = str(stage / "model")
    gather_tensorboard(str(tmp_path / "study"), sources)
    for cell in sources:
        assert (tmp_path / "study" / "tensorboard" / cell / "Dec04_host" / "events.out.tfevents.1").read_bytes() == cell.encode()


# --- the page in a real browser ------------------------------------------------------------------


class _Dom(HTMLParser):
    """Rows of the example table (data-id order, verdict, score cells) and the status line, from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.scores: list[dict[str, str]] = []
        self.details = 0
        self.status = ""
        self.title = ""
        self.images = 0
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-id" in a:
            self.ids.append(a["data-id"])
            self.scores.append({})
        elif tag == "td" and "data-col" in a and self.scores:
            self.scores[-1][a["data-col"]] = a.get("data-v", "")
        elif tag == "tr" and a.get("class") == "detail":
            self.details += 1
        elif tag == "img":
            self.images += 1
        elif (tag == "p" and a.get("id") == "status") or tag == "title":
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "p":
            self.status += data
        elif self._in == "title":
            self.title += data


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browse(page: Path, state: str, profile: Path, screenshot: Path | None = None) -> _Dom:
    exe = _chromium()
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}"]
    url = page.resolve().as_uri() + state
    if screenshot is not None:
        out = subprocess.run([*args, "--hide-scrollbars", f"--screenshot={screenshot}", "--window-size=1280,900", url],
                             capture_output=True, timeout=90)
        assert out.returncode == 0 and screenshot.stat().st_size > 10_000, out.stderr[-500:]
        return _Dom()
    out = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0 and "</html>" in out.stdout, out.stderr[-500:]
    dom = _Dom()
    dom.feed(out.stdout)
    return dom


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it with apt)")
def test_report_in_a_real_headless_browser(curated, tmp_path):
    run = curated["run"]
    page = run / "report.html"
    t = _table(run)
    profile = tmp_path / "chromium-profile"

    ranked = t.sort("ppl", descending=True).get_column("id").to_list()
    dom = _browse(page, "#sort=-ppl", profile)
    assert dom.ids == ranked  # every example, sorted by ppl, highest first
    values = [float(s["ppl"]) for s in dom.scores]
    assert values == sorted(values, reverse=True)
    assert re.search(rf"showing {t.height} of {t.height} rows", dom.status) and "sorted by ppl descending" in dom.status
    assert dom.title == f"run: {run.name}" and dom.images == 0  # no example text ran or became an element

    has_word = t.filter(pl.col("prompt").str.contains(WORD) | pl.col("response").str.contains(WORD))
    dom = _browse(page, f"?q={WORD.upper()}&sort=ppl", profile)  # the query string works too; search ignores case
    assert dom.ids == has_word.sort("ppl").get_column("id").to_list() and len(dom.ids) == 3
    assert re.search(rf"showing 3 of {t.height} rows", dom.status)

    dropped = t.filter(~pl.col("kept"))
    dom = _browse(page, "#show=dropped&domain=places", profile)
    assert dom.ids == dropped.filter(pl.col("domain") == "places").get_column("id").to_list()

    xss_id = t.filter(pl.col("prompt") == XSS_PROMPT).get_column("id").item()
    dump = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--dump-dom", page.resolve().as_uri() + f"#open={xss_id}"],
                          capture_output=True, text=True, timeout=90).stdout
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dump  # shown as text in the opened row
    assert "<title>run: " in dump and "pwned</title>" not in dump

    shot = run / "report.png"  # the CI artifact: what a person sees first
    _browse(page, "#sort=-ppl", profile, screenshot=shot)
    if os.environ.get("PIPELINE_ARTIFACTS"):
        Path(os.environ["PIPELINE_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["PIPELINE_ARTIFACTS"]) / "report.png")


# --- `pipeline inspect` in the terminal: the response next to the prompt, wrapped to --width ---------------------


def test_inspect_shows_the_response_wrapped_next_to_the_prompt(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "config.yaml").write_text("name: t\nselect: {rule: all}\n")
    response = " ".join(f"w{i:03d}" for i in range(60))  # 299 characters: wraps over several lines, never cut
    pl.DataFrame({"id": ["e1"], "prompt": ["What are the words?"], "response": [response]}).write_parquet(
        run / "data" / "train.parquet")
    pl.DataFrame({"id": ["e1"], "kept": [True], "weight": [1.0], "reason": ["kept: all"]}).write_parquet(
        run / "selection.parquet")
    pl.DataFrame({"id": ["e1"], "ppl": [2.5]}).write_parquet(run / "scores.parquet")
    for args in ([str(run), "--width", "100"], [str(run), "--kept", "--width", "100"]):
        capsys.readouterr()
        assert main(["inspect", *args]) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= 100
        assert all(f"w{i:03d}" in out for i in range(60))  # the whole response, wrapped
        first = next(line for line in lines if "e1" in line)
        assert "What" in first and "w000" in first  # prompt and response side by side on the row's first line
    assert main(["inspect", str(run), "--width", "20"]) == 2
    assert capsys.readouterr().err.strip() == "pipeline: error: --width 20: must be 40 or more"
