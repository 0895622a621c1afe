"""`pipeline inspect`: list runs and cards, query, explain, compare and export selected examples.

Every command is a plain function returning a dict (so `--json` is `json.dumps` of it); the rich
rendering lives in the `print_*` functions at the bottom. Wherever a subset is expected, a run
directory (config.yaml + selection.parquet ...) or a data card directory (card.json +
subset.parquet) is accepted.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from pipeline.core.io import atomic_path, read_json

FRONT = ("id", "kept", "weight", "reason")
OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt, "=": operator.eq,
}
_WHERE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|==|!=|<|>|=)\s*(.*?)\s*$")


# --- loading ---------------------------------------------------------------------------------


def is_card(path: str | Path) -> bool:
    """True for a data card folder (card.json + subset.parquet)."""
    p = Path(path)
    return (p / "card.json").is_file() and (p / "subset.parquet").is_file()


def is_run(path: str | Path) -> bool:
    """True for a run directory (config.yaml)."""
    return (Path(path) / "config.yaml").is_file()


def _check(path: str | Path) -> Path:
    p = Path(path)
    if not (is_run(p) or is_card(p)):
        raise FileNotFoundError(f"{p} is neither a run directory (config.yaml) nor a data card (card.json + subset.parquet)")
    return p


def _join_new(table: pl.DataFrame, other: pl.DataFrame) -> pl.DataFrame:
    """Left-join the columns of `other` that `table` lacks, on id, keeping `table`'s rows and order."""
    cols = [c for c in other.columns if c not in table.columns]
    if not cols:
        return table
    other = other.select("id", *cols).unique("id", keep="first", maintain_order=True)
    return table.join(other.with_columns(pl.col("id").cast(table.schema["id"])), on="id", how="left",
                      maintain_order="left")


def _front(table: pl.DataFrame) -> pl.DataFrame:
    """Order columns: id, kept, weight, reason, score columns, then the rest."""
    scores = score_columns(table)
    first = [c for c in (*FRONT, *scores) if c in table.columns]
    return table.select(*first, *[c for c in table.columns if c not in first])


def _run_table(run: Path) -> pl.DataFrame:
    sel, scores, train = run / "selection.parquet", run / "scores.parquet", run / "data" / "train.parquet"
    if sel.exists():
        table = pl.read_parquet(sel)
    elif scores.exists():
        table = pl.read_parquet(scores).select("id").with_columns(
            kept=pl.lit(None, pl.Boolean), weight=pl.lit(None, pl.Float64), reason=pl.lit(None, pl.String))
    else:
        raise FileNotFoundError(f"{run} has no selection.parquet or scores.parquet yet")
    for extra in (scores, train):
        if extra.exists():
            table = _join_new(table, pl.read_parquet(extra))
    return table


def _card_table(card: Path) -> pl.DataFrame:
    facts = read_json(card / "card.json")
    table = pl.read_parquet(card / "subset.parquet").with_columns(kept=pl.lit(True))
    run_dir = (facts.get("run") or {}).get("run_dir")
    run = Path(run_dir) if run_dir else None
    if run is not None and (run / "scores.parquet").exists():
        table = _join_new(table, pl.read_parquet(run / "scores.parquet"))
    if run is not None and (run / "selection.parquet").exists():
        table = _join_new(table, pl.read_parquet(run / "selection.parquet").select("id", "reason"))
    if "reason" not in table.columns:
        table = table.with_columns(reason=pl.lit(f"kept: in data card {facts.get('name', card.name)}"))
    return table


def load_table(path: str | Path) -> pl.DataFrame:
    """One row per example: selection + scores + training data of a run, or a card's kept subset."""
    p = _check(path)
    return _front(_run_table(p) if is_run(p) else _card_table(p))


def score_columns(table: pl.DataFrame) -> list[str]:
    """Numeric columns other than `weight` (the scores to filter, sort and compare by)."""
    return [c for c, t in table.schema.items() if t.is_numeric() and c != "weight"]


