"""`pipeline report`: one self-contained HTML page of a run, a data card, a study or an audit folder.

The page needs nothing at view time (no CDN, no network): styles and the script are inline, plots are
inline SVG made by matplotlib, heat maps are coloured HTML tables. It shows what ran (recipe, model,
data source, cache keys, timings), the counts read / kept / dropped / quarantined with reasons and per
domain, one histogram per score column of kept vs dropped rows with the rule's cut drawn, and the
examples as a table a person can sort by any score, filter by verdict, reason and domain, and search by
text; a click on a row opens its full prompt, response, chat turns and CLEAR's old and new response side
by side. A study shows its results table with CIs, a forest plot and the noisy rows each variant kept;
an audit its AUROC heat map.

Size is bounded: counts and histograms use every row, the example table embeds a seeded random sample of
at most `SAMPLE_KEPT` kept rows plus at most `SAMPLE_DROPPED` dropped rows, and every text field is cut
at `TEXT_CAP` characters (the page says so). All text is escaped (`html.escape`); the table's data is a
`<script type="application/json">` block with every `<`, `>` and `&` written as a JSON escape, and the
script puts it into the page with `textContent` only, so a prompt holding `<script>` never runs.

The table's state lives in the URL (`report.html#sort=-ppl&q=word&show=dropped&reason=...&domain=...
&open=<id>`; `?` works too), so a link reopens the same view and a headless browser's DOM dump shows it.
A broken or half-finished run still gives a page: each part that cannot be read says what is missing.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.io import write_text
from pipeline.reports.inspect import (
    READ_ERRORS,
    InspectError,
    is_card,
    load_table,
    one_line,
    score_columns,
)

REPORT = "report.html"
MARK = '<meta name="generator" content="sft-pipeline report">'  # how an earlier report is recognized
SAMPLE_KEPT = 2000  # kept rows embedded in the example table (a seeded random sample when there are more)
SAMPLE_DROPPED = 2000  # dropped rows embedded (a seeded random sample when there are more)
TEXT_CAP = 4000  # characters kept of each prompt / response / turn in the embedded table
QUARANTINE_ROWS = 200  # quarantined records listed on the page
SEED = 0
TEXT_COLUMNS = ("prompt", "response", "messages", "old_response", "new_response")
ESC = html.escape


class ReportError(InspectError):
    """A folder that is not a run, card, study or audit: the CLI prints it as one `pipeline: error:` line."""


# --- what a folder is ---------------------------------------------------------------------------


def folder_kind(path: str | Path) -> str:
    """'audit', 'study', 'run' or 'card' (the same order `pipeline inspect` tries), else a ReportError."""
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{p} does not exist")
    if not p.is_dir():
        raise ReportError(f"{p} is a file; expected a run, data card, study or audit folder")
    if (p / "audit.parquet").is_file():
        return "audit"
    if (p / "results.parquet").is_file():
        return "study"
    if (p / "config.yaml").is_file():
        flow = _config(p).get("flow")
        return flow if flow in ("study", "audit") else "run"  # a study or audit that has not finished yet
    if is_card(p) or (p / "card.json").is_file():
        return "card"
    raise ReportError(f"{p} is not a run, data card, study or audit folder: expected config.yaml (a run), "
                      "card.json + subset.parquet (a data card), results.parquet (a study) or audit.parquet "
                      "(an audit)")


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a run, card, study or audit folder to `out` (default `<folder>/report.html`)."""
    folder = Path(path)
    kind = folder_kind(folder)
    page = Page(folder, kind)
    {"run": _run_page, "card": _card_page, "study": _study_page, "audit": _audit_page}[kind](page)
    target = check_target(Path(out) if out is not None else folder / REPORT)
    return write_text(target, page.render())


def check_target(target: Path) -> Path:
    """An .html file name that is new or an earlier report: never a folder, a run's record or a user's file."""
    if target.is_dir():
        raise ReportError(f"--out {target}: is a folder; give a file name, e.g. {target / REPORT}")
    if target.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"--out {target}: use an .html file name")
    if target.exists():
        try:
            with open(target, encoding="utf-8", errors="replace") as f:
                head = f.read(4096)
        except OSError as e:
            raise ReportError(f"--out {target}: cannot read the existing file: {e.strerror or e}") from None
        if MARK not in head:
            raise ReportError(f"--out {target}: file exists and is not a report of this command; not replacing it")
    return target


# --- the page ------------------------------------------------------------------------------------