def _describe_source(path: str | Path) -> dict[str, Any]:
    """Name, kind and recipe of a run or card directory."""
    p = _check(path)
    if is_run(p):
        config = yaml.safe_load((p / "config.yaml").read_text()) or {}
        return {"path": str(p), "kind": "run", "name": p.name, "recipe": config.get("name"), "select": config.get("select")}
    facts = read_json(p / "card.json")
    return {"path": str(p), "kind": "card", "name": facts.get("name", p.name),
            "recipe": (facts.get("run") or {}).get("recipe"), "select": facts.get("rules"),
            "read": (facts.get("counts") or {}).get("read")}


# --- summary -----------------------------------------------------------------------------------


def inspect_run(run_dir: str | Path, n: int = 3) -> dict[str, Any]:
    """Counts, score summaries, drop reasons and a few kept and dropped examples of a run or card."""
    run = Path(run_dir)
    if is_card(run) and not is_run(run):
        return _inspect_card(run, n)
    if not is_run(run):
        raise FileNotFoundError(f"{run} is not a run directory (no config.yaml)")
    config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    report: dict[str, Any] = {"run_dir": str(run), "recipe": config.get("name"), "select": config.get("select")}
    if (run / "metrics.json").exists():
        report["metrics"] = read_json(run / "metrics.json")
    if not (run / "selection.parquet").exists():
        report["status"] = "no selection yet"
        return report
    table = load_table(run)
    kept, dropped = table.filter(pl.col("kept")), table.filter(~pl.col("kept"))
    report["counts"] = {"read": table.height, "kept": kept.height, "dropped": dropped.height}
    numeric = score_columns(table)
    report["scores"] = {c: {"kept": _describe(kept.get_column(c)), "dropped": _describe(dropped.get_column(c))}
                        for c in numeric}
    report["drop_reasons"] = _reason_counts(dropped)
    show = [c for c in ("id", "reason", "weight", *numeric[:2], "prompt") if c in table.columns]
    report["kept_examples"] = kept.head(n).select(show).to_dicts()
    report["dropped_examples"] = dropped.head(n).select(show).to_dicts()
    return report


def _inspect_card(card: Path, n: int) -> dict[str, Any]:
    facts = read_json(card / "card.json")
    table = load_table(card)
    show = [c for c in ("id", "reason", "weight", *score_columns(table)[:2], "prompt") if c in table.columns]
    return {
        "run_dir": str(card), "recipe": facts.get("name"), "select": facts.get("rules"),
        "counts": facts.get("counts") or {"read": None, "kept": table.height, "dropped": None},
        "scores": facts.get("score_stats", {}), "drop_reasons": [],
        "kept_examples": table.head(n).select(show).to_dicts(),
        "dropped_examples": (facts.get("examples") or {}).get("dropped", [])[:n],
    }


def _reason_counts(dropped: pl.DataFrame, top: int = 5) -> list[list[Any]]:
    """Most common drop reasons, grouped on the rule part (before `;`, where values follow)."""
    if dropped.is_empty():
        return []
    rule = pl.col("reason").fill_null("").str.split(";").list.first().str.strip_chars()
    counts = dropped.group_by(rule.alias("reason")).len().sort(["len", "reason"], descending=[True, False])
    return [list(r) for r in counts.head(top).rows()]


def _describe(s: pl.Series) -> dict[str, float | int | None]:
    s = s.drop_nulls().cast(pl.Float64).drop_nans()
    if s.is_empty():
        return {"count": 0}
    return {"count": s.len(), "mean": s.mean(), "median": s.median(), "min": s.min(), "max": s.max()}


# --- filter and sort ---------------------------------------------------------------------------


def parse_where(text: str) -> tuple[str, str, str]:
    """Split `COLUMN OP VALUE` (OP one of < <= > >= == != =) into its three parts."""
    m = _WHERE.match(text)
    if not m or not m.group(3):
        raise ValueError(f"--where {text!r}: expected COLUMN OP VALUE with OP in < <= > >= == !=")
    col, op, value = m.groups()
    return col, "==" if op == "=" else op, value


def where_expr(text: str, schema: pl.Schema) -> pl.Expr:
    """A polars filter for one `COLUMN OP VALUE` condition, the value typed by the column's dtype."""
    col, op, raw = parse_where(text)
    if col not in schema:
        raise ValueError(f"--where {text!r}: no column {col!r}; columns: {', '.join(schema)}")
    dtype = schema[col]
    if raw.lower() in {"null", "none"}:
        if op not in {"==", "!="}:
            raise ValueError(f"--where {text!r}: compare with null only by == or !=")
        return pl.col(col).is_null() if op == "==" else pl.col(col).is_not_null()
    value: Any
    if dtype.is_numeric():
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"--where {text!r}: {col} is numeric, {raw!r} is not a number") from None
    elif dtype == pl.Boolean:
        if raw.lower() not in {"true", "false", "1", "0"}:
            raise ValueError(f"--where {text!r}: {col} is true/false, not {raw!r}")
        value = raw.lower() in {"true", "1"}
    else:
        value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
        if dtype != pl.String:
            return OPS[op](pl.col(col).cast(pl.String), pl.lit(value))
    return OPS[op](pl.col(col), pl.lit(value))


def select_examples(
    table: pl.DataFrame,
    where: Sequence[str] = (),
    sort: str | None = None,
    descending: bool = False,
    subset: str | None = None,
) -> pl.DataFrame:
    """Rows matching every `where` condition (and kept/dropped when `subset` says), sorted by `sort`."""
    for cond in where:
        table = table.filter(where_expr(cond, table.schema))
    if subset == "kept":
        table = table.filter(pl.col("kept").fill_null(False))
    elif subset == "dropped":
        table = table.filter(~pl.col("kept").fill_null(True))
    elif subset is not None:
        raise ValueError(f"subset must be 'kept' or 'dropped', not {subset!r}")
    if sort is not None:
        if sort not in table.columns:
            raise ValueError(f"--sort {sort!r}: no such column; columns: {', '.join(table.columns)}")
        table = table.sort(sort, descending=descending, nulls_last=True, maintain_order=True)
    return table