class Page:
    """Sections of HTML in order, the notes of what is missing, and the embedded table data."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder, self.kind = folder, kind
        self.sections: list[str] = []
        self.missing: list[str] = []
        self.data: dict[str, Any] | None = None
        self.anchors: list[tuple[str, str]] = []

    def add(self, title: str, body: str, anchor: str = "") -> None:
        ident = f' id="{ESC(anchor)}"' if anchor else ""
        if anchor:
            self.anchors.append((anchor, title))
        self.sections.append(f"<section{ident}><h2>{ESC(title)}</h2>\n{body}\n</section>")

    def part(self, title: str, build: Callable[[], str | None], anchor: str = "") -> None:
        """Add the section `build` makes; a file it cannot read becomes a note, never a failed page."""
        try:
            body = build()
        except READ_ERRORS as e:
            self.missing.append(f"{title}: {one_line(e)}")
            body = f'<p class="missing">Could not be shown: {ESC(one_line(e))}</p>'
        if body:
            self.add(title, body, anchor)

    def _nav(self) -> str:
        """Links to the sections that have an anchor."""
        links = [f'<a href="#{a}">{ESC(t)}</a>' for a, t in self.anchors]
        return f'<nav>{" · ".join(links)}</nav>' if links else ""

    def render(self) -> str:
        title = f"{self.kind}: {self.folder.name}"
        missing = ""
        if self.missing:
            missing = ('<section class="missing" id="missing"><h2>Missing or unreadable</h2><ul>'
                       + "".join(f"<li>{ESC(m)}</li>" for m in self.missing) + "</ul></section>")
        data = ""
        if self.data is not None:
            data = f'<script type="application/json" id="report-data">{json_for_script(self.data)}</script>'
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{MARK}"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{ESC(title)}</title><style>{CSS}</style></head>\n<body>\n"
                f"<header><h1>{ESC(title)}</h1><p class=\"dim\">{ESC(str(self.folder))} &middot; report written "
                f"{ESC(stamp)} by <code>pipeline report</code></p>{self._nav()}</header>\n{missing}\n"
                + "\n".join(self.sections) + f"\n{data}\n<script>{JS}</script>\n</body></html>\n")


def json_for_script(value: Any) -> str:
    """JSON that is safe inside a <script> block: no `<`, `>` or `&` survive (so no `</script>`, no `<!--`)."""
    text = json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


# --- small HTML helpers ---------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v).lower()
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None, cls: str = "") -> str:
    """A plain HTML table of dicts, every header and cell escaped."""
    if not rows:
        return '<p class="dim">none</p>'
    cols = columns or list(rows[0])
    head = "".join(f"<th>{ESC(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{ESC(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _facts(items: dict[str, Any]) -> str:
    """A definition list of the facts that are set."""
    rows = "".join(f"<dt>{ESC(str(k))}</dt><dd>{ESC(_fmt(v))}</dd>" for k, v in items.items()
                   if v not in (None, "", [], {}))
    return f'<dl class="facts">{rows}</dl>'


def _counts_html(counts: dict[str, Any]) -> str:
    """Big numbers: read, kept, dropped, quarantined (each with an id the browser test reads)."""
    cells = "".join(f'<div class="count"><span class="n" id="count-{k}">{ESC(_fmt(counts.get(k)))}</span>'
                    f'<span class="label">{k}</span></div>'
                    for k in ("read", "kept", "dropped", "quarantined") if counts.get(k) is not None)
    return f'<div class="counts">{cells}</div>'


def _rule(select: Any) -> str:
    if isinstance(select, list):
        return " + ".join(_rule(s) for s in select)
    if isinstance(select, dict):
        return f"{select.get('rule', '?')}({', '.join(f'{k}={v}' for k, v in select.items() if k != 'rule')})"
    return str(select or "")


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _config(folder: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _mtime(path: Path) -> str | None:
    if not path.exists():
        return None
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- plots (inline SVG) ---------------------------------------------------------------------------


def _svg(fig: Any) -> str:
    """A matplotlib figure as an inline <svg> element (text as text, ids deterministic)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg"):]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "pipeline-report", "font.size": 9})
    return plt


def histogram_svg(kept: list[float], dropped: list[float], column: str, cuts: list[tuple[float, str]]) -> str:
    """Overlaid histograms of one score, kept vs dropped, over every row; the rule's cuts as vertical lines."""
    import numpy as np

    plt = _pyplot()
    k = np.asarray([x for x in kept if x is not None], dtype=float)
    d = np.asarray([x for x in dropped if x is not None], dtype=float)
    k, d = k[np.isfinite(k)], d[np.isfinite(d)]
    both = np.concatenate([k, d])
    fig, ax = plt.subplots(figsize=(6.4, 2.8), dpi=100)
    if both.size:
        lo, hi = float(both.min()), float(both.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
        for values, label, color in ((k, "kept", "#2b8a3e"), (d, "dropped", "#c92a2a")):
            if values.size:
                ax.hist(values, bins=edges, alpha=0.55, color=color, label=f"{label} (n={values.size:,})")
    for x, label in cuts:
        ax.axvline(x, color="#1c1c1c", lw=1.2, ls="--", label=label)
    ax.set_xlabel(column)
    ax.set_ylabel("examples")
    if both.size or cuts:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _svg(fig)


def rule_cuts(rules: Any, column: str, kept: list[float]) -> list[tuple[float, str]]:
    """Where each rule on `column` cut: `threshold`'s own bounds; for `fraction`, `top_k` and `quantile` the
    last kept value on the cut side (the rule records a budget, not a value, so the cut is read off the rows)."""
    rules = rules if isinstance(rules, list) else [rules] if isinstance(rules, dict) else []
    values = [x for x in kept if x is not None and math.isfinite(x)]
    cuts: list[tuple[float, str]] = []
    for r in rules:
        if not isinstance(r, dict) or r.get("column") != column:
            continue
        name = r.get("rule")
        if name == "threshold":
            for bound in ("min", "max"):
                if isinstance(r.get(bound), (int, float)) and math.isfinite(r[bound]):
                    cuts.append((float(r[bound]), f"threshold {bound} {r[bound]:g}"))
        elif values and name in ("fraction", "top_k"):
            lowest = r.get("order", "lowest" if name == "fraction" else "highest") == "lowest"
            x = max(values) if lowest else min(values)
            cuts.append((x, f"{name} cut: {'highest' if lowest else 'lowest'} kept {x:.4g}"))
        elif values and name == "quantile":
            lo, hi = (list(r.get("keep") or [0.0, 1.0]) + [1.0])[:2]
            if lo > 0:
                cuts.append((min(values), f"quantile {lo:g}: lowest kept {min(values):.4g}"))
            if hi < 1:
                cuts.append((max(values), f"quantile {hi:g}: highest kept {max(values):.4g}"))
    return cuts


def forest_svg(rows: list[dict[str, Any]], baseline: str, level: float) -> str:
    """One panel per metric: each variant minus the baseline with its CI, and a zero line."""
    from pipeline.evaluation.stats import METRICS

    plt = _pyplot()
    names = [str(r.get("variant")) for r in rows]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.4 * len(METRICS), 0.45 * len(names) + 1.6), dpi=100,
                             sharey=True)
    for ax, m in zip(axes, METRICS, strict=True):
        scale = 100.0 if m == "accuracy" else 1.0
        ax.axvline(0.0, color="grey", lw=1, ls="--")
        ys = [i for i, r in enumerate(rows) if isinstance(r.get(f"d_{m}"), (int, float))
              and isinstance(r.get(f"d_{m}_lo"), (int, float)) and isinstance(r.get(f"d_{m}_hi"), (int, float))]
        if ys:
            d = [rows[i][f"d_{m}"] * scale for i in ys]
            err = [[max(0.0, (rows[i][f"d_{m}"] - rows[i][f"d_{m}_lo"]) * scale) for i in ys],
                   [max(0.0, (rows[i][f"d_{m}_hi"] - rows[i][f"d_{m}"]) * scale) for i in ys]]
            ax.errorbar(d, ys, xerr=err, fmt="o", capsize=3)
        else:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel(f"Δ {m}{' (pts)' if m == 'accuracy' else ''} vs {baseline}")
    axes[0].invert_yaxis()
    fig.suptitle(f"difference from the baseline, {level:.0%} CI (lower NLL/bpb, higher accuracy is better)",
                 fontsize=8)
    fig.tight_layout()
    return _svg(fig)