def query_report(
    path: str | Path,
    where: Sequence[str] = (),
    sort: str | None = None,
    descending: bool = False,
    subset: str | None = None,
    n: int | None = 20,
    columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The first `n` examples matching the filters, with id, kept, weight, reason, scores and prompt."""
    table = load_table(path)
    rows = select_examples(table, where, sort, descending, subset)
    if columns:
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ValueError(f"--columns: no column {', '.join(missing)}; columns: {', '.join(table.columns)}")
        show = list(dict.fromkeys(["id", *columns]))
    else:
        show = [c for c in (*FRONT, *score_columns(table), "prompt") if c in table.columns]
    shown = rows if n is None else rows.head(n)
    return {"source": str(path), "where": list(where), "sort": sort, "descending": descending, "subset": subset,
            "total": table.height, "matched": rows.height, "shown": shown.height, "columns": show,
            "rows": shown.select(show).to_dicts()}


# --- one example -------------------------------------------------------------------------------


def example_report(path: str | Path, example_id: str) -> dict[str, Any]:
    """Everything about one example: prompt, response, scores (with rank), kept or dropped and why, weight."""
    table = load_table(path)
    row = table.filter(pl.col("id").cast(pl.String) == str(example_id))
    if row.is_empty():
        raise KeyError(f"no example with id {example_id!r} in {path}")
    r = row.row(0, named=True)
    scores = score_columns(table)
    ranks = {}
    for c in scores:
        col = table.get_column(c).cast(pl.Float64)
        ranks[c] = None if r[c] is None else int((col < float(r[c])).sum()) + 1
    source = _describe_source(path)
    rest = {k: v for k, v in r.items() if k not in {*FRONT, *scores, "prompt", "response"}}
    return {
        "source": str(path), "id": r["id"], "kept": r.get("kept"), "weight": r.get("weight"),
        "reason": r.get("reason"), "select": source["select"], "scores": {c: r[c] for c in scores},
        "ranks": ranks, "of": table.height, "prompt": r.get("prompt"), "response": r.get("response"), "other": rest,
    }


# --- compare -----------------------------------------------------------------------------------


def compare_report(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Sizes, overlap, Jaccard and per-score mean/median shift (B minus A) of two kept subsets."""
    ta, tb = load_table(a), load_table(b)
    ka = ta.filter(pl.col("kept").fill_null(False))
    kb = tb.filter(pl.col("kept").fill_null(False))
    borrowed: dict[str, list[str]] = {"a": [], "b": []}
    # A side without a score (e.g. a card whose run is gone) reads it from the other side's full table.
    for side, other, key in ((ka, tb, "a"), (kb, ta, "b")):
        missing = [c for c in score_columns(other) if c not in side.columns]
        borrowed[key] = missing
    ka = _join_new(ka, tb.select("id", *borrowed["a"])) if borrowed["a"] else ka
    kb = _join_new(kb, ta.select("id", *borrowed["b"])) if borrowed["b"] else kb
    ids_a = set(ka.get_column("id").cast(pl.String).to_list())
    ids_b = set(kb.get_column("id").cast(pl.String).to_list())
    shared, union = ids_a & ids_b, ids_a | ids_b
    shift = {}
    for c in [c for c in score_columns(ka) if c in score_columns(kb)]:
        da, db = _center(ka.get_column(c)), _center(kb.get_column(c))
        shift[c] = {"a": da, "b": db, "mean_shift": _minus(db["mean"], da["mean"]),
                    "median_shift": _minus(db["median"], da["median"])}
    side = {"a": _describe_source(a), "b": _describe_source(b)}
    for key, t, k in (("a", ta, ka), ("b", tb, kb)):
        side[key].pop("select", None)
        side[key].update({"read": side[key].get("read", t.height), "kept": k.height})
    return {
        "a": side["a"], "b": side["b"], "overlap": len(shared), "union": len(union),
        "jaccard": len(shared) / len(union) if union else None,
        "only_a": len(ids_a - ids_b), "only_b": len(ids_b - ids_a), "shift": shift,
        "borrowed_scores": {k: v for k, v in borrowed.items() if v},
    }


def _center(s: pl.Series) -> dict[str, float | int | None]:
    s = s.drop_nulls().cast(pl.Float64).drop_nans()
    return {"count": s.len(), "mean": s.mean() if s.len() else None, "median": s.median() if s.len() else None}


def _minus(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


# --- export ------------------------------------------------------------------------------------


def export_table(table: pl.DataFrame, out: str | Path) -> dict[str, Any]:
    """Write `table` to .parquet or .jsonl/.ndjson atomically; return path, format, rows and columns."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in {".parquet", ".jsonl", ".ndjson"}:
        raise ValueError(f"--export {out}: use a .parquet, .jsonl or .ndjson file name")
    fmt = "parquet" if suffix == ".parquet" else "jsonl"
    with atomic_path(out) as tmp:
        if fmt == "parquet":
            table.write_parquet(tmp)
        else:
            table.write_ndjson(tmp)
    return {"path": str(out), "format": fmt, "rows": table.height, "columns": table.columns}


def export_report(
    path: str | Path,
    out: str | Path,
    where: Sequence[str] = (),
    sort: str | None = None,
    descending: bool = False,
    subset: str | None = None,
    n: int | None = None,
) -> dict[str, Any]:
    """Filter and sort a run's or card's joined table as `query_report` does and write all its columns."""
    rows = select_examples(load_table(path), where, sort, descending, subset)
    return {"source": str(path), **export_table(rows if n is None else rows.head(n), out)}


# --- list --------------------------------------------------------------------------------------


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_entry(run: Path) -> dict[str, Any]:
    """One line of `--list` for a run: name, recipe, start time, status, kept/read, base -> tuned."""
    config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
    entry: dict[str, Any] = {"name": run.name, "path": str(run), "recipe": config.get("name"),
                             "started": _mtime(run / "config.yaml")}
    if "base" in metrics and "tuned" in metrics:
        entry["status"] = "done"
    elif metrics:
        entry["status"] = "curated"
    elif (run / "selection.parquet").exists():
        entry["status"] = "selected"
    elif (run / "scores.parquet").exists():
        entry["status"] = "scored"
    else:
        entry["status"] = "started"
    counts = metrics.get("selection")
    if not counts and (run / "selection.parquet").exists():
        kept = pl.read_parquet(run / "selection.parquet", columns=["kept"]).get_column("kept")
        counts = {"read": kept.len(), "kept": int(kept.sum())}
    entry["read"], entry["kept"] = (counts or {}).get("read"), (counts or {}).get("kept")
    entry["metrics"] = {
        k: {"base": metrics["base"].get(k), "tuned": metrics["tuned"].get(k)} for k in ("accuracy", "nll")
    } if entry["status"] == "done" else None
    return entry


def card_entry(card: Path) -> dict[str, Any]:
    """One line of `--list` for a data card: name, rules, kept/read and its run."""
    facts = read_json(card / "card.json")
    counts = facts.get("counts") or {}
    return {"name": facts.get("name", card.name), "path": str(card), "rules": facts.get("rules", []),
            "read": counts.get("read"), "kept": counts.get("kept"),
            "run_dir": (facts.get("run") or {}).get("run_dir")}


def list_report(output_dir: str | Path = "runs", cards_dir: str | Path = "data_cards") -> dict[str, Any]:
    """Runs under `output_dir` and data cards under `cards_dir`."""
    from pipeline.core.runs import list_runs

    root = Path(cards_dir)
    cards = sorted(p for p in root.iterdir() if is_card(p)) if root.is_dir() else []
    return {"output_dir": str(output_dir), "cards_dir": str(cards_dir),
            "runs": [run_entry(r) for r in list_runs(output_dir)], "cards": [card_entry(c) for c in cards]}


# --- rich rendering ----------------------------------------------------------------------------


def _fmt(v: Any, width: int = 200) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return ""
    return str(v)[:width]


def _rule(select: Any) -> str:
    """A rule config as `fraction(column=ppl, fraction=0.5, order=lowest)`."""
    if isinstance(select, list):
        return " + ".join(_rule(s) for s in select)
    if isinstance(select, dict):
        args = ", ".join(f"{k}={v}" for k, v in select.items() if k != "rule")
        return f"{select.get('rule', '?')}({args})"
    return str(select or "")


def _console() -> Any:
    from rich.console import Console

    return Console()


def _rows_table(title: str, rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> Any:
    from rich.table import Table

    cols = list(columns or (rows[0] if rows else []))
    t = Table(title=title)
    for col in cols:
        wide = col in {"prompt", "response", "reason"}
        t.add_column(col, overflow="fold", max_width=48 if wide else None, no_wrap=col in {"id", "kept"})
    for r in rows:
        t.add_row(*(_fmt(r.get(c), 80 if c in {"prompt", "response"} else 200) for c in cols))
    return t


def print_report(report: dict[str, Any]) -> None:
    """Render a summary (`inspect_run`) as rich tables."""
    from rich.table import Table

    con = _console()
    con.print(f"[bold]{report['recipe']}[/bold]  {report['run_dir']}")
    if "counts" not in report:
        con.print(report.get("status", ""))
        return
    c = report["counts"]
    con.print(f"read {c['read']}  kept {c['kept']}  dropped {c['dropped']}  rule {_rule(report['select'])}")
    if "metrics" in report and "base" in report["metrics"]:
        m = report["metrics"]
        con.print(f"accuracy base {m['base']['accuracy']:.3f} -> tuned {m['tuned']['accuracy']:.3f};  "
                  f"NLL base {m['base']['nll']:.4f} -> tuned {m['tuned']['nll']:.4f}")
    t = Table(title="scores")
    for col in ("score", "subset", "count", "mean", "median", "min", "max"):
        t.add_column(col)
    for name, parts in report["scores"].items():
        for part, d in parts.items():
            t.add_row(name, part, *(_fmt(d.get(k)) for k in ("count", "mean", "median", "min", "max")))
    con.print(t)
    if report.get("drop_reasons"):
        con.print(_rows_table("drop reasons", [{"reason": r, "count": k} for r, k in report["drop_reasons"]]))
    for title in ("kept_examples", "dropped_examples"):
        if report[title]:
            con.print(_rows_table(title.replace("_", " "), report[title]))


def print_query(report: dict[str, Any]) -> None:
    """Render a `query_report` as one table."""
    con = _console()
    filters = "; ".join([*report["where"], *([report["subset"]] if report["subset"] else [])]) or "all"
    order = f"  sorted by {report['sort']}{' desc' if report['descending'] else ''}" if report["sort"] else ""
    con.print(f"[bold]{report['source']}[/bold]  {filters}{order}: "
              f"{report['matched']} of {report['total']} match, showing {report['shown']}")
    con.print(_rows_table("examples", report["rows"], report["columns"]))


def print_example(report: dict[str, Any]) -> None:
    """Render an `example_report`: verdict, scores with ranks, prompt and response."""
    con = _console()
    verdict = {True: "[green]kept[/green]", False: "[red]dropped[/red]"}.get(report["kept"], "not selected yet")
    con.print(f"[bold]{report['id']}[/bold]  {verdict}  weight {_fmt(report['weight'])}  ({report['source']})")
    con.print(f"reason: {report['reason']}")
    con.print(f"rule:   {_rule(report['select'])}")
    rows = [{"score": c, "value": v, "rank (1 = lowest)": f"{report['ranks'][c]} of {report['of']}"}
            for c, v in report["scores"].items()]
    if rows:
        con.print(_rows_table("scores", rows))
    for field in ("prompt", "response"):
        con.rule(field)
        con.print(report[field] or "", markup=False, highlight=False)
    for k, v in report["other"].items():
        if v is not None:
            con.print(f"[dim]{k}[/dim]: {_fmt(v, 300)}", markup=True, highlight=False)


def print_compare(report: dict[str, Any]) -> None:
    """Render a `compare_report`: the two subsets, their overlap and score shifts."""
    con = _console()
    a, b = report["a"], report["b"]
    con.print(_rows_table("subsets", [{"": k, "kind": s["kind"], "name": s["name"], "kept": s["kept"],
                                       "read": s["read"], "path": s["path"]} for k, s in (("A", a), ("B", b))]))
    jac = report["jaccard"]
    con.print(f"overlap {report['overlap']}  union {report['union']}  Jaccard {_fmt(jac) if jac is not None else '-'}"
              f"  only in A {report['only_a']}  only in B {report['only_b']}")
    rows = [{"score": c, "mean A": s["a"]["mean"], "mean B": s["b"]["mean"], "shift": s["mean_shift"],
             "median A": s["a"]["median"], "median B": s["b"]["median"], "median shift": s["median_shift"]}
            for c, s in report["shift"].items()]
    if rows:
        con.print(_rows_table("score shift (B - A, kept subsets)", rows))
    for side, cols in report["borrowed_scores"].items():
        con.print(f"[dim]{side.upper()} has no {', '.join(cols)}: read from the other side's scores[/dim]")


def print_export(report: dict[str, Any]) -> None:
    """One line: what was written where."""
    _console().print(f"wrote {report['rows']} rows x {len(report['columns'])} columns ({report['format']}) "
                     f"-> {report['path']}")


def print_listing(report: dict[str, Any]) -> None:
    """Render `list_report`: a runs table and a data cards table."""
    con = _console()
    runs = []
    for r in report["runs"]:
        m = r["metrics"] or {}
        runs.append({"run": r["name"], "recipe": r["recipe"], "started": r["started"], "status": r["status"],
                     "kept/read": f"{r['kept']}/{r['read']}" if r["read"] is not None else "",
                     "accuracy": _arrow(m.get("accuracy"), ".3f"), "nll": _arrow(m.get("nll"), ".4f")})
    con.print(_rows_table(f"runs in {report['output_dir']}", runs,
                          ["run", "recipe", "started", "status", "kept/read", "accuracy", "nll"]))
    cards = [{"card": c["name"], "rule": _rule(c["rules"]), "kept/read": f"{c['kept']}/{c['read']}",
              "run": c["run_dir"]} for c in report["cards"]]
    con.print(_rows_table(f"data cards in {report['cards_dir']}", cards, ["card", "rule", "kept/read", "run"]))


def _arrow(pair: dict[str, Any] | None, spec: str) -> str:
    if not pair or pair.get("base") is None or pair.get("tuned") is None:
        return ""
    return f"{pair['base']:{spec}} -> {pair['tuned']:{spec}}"