def loss_svg(history: list[dict[str, Any]]) -> str:
    """Training loss per logged step."""
    plt = _pyplot()
    steps = [h["step"] for h in history if isinstance(h, dict) and "step" in h and "loss" in h]
    losses = [h["loss"] for h in history if isinstance(h, dict) and "step" in h and "loss" in h]
    fig, ax = plt.subplots(figsize=(5.0, 2.4), dpi=100)
    ax.plot(steps, losses, marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    return _svg(fig)


# --- the example table ----------------------------------------------------------------------------


def _cap(text: Any) -> Any:
    if not isinstance(text, str) or len(text) <= TEXT_CAP:
        return text
    return text[:TEXT_CAP] + f"\n… [cut at {TEXT_CAP:,} of {len(text):,} characters]"


def _turns(messages: Any) -> list[dict[str, str]] | None:
    """A chat's turns (role, content) from the `messages` JSON string, each content capped."""
    if not isinstance(messages, str) or not messages:
        return None
    try:
        turns = json.loads(messages)
    except ValueError:
        return None
    if not isinstance(turns, list):
        return None
    return [{"role": str(t.get("role", "")), "content": _cap(str(t.get("content", "")))}
            for t in turns if isinstance(t, dict)]


def _sample(table: pl.DataFrame, n: int) -> pl.DataFrame:
    return table if table.height <= n else table.sample(n, seed=SEED).sort("_order")


def example_data(table: pl.DataFrame) -> dict[str, Any]:
    """The capped, stated sample of a joined example table as plain data for the page's script."""
    table = table.with_row_index("_order")
    cols = [c for c in score_columns(table) if c != "_order"]
    if "kept" in table.columns and table.schema["kept"] == pl.Boolean:
        kept, dropped = table.filter(pl.col("kept").fill_null(False)), table.filter(~pl.col("kept").fill_null(True))
        undecided = table.filter(pl.col("kept").is_null())
    else:
        kept, dropped, undecided = table.head(0), table.head(0), table
    parts = [_sample(kept, SAMPLE_KEPT), _sample(dropped, SAMPLE_DROPPED), _sample(undecided, SAMPLE_KEPT)]
    shown = pl.concat([p for p in parts if p.height], how="diagonal_relaxed") if any(p.height for p in parts) \
        else table.head(0)
    shown = shown.sort("_order")
    rows = []
    for r in shown.iter_rows(named=True):
        new, old = r.get("new_response"), r.get("old_response")
        if new is not None:  # a run's selection: the correction is new_response, the original is the response
            old, new = old if old is not None else r.get("response"), new
        elif old is not None:  # a card's subset: the response is already the correction
            new = r.get("response")
        reason = r.get("reason")
        rows.append({
            "id": str(r.get("id")), "kept": r.get("kept"), "weight": _num(r.get("weight")),
            "reason": _cap(reason), "rule": (reason or "").split(";")[0].strip(),
            "domain": None if r.get("domain") is None else str(r.get("domain")),
            "scores": {c: _num(r.get(c)) for c in cols},
            "prompt": _cap(r.get("prompt")), "response": _cap(r.get("response")),
            "turns": _turns(r.get("messages")), "old": _cap(old) if new is not None else None,
            "new": _cap(new) if old is not None else None,
        })
    return {
        "columns": cols, "rows": rows, "caps": {"kept": SAMPLE_KEPT, "dropped": SAMPLE_DROPPED, "text": TEXT_CAP},
        "totals": {"rows": table.height, "kept": kept.height, "dropped": dropped.height,
                   "undecided": undecided.height},
    }


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _examples_section(page: Page, table: pl.DataFrame) -> str:
    """The controls, the status line and an empty table the script fills from the embedded data."""
    page.data = example_data(table)
    t = page.data["totals"]
    note = (f"The table holds {len(page.data['rows']):,} of {t['rows']:,} examples: every row when a side has at "
            f"most {SAMPLE_KEPT:,} kept or {SAMPLE_DROPPED:,} dropped rows, else a random sample of that many "
            f"(seed {SEED}); each text is cut at {TEXT_CAP:,} characters. Counts and histograms use every row.")
    return (f'<p class="dim" id="cap-note">{ESC(note)}</p>'
            '<div class="controls">'
            '<label>search <input id="q" type="search" placeholder="text in id, prompt, response, reason"></label>'
            '<label>show <select id="show"><option value="">all</option><option value="kept">kept</option>'
            '<option value="dropped">dropped</option></select></label>'
            '<label>reason <select id="reason"><option value="">any</option></select></label>'
            '<label>domain <select id="domain"><option value="">any</option></select></label>'
            '<label>sort <select id="sort"><option value="">file order</option></select></label>'
            '</div><p id="status">loading… (this table needs JavaScript)</p>'
            '<div class="scroll"><table id="examples" class="examples"><thead></thead><tbody></tbody></table></div>')


# --- run ------------------------------------------------------------------------------------------


EXPECTED = {  # what a finished run of each flow holds, and what its absence means
    "scores.parquet": "no scores yet: scoring did not finish",
    "selection.parquet": "no selection yet: selection did not finish",
    "metrics.json": "no metrics.json: the run has not finished (or it stopped early)",
    "eval/base.json": "no base evaluation yet",
    "eval/tuned.json": "no tuned evaluation yet",
    "model": "no trained model yet",
    "eval/model.json": "no evaluation yet",
}
FLOW_FILES = {
    "sft_math": ("scores.parquet", "selection.parquet", "eval/base.json", "model", "eval/tuned.json", "metrics.json"),
    "curate": ("scores.parquet", "selection.parquet", "metrics.json"),
    "train": ("model", "metrics.json"),
    "evaluate": ("eval/model.json", "metrics.json"),
    "study": ("results.parquet", "metrics.json"),
    "audit": ("audit.parquet", "metrics.json"),
}


def _missing(page: Page, flow: str | None) -> None:
    for name in FLOW_FILES.get(flow or "", ("metrics.json",)):
        if not (page.folder / name).exists():
            page.missing.append(EXPECTED.get(name, f"no {name} yet: the run has not finished") + f" ({name})")


def _metrics(folder: Path) -> dict[str, Any]:
    path = folder / "metrics.json"
    return _read_json(path) if path.is_file() else {}


def _what_ran(folder: Path, config: dict[str, Any], metrics: dict[str, Any]) -> str:
    from pipeline.core.hashing import code_version

    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    source = data.get("source") or data.get("subset") or data.get("dataset")
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    score = config.get("score") if isinstance(config.get("score"), dict) else {}
    facts = {
        "recipe": config.get("name"), "flow": config.get("flow"), "model": config.get("model"),
        "data source": source, "seed": config.get("seed"),
        "scorers": score.get("scorer"), "selection rule": _rule(config.get("select")),
        "loss": train.get("loss") if config.get("flow") in ("sft_math", "train", "study") else None,
        "started": _mtime(folder / "config.yaml"), "finished": _mtime(folder / "metrics.json"),
        "seconds per phase": metrics.get("seconds"),
        "data card": metrics.get("data_card"),
        "code version (of this report's pipeline)": code_version("reports"),
    }
    keys = metrics.get("cache_keys") if isinstance(metrics.get("cache_keys"), dict) else {}
    return _facts({**facts, **{f"cache key: {k}": v for k, v in keys.items()}})


def _eval_section(folder: Path, metrics: dict[str, Any]) -> str | None:
    rows = []
    for label in ("base", "tuned", "model"):
        path = folder / "eval" / f"{label}.json"
        m = metrics.get("eval" if label == "model" else label) or (_read_json(path) if path.is_file() else None)
        if isinstance(m, dict):
            rows.append({"model": label, "accuracy": m.get("accuracy"), "response NLL": m.get("nll"),
                         "bits per byte": m.get("bits_per_byte"), "answers generated": m.get("n_generate"),
                         "examples (NLL)": m.get("n_nll"), "seconds": m.get("seconds")})
    if not rows:
        return None
    out = _table(rows)
    d = metrics.get("delta") if isinstance(metrics.get("delta"), dict) else {}
    if d.get("nll_ci"):
        out += (f"<p>tuned − base response NLL {ESC(_fmt(d.get('nll')))} (95% CI {ESC(_fmt(d['nll_ci'][0]))} to "
                f"{ESC(_fmt(d['nll_ci'][1]))}, paired over {ESC(_fmt(d.get('n_examples')))} test examples)</p>")
    return out


def _train_section(folder: Path, metrics: dict[str, Any]) -> str | None:
    train = metrics.get("train") if isinstance(metrics.get("train"), dict) else {}
    model = folder / "model"
    history = train.get("loss_history")
    if not history and model.exists() and (model.resolve().parent / "train_metrics.json").is_file():
        history = _read_json(model.resolve().parent / "train_metrics.json").get("loss_history")
    if not train and not history:
        return None
    out = _facts({k: train.get(k) for k in ("loss", "train_loss", "steps", "runtime_s", "resumed_from")})
    if isinstance(history, list) and history:
        out += f'<figure class="plot">{loss_svg(history)}</figure>'
    if (folder / "tensorboard").is_dir():
        out += (f"<p>Curves per step (loss, learning rate, grad norm, token-loss metrics): "
                f"<code>tensorboard --logdir {ESC(str(folder / 'tensorboard'))}</code></p>")
    return out


def _counts_section(table: pl.DataFrame, quarantine: pl.DataFrame | None, stages: list[dict] | None) -> str:
    """Counts, drop reasons (by rule), per-domain counts and per-step counts."""
    decided = "kept" in table.columns and table.get_column("kept").null_count() < table.height
    n_q = quarantine.height if quarantine is not None else 0
    counts: dict[str, Any] = {"read": table.height + n_q, "quarantined": n_q}
    if decided:
        counts["kept"] = int(table.get_column("kept").sum())
        counts["dropped"] = table.height - counts["kept"]
    out = _counts_html(counts)
    if decided:
        dropped = table.filter(~pl.col("kept").fill_null(True))
        if dropped.height:
            rule = pl.col("reason").fill_null("").str.split(";").list.first().str.strip_chars()
            reasons = dropped.group_by(rule.alias("reason")).len().sort(["len", "reason"], descending=[True, False])
            out += "<h3>drop reasons</h3>" + _table([{"reason": r, "dropped": n} for r, n in reasons.rows()])
        if "domain" in table.columns:
            by = (table.group_by(pl.col("domain").fill_null("(none)")).agg(
                pl.len().alias("read"), pl.col("kept").sum().alias("kept")).sort("domain")
                .with_columns((pl.col("read") - pl.col("kept")).alias("dropped")))
            rows = by.to_dicts()
            if n_q:
                rows.append({"domain": "(quarantined on reading: domain unknown)", "read": n_q, "kept": 0,
                             "dropped": 0, "quarantined": n_q})
            out += "<h3>per domain</h3>" + _table(rows, ["domain", "read", "kept", "dropped", "quarantined"])
    if stages:
        out += "<h3>per selection step</h3>" + _table(stages)
    return out


def _quarantine_section(quarantine: pl.DataFrame) -> str:
    rows = [{k: (str(v)[:300] if k == "raw" and v is not None else v) for k, v in r.items() if k != "raw_b64"}
            for r in quarantine.head(QUARANTINE_ROWS).iter_rows(named=True)]
    more = (f"<p class=\"dim\">first {QUARANTINE_ROWS} of {quarantine.height:,} quarantined records</p>"
            if quarantine.height > QUARANTINE_ROWS else "")
    return more + _table(rows)


def _histograms(table: pl.DataFrame, rules: Any, columns: list[str] | None = None) -> str | None:
    ruled = {r.get("column") for r in (rules if isinstance(rules, list) else [rules]) if isinstance(r, dict)}
    cols = sorted(columns or score_columns(table), key=lambda c: c not in ruled)  # the rules' columns first
    if not cols:
        return None
    decided = "kept" in table.columns and table.get_column("kept").null_count() < table.height
    parts = []
    for c in cols:
        if c not in table.columns:
            continue
        values = table.select(pl.col(c).cast(pl.Float64), pl.col("kept") if decided else pl.lit(True).alias("kept"))
        kept = values.filter(pl.col("kept").fill_null(False)).get_column(c).to_list()
        dropped = values.filter(~pl.col("kept").fill_null(True)).get_column(c).to_list()
        cuts = rule_cuts(rules, c, kept) if decided else []
        label = "" if decided else " (not selected yet: every scored row)"
        parts.append(f'<figure class="plot" id="hist-{ESC(c)}"><figcaption>{ESC(c)}{ESC(label)}</figcaption>'
                     f"{histogram_svg(kept, dropped, c, cuts)}</figure>")
    return ("<p class=\"dim\">Every row; dashed lines: where the rule on that column cut.</p>"
            + '<div class="plots">' + "".join(parts) + "</div>")


def _run_page(page: Page) -> None:
    folder = page.folder
    config = _config(folder)
    metrics: dict[str, Any] = {}
    try:
        metrics = _metrics(folder)
    except READ_ERRORS as e:
        page.missing.append(f"metrics.json: {one_line(e)}")
    _missing(page, config.get("flow"))
    page.part("What ran", lambda: _what_ran(folder, config, metrics))
    page.part("Evaluation", lambda: _eval_section(folder, metrics))
    page.part("Training", lambda: _train_section(folder, metrics))
    if not ((folder / "selection.parquet").is_file() or (folder / "scores.parquet").is_file()):
        if config.get("flow") == "train" and isinstance(config.get("data"), dict):
            page.add("Data", f"<p>trained on the subset <code>{ESC(str(config['data'].get('subset')))}</code>"
                             " (run <code>pipeline report</code> on that data card for its examples)</p>")
        return
    quarantine = _read_quarantine(page, folder / "quarantine.parquet")
    try:
        table = load_table(folder)
    except READ_ERRORS as e:
        page.missing.append(f"examples: {one_line(e)}")
        return
    stages = None
    card = metrics.get("data_card")
    if isinstance(card, str) and (Path(card) / "card.json").is_file():
        try:
            stages = _read_json(Path(card) / "card.json").get("stages")
        except READ_ERRORS:
            stages = None
    rules = config.get("select")
    page.part("Counts", lambda: _counts_section(table, quarantine, stages), "counts")
    page.part("Score histograms", lambda: _histograms(table, rules), "histograms")
    page.part("Examples", lambda: _examples_section(page, table), "examples-section")
    if quarantine is not None and quarantine.height:
        page.part("Quarantined records", lambda: _quarantine_section(quarantine))


def _read_quarantine(page: Page, path: Path) -> pl.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pl.read_parquet(path, glob=False)
    except READ_ERRORS as e:
        page.missing.append(f"quarantine.parquet: {one_line(e)}")
        return None


# --- card -----------------------------------------------------------------------------------------


def _card_page(page: Page) -> None:
    folder = page.folder
    try:
        facts = _read_json(folder / "card.json")
    except READ_ERRORS as e:
        page.missing.append(f"card.json: {one_line(e)}")
        facts = {}
    if not (folder / "subset.parquet").is_file():
        page.missing.append("no subset.parquet: the card was not finished")
    run = facts.get("run") if isinstance(facts.get("run"), dict) else {}
    source = facts.get("source") if isinstance(facts.get("source"), dict) else {}
    scorers = facts.get("scorers") if isinstance(facts.get("scorers"), list) else []
    page.add("What ran", _facts({
        "card": facts.get("name"), "recipe": run.get("recipe"),
        "model": next((s.get("model") for s in scorers if isinstance(s, dict)), None),
        "data source": source.get("dataset"), "data fingerprint": source.get("fingerprint"),
        "scorers": [s.get("name") for s in scorers if isinstance(s, dict)],
        "selection rule": _rule(facts.get("rules")), "run folder": run.get("run_dir"),
        "written": _mtime(folder / "card.json"),
    }) + ("<h3>cache keys</h3>" + _table([{"stage": k, "key": v} for k, v in run["cache_keys"].items()])
          if isinstance(run.get("cache_keys"), dict) else ""))
    counts = facts.get("counts") if isinstance(facts.get("counts"), dict) else {}
    domains = facts.get("domains") if isinstance(facts.get("domains"), dict) else {}
    body = _counts_html(counts)
    if domains:
        body += "<h3>per domain</h3>" + _table([{"domain": d, **v} for d, v in domains.items() if isinstance(v, dict)],
                                               ["domain", "read", "kept", "dropped"])
    if isinstance(facts.get("stages"), list):
        body += "<h3>per selection step</h3>" + _table([s for s in facts["stages"] if isinstance(s, dict)])
    page.add("Counts", body, "counts")
    if not (folder / "subset.parquet").is_file():
        return
    try:
        table = load_table(folder)
    except READ_ERRORS as e:
        page.missing.append(f"examples: {one_line(e)}")
        return
    if not (folder / "dropped.parquet").is_file():
        page.missing.append("no dropped.parquet (a card written before dropped rows were kept): only kept rows shown")
    rules = facts.get("rules")
    if not score_columns(table):
        stats = facts.get("score_stats") if isinstance(facts.get("score_stats"), dict) else {}
        if stats:
            page.missing.append("the card's run (and its scores.parquet) is gone: histograms cannot be drawn, "
                                "the card's recorded statistics are shown instead")
            page.add("Score statistics", _table([{"score": c, "subset": part, **(s or {})}
                                                 for c, parts in stats.items() if isinstance(parts, dict)
                                                 for part, s in parts.items()]))
    else:
        page.part("Score histograms", lambda: _histograms(table, rules), "histograms")
    page.part("Examples", lambda: _examples_section(page, table), "examples-section")
    quarantine = _read_quarantine(page, folder / "quarantine.parquet")
    if quarantine is not None and quarantine.height:
        page.part("Quarantined records", lambda: _quarantine_section(quarantine))


# --- study ----------------------------------------------------------------------------------------


def _ci(row: dict[str, Any], name: str, scale: float = 1.0, sign: bool = False, digits: int = 4) -> str:
    v, lo, hi = row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi")
    if not isinstance(v, (int, float)) or math.isnan(v):
        return ""
    f = f"+.{digits}f" if sign else f".{digits}f"
    inner = f" [{lo * scale:{f}}, {hi * scale:{f}}]" if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else ""
    return f"{v * scale:{f}}{inner}"


def _study_page(page: Page) -> None:
    from pipeline.reports.study import study_report

    folder = page.folder
    config = _config(folder)
    if not (folder / "results.parquet").is_file():
        cells = sorted(p.name for p in (folder / "cells").iterdir()) if (folder / "cells").is_dir() else []
        page.missing.append("no results.parquet: the study has not finished" + (f" ({len(cells)} cells started: "
                                                                                 f"{', '.join(cells)})" if cells else ""))
        page.part("What ran", lambda: _what_ran(folder, config, {}))
        return
    report = study_report(folder)
    meta = report.get("meta") or {}
    level = report.get("level") or 0.95
    if meta.get("partial"):
        page.missing.append(str(meta["partial"]))
    page.add("What ran", _facts({"recipe": meta.get("recipe"), "model": meta.get("model"),
                                 "baseline": report.get("baseline"), "variants": meta.get("variants"),
                                 "seeds": meta.get("seeds"), "test examples": meta.get("test_size"),
                                 "train steps": meta.get("train_steps"), "batch size": meta.get("batch_size"),
                                 "command": meta.get("command"), "machine": meta.get("machine"),
                                 "compute (minutes, each stage once)": _compute(meta.get("compute_minutes")),
                                 "date": meta.get("date"), "intervals": f"{level:.0%} paired bootstrap "
                                 f"({report.get('n_boot')} replicates) over test examples and seeds"}))
    rows = report["rows"]
    table = [{"variant": r.get("variant"), "NLL": _ci(r, "nll"), "ΔNLL": _ci(r, "d_nll", sign=True),
              "bits/byte": _ci(r, "bpb"), "Δbpb": _ci(r, "d_bpb", sign=True),
              "accuracy %": _ci(r, "accuracy", 100), "Δaccuracy pts": _ci(r, "d_accuracy", 100, sign=True),
              "steps": r.get("steps"), "train tokens": r.get("train_tokens"), "kept": r.get("kept")}
             for r in rows]
    oracle = report.get("oracle")
    if oracle:  # the share of the oracle's gain each variant recovers, beside its differences
        for entry, r in zip(table, rows, strict=True):
            entry[f"share of {oracle}'s ΔNLL"] = _ci(r, "recovered_nll", digits=2)
            entry[f"share of {oracle}'s Δacc"] = _ci(r, "recovered_accuracy", digits=2)
    page.add("Results", f"<p class=\"dim\">{level:.0%} CIs in brackets; Δ = variant − {ESC(str(report.get('baseline')))}"
                        "</p>" + _table(table, cls="results"), "results")
    page.part("Forest plot", lambda: f'<figure class="plot">{forest_svg(rows, str(report.get("baseline")), level)}'
                                     "</figure>")
    kinds = sorted({k for r in rows for k in r if k.startswith("noise_kept_")})
    if kinds:
        page.add("Noisy training rows kept (mean over seeds)",
                 _table([{"variant": r.get("variant"), **{k.removeprefix("noise_kept_"): r.get(k) for k in kinds}}
                         for r in rows]))
    if (folder / "tensorboard").is_dir():
        page.add("Training curves", f"<p><code>tensorboard --logdir {ESC(str(folder / 'tensorboard'))}</code> "
                                    "overlays every cell (variant/seed).</p>")


def _compute(minutes: dict | None) -> str | None:
    """`scoring 12.0, training 30.5, ...; total 50.1` from a study's compute_minutes (None when not recorded)."""
    if not minutes:
        return None
    phases = ", ".join(f"{k} {v:.1f}" for k, v in minutes.items() if k not in ("total", "unrecorded"))
    missing = f" ({minutes['unrecorded']} stages not timed)" if minutes.get("unrecorded") else ""
    return f"{phases}; total {minutes.get('total', 0):.1f}{missing}"


# --- audit ----------------------------------------------------------------------------------------


def _heat(value: float | None, direction: str | None) -> str:
    """Cell colour: red when high values flag the defect, blue when low values do, stronger further from 0.5."""
    if value is None or math.isnan(value):
        return "#f1f3f5"
    t = min(1.0, max(0.0, (value - 0.5) * 2))
    base = (201, 42, 42) if direction == "high" else (25, 113, 194)
    r, g, b = (round(255 + (c - 255) * t) for c in base)
    return f"rgb({r},{g},{b})"


def heatmap_html(rows: list[dict[str, Any]]) -> str:
    """AUROC by score column (rows) and canary kind (columns) as a coloured table."""
    from pipeline.evaluation.audit import SELECTION_ROW

    scored = [r for r in rows if r.get("column") != SELECTION_ROW]
    columns = sorted({str(r.get("column")) for r in scored})
    kinds = sorted({str(r.get("kind")) for r in scored})
    cell = {(str(r.get("column")), str(r.get("kind"))): r for r in scored}
    head = "<th>score \\ defect</th>" + "".join(f"<th>{ESC(k)}</th>" for k in kinds)
    body = ""
    for c in columns:
        tds = ""
        for k in kinds:
            r = cell.get((c, k), {})
            auroc = r.get("auroc")
            text = "" if auroc is None else f"{auroc:.2f}"
            tip = f"{c} / {k}: AUROC {text} [{_fmt(r.get('lo'))}, {_fmt(r.get('hi'))}], {r.get('direction') or ''} values flag"
            tds += f'<td style="background:{_heat(auroc, r.get("direction"))}" title="{ESC(tip)}">{ESC(text)}</td>'
        body += f"<tr><th>{ESC(c)}</th>{tds}</tr>"
    return (f'<table class="heat"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            "<p class=\"dim\">red: high values flag the defect; blue: low values do; stronger colour: AUROC further "
            "from 0.5 (chance).</p>")


def _audit_page(page: Page) -> None:
    from pipeline.evaluation.audit import SELECTION_ROW
    from pipeline.reports.audit import audit_report

    folder = page.folder
    if not (folder / "audit.parquet").is_file():
        page.missing.append("no audit.parquet: the audit has not finished")
        page.part("What ran", lambda: _what_ran(folder, _config(folder), {}))
        return
    report = audit_report(folder)
    page.add("What ran", _facts(report.get("meta") or {}))
    rows = report["rows"]
    page.add("AUROC heat map", heatmap_html(rows), "heatmap")
    selection = {r["kind"]: r for r in rows if r.get("column") == SELECTION_ROW}
    by_kind = []
    for kind in sorted({str(r.get("kind")) for r in rows}):
        best = max((r for r in rows if r.get("kind") == kind and r.get("column") != SELECTION_ROW
                    and r.get("auroc") is not None), key=lambda r: r["auroc"], default=None)
        by_kind.append({"defect": kind, "best score": best and f"{best['column']} ({best['direction']})",
                        "AUROC": best and best["auroc"], "CI": best and f"[{_fmt(best['lo'])}, {_fmt(best['hi'])}]",
                        "selection dropped": (selection.get(kind) or {}).get("recall_at_budget")})
    page.add("By defect", _table(by_kind))
    page.add("Every score and defect", _table(
        [r for r in rows if r.get("column") != SELECTION_ROW],
        ["column", "kind", "auroc", "lo", "hi", "direction", "recall_at_budget", "n"]))


# --- style and script -----------------------------------------------------------------------------


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:0 18px 40px;color:#1c1c1c}
h1{font-size:20px;margin:18px 0 2px}h2{font-size:17px;border-bottom:1px solid #dee2e6;padding-bottom:3px;margin-top:28px}
h3{font-size:14px;margin:14px 0 4px}.dim{color:#667}code{background:#f1f3f5;padding:0 3px;border-radius:3px}
table{border-collapse:collapse;margin:4px 0}th,td{border:1px solid #dee2e6;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f8f9fa}.facts{display:grid;grid-template-columns:max-content minmax(0,1fr) max-content minmax(0,1fr);gap:2px 14px}.facts dt{color:#667}.facts dd{margin:0;word-break:break-all}
.counts{display:flex;gap:14px;flex-wrap:wrap}.count{border:1px solid #dee2e6;border-radius:6px;padding:6px 14px;min-width:90px}
.count .n{display:block;font-size:22px;font-weight:600}.count .label{color:#667}
.missing{background:#fff4e6;border:1px solid #ffc078;padding:4px 12px;border-radius:6px}
.plots{display:flex;flex-wrap:wrap;gap:10px}.plot{margin:0}.plot svg{max-width:100%;height:auto}figcaption{font-weight:600}
.controls{display:flex;gap:12px;flex-wrap:wrap;margin:6px 0}.controls input{width:260px}
.scroll{overflow-x:auto}table.examples{width:100%;font-size:13px}table.examples tbody tr.ex{cursor:pointer}
table.examples tbody tr.ex:hover{background:#f1f8ff}tr.kept td.verdict{color:#2b8a3e;font-weight:600}tr.dropped td.verdict{color:#c92a2a;font-weight:600}
td.text{max-width:360px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}th.sortable{cursor:pointer}th.sorted{background:#e7f5ff}
tr.detail td{background:#fcfcfd}pre{white-space:pre-wrap;word-break:break-word;margin:2px 0 8px;background:#f8f9fa;padding:6px;border-radius:4px;max-height:480px;overflow:auto}
.side{display:grid;grid-template-columns:1fr 1fr;gap:10px}.turn{margin:4px 0}.turn b{color:#495057}
table.heat td{text-align:center;min-width:64px}
"""

JS = r"""
(function () {
  var el = document.getElementById('report-data');
  if (!el) return;
  var D = JSON.parse(el.textContent), rows = D.rows, cols = D.columns;
  var $ = function (id) { return document.getElementById(id); };
  function params() {
    var p = new URLSearchParams(location.search.slice(1));
    new URLSearchParams(location.hash.slice(1)).forEach(function (v, k) { p.set(k, v); });
    return p;
  }
  var P = params(), state = {q: P.get('q') || '', show: P.get('show') || '', reason: P.get('reason') || '',
    domain: P.get('domain') || '', sort: P.get('sort') || '', open: P.get('open') || ''};
  function node(tag, text, cls) {
    var n = document.createElement(tag);
    if (text !== undefined && text !== null) n.textContent = String(text);
    if (cls) n.className = cls;
    return n;
  }
  function option(select, value, label) { var o = node('option', label); o.value = value; select.appendChild(o); }
  function uniq(key) {
    var seen = {}; rows.forEach(function (r) { if (r[key] !== null && r[key] !== undefined && r[key] !== '') seen[r[key]] = (seen[r[key]] || 0) + 1; });
    return Object.keys(seen).sort().map(function (k) { return [k, seen[k]]; });
  }
  uniq('rule').forEach(function (x) { option($('reason'), x[0], x[0] + ' (' + x[1] + ')'); });
  uniq('domain').forEach(function (x) { option($('domain'), x[0], x[0] + ' (' + x[1] + ')'); });
  cols.forEach(function (c) { option($('sort'), c, c + ' ascending'); option($('sort'), '-' + c, c + ' descending'); });
  var head = ['verdict', 'id', 'domain', 'reason'].concat(cols).concat(['prompt', 'response']);
  var tr = node('tr');
  head.forEach(function (h) {
    var th = node('th', h);
    if (cols.indexOf(h) >= 0) {
      th.className = 'sortable'; th.title = 'sort by ' + h;
      th.addEventListener('click', function () { state.sort = state.sort === h ? '-' + h : h; sync(); });
    }
    tr.appendChild(th);
  });
  $('examples').tHead.appendChild(tr);
  function haystack(r) {
    var t = [r.id, r.prompt, r.response, r.reason, r.domain, r.old, r.new];
    (r.turns || []).forEach(function (x) { t.push(x.content); });
    return t.join('\n').toLowerCase();
  }
  rows.forEach(function (r) { r._h = haystack(r); });
  function visible() {
    var q = state.q.toLowerCase();
    var out = rows.filter(function (r) {
      if (state.show === 'kept' && r.kept !== true) return false;
      if (state.show === 'dropped' && r.kept !== false) return false;
      if (state.reason && r.rule !== state.reason) return false;
      if (state.domain && String(r.domain) !== state.domain) return false;
      return !q || r._h.indexOf(q) >= 0;
    });
    var key = state.sort.replace(/^-/, ''), desc = state.sort.charAt(0) === '-';
    if (key && cols.indexOf(key) >= 0) {
      out = out.slice().sort(function (a, b) {
        var x = a.scores[key], y = b.scores[key];
        if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;
        if (y === null || y === undefined) return -1;
        return desc ? y - x : x - y;
      });
    }
    return out;
  }
  function block(parent, title, text) {
    if (text === null || text === undefined) return;
    parent.appendChild(node('h3', title)); parent.appendChild(node('pre', text));
  }
  function detail(r) {
    var d = node('tr', null, 'detail'), td = node('td'); td.colSpan = head.length; d.appendChild(td);
    td.appendChild(node('p', 'id ' + r.id + ' · ' + (r.kept === true ? 'kept' : r.kept === false ? 'dropped' : 'not selected') +
      (r.weight !== null && r.weight !== undefined ? ' · weight ' + r.weight : '') + ' · ' + (r.reason || '')));
    if (r.turns) {
      td.appendChild(node('h3', 'chat turns'));
      r.turns.forEach(function (t) { var p = node('div', null, 'turn'); p.appendChild(node('b', t.role + ': ')); p.appendChild(node('pre', t.content)); td.appendChild(p); });
    } else { block(td, 'prompt', r.prompt); }
    if (r.old !== null && r.old !== undefined && r.new !== null && r.new !== undefined) {
      var side = node('div', null, 'side'), a = node('div'), b = node('div');
      block(a, 'old response (original)', r.old); block(b, 'new response (CLEAR correction)', r.new);
      side.appendChild(a); side.appendChild(b); td.appendChild(side);
    } else if (!r.turns) { block(td, 'response', r.response); }
    return d;
  }
  function fmt(v) { return (v === null || v === undefined) ? '' : (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)) ? v.toExponential(3) : String(Math.round(v * 1e4) / 1e4); }
  function render() {
    var body = $('examples').tBodies[0], shown = visible();
    while (body.firstChild) body.removeChild(body.firstChild);
    shown.forEach(function (r) {
      var verdict = r.kept === true ? 'kept' : r.kept === false ? 'dropped' : '';
      var row = node('tr', null, 'ex ' + verdict); row.setAttribute('data-id', r.id);
      row.appendChild(node('td', verdict || '—', 'verdict'));
      row.appendChild(node('td', r.id, 'id'));
      row.appendChild(node('td', r.domain));
      row.appendChild(node('td', r.rule, 'reason'));
      cols.forEach(function (c) { var td = node('td', fmt(r.scores[c]), 'score'); td.setAttribute('data-col', c);
        td.setAttribute('data-v', r.scores[c] === null ? '' : String(r.scores[c])); row.appendChild(td); });
      row.appendChild(node('td', (r.prompt || '').slice(0, 160), 'text'));
      row.appendChild(node('td', (r.response || '').slice(0, 160), 'text'));
      row.addEventListener('click', function () {
        var next = row.nextSibling;
        if (next && next.className === 'detail') { body.removeChild(next); state.open = ''; }
        else { body.insertBefore(detail(r), next); state.open = r.id; }
        write();
      });
      body.appendChild(row);
      if (state.open && state.open === r.id) body.appendChild(detail(r));
    });
    var parts = [];
    if (state.show) parts.push(state.show);
    if (state.reason) parts.push('reason “' + state.reason + '”');
    if (state.domain) parts.push('domain ' + state.domain);
    if (state.q) parts.push('matching “' + state.q + '”');
    var s = $('status'); while (s.firstChild) s.removeChild(s.firstChild);
    s.appendChild(document.createTextNode('showing '));
    s.appendChild(node('b', shown.length)).id = 'n-shown';
    s.appendChild(document.createTextNode(' of '));
    s.appendChild(node('b', rows.length)).id = 'n-rows';
    s.appendChild(document.createTextNode(' rows in the table' + (parts.length ? ' (' + parts.join(', ') + ')' : '') +
      (state.sort ? ', sorted by ' + state.sort.replace(/^-/, '') + (state.sort.charAt(0) === '-' ? ' descending' : ' ascending') : '') +
      '; click a row for its full text'));
    s.setAttribute('data-sort', state.sort);
    Array.prototype.forEach.call($('examples').tHead.rows[0].cells, function (th) {
      th.classList.toggle('sorted', th.textContent === state.sort.replace(/^-/, ''));
    });
  }
  function write() {
    var p = new URLSearchParams();
    Object.keys(state).forEach(function (k) { if (state[k]) p.set(k, state[k]); });
    try { history.replaceState(null, '', '#' + p.toString()); } catch (e) { /* a file: URL may refuse */ }
  }
  function sync() {
    $('q').value = state.q; $('show').value = state.show; $('reason').value = state.reason;
    $('domain').value = state.domain; $('sort').value = state.sort; render(); write();
  }
  ['q', 'show', 'reason', 'domain', 'sort'].forEach(function (id) {
    $(id).addEventListener(id === 'q' ? 'input' : 'change', function () { state[id] = $(id).value; sync(); });
  });
  sync();
})();
"""
