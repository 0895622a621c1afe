"""`pipeline inspect`: list runs and cards, query, explain, compare and export selected examples.

Every command is a plain function returning a dict (so `--json` is `json.dumps` of it); the rich
rendering lives in the `print_*` functions at the bottom. Wherever a subset is expected, a run
directory (config.yaml + selection.parquet ...) or a data card directory (card.json +
subset.parquet) is accepted.
"""

from __future__ import annotations

import math
import operator
import os
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from pipeline.core.config import DEFAULT_CARDS_DIR, DEFAULT_OUTPUT_DIR, yaml_load
from pipeline.core.io import atomic_path, loads
from pipeline.core.runs import check_output

FRONT = ("id", "kept", "weight", "reason")
NESTED = (pl.List, pl.Array, pl.Struct, pl.Object)
OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt, "=": operator.eq,
}
_WHERE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|==|!=|<|>|=)\s*(.*?)\s*$")


class InspectError(ValueError):
    """A user mistake or an unreadable file: the CLI prints it as one `pipeline: error:` line."""


class MissingExample(InspectError, KeyError):
    """No example with the asked id (a KeyError too, as before; printed without KeyError's quotes)."""

    def __str__(self) -> str:
        """The plain message, not KeyError's repr of it."""
        return str(self.args[0]) if self.args else ""


# What reading a user's files can raise; `--list` turns these into an error row, the CLI into one line.
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, yaml.YAMLError, pl.exceptions.PolarsError)


def one_line(err: BaseException) -> str:
    """The first line of an error message (polars appends its query plan on the following lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_n(n: int | None) -> None:
    """Refuse a negative row count (polars' head(-1) would silently mean "all but the last")."""
    if n is not None and n < 0:
        raise InspectError(f"-n {n}: must be 0 or more")


def _dict(value: Any) -> dict[str, Any]:
    """`value` if it is a mapping, else {} (files written by hand or by older versions may differ)."""
    return value if isinstance(value, dict) else {}


def _read_text(path: Path) -> str:
    """A UTF-8 text file, any failure naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InspectError(f"{path}: cannot read: {getattr(e, 'strerror', None) or one_line(e)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping (empty file: {}); invalid YAML or a non-mapping is an error naming the file."""
    try:
        data = yaml_load(_read_text(path))  # bounded in depth and alias expansion
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InspectError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', None) or one_line(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InspectError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return data


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object; truncated JSON or a non-object is an error naming the file."""
    try:
        data = loads(_read_text(path))  # bounded in depth
    except ValueError as e:
        raise InspectError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InspectError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_parquet(path: Path, columns: Sequence[str] | None = None, need: Sequence[str] = ("id",)) -> pl.DataFrame:
    """A parquet file read by its literal name (polars would glob `[ab]` in it); errors name the file."""
    try:
        table = pl.read_parquet(path, columns=list(columns) if columns else None, glob=False,
                                hive_partitioning=False)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise InspectError(f"{path}: cannot read parquet: {getattr(e, 'strerror', None) or one_line(e)}") from None
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise InspectError(f"{path}: no column {', '.join(missing)}; columns: {', '.join(table.columns)}")
    return table


# --- loading ---------------------------------------------------------------------------------


def is_card(path: str | Path) -> bool:
    """True for a data card folder (card.json + subset.parquet)."""
    p = Path(path)
    return (p / "card.json").is_file() and (p / "subset.parquet").is_file()


def is_run(path: str | Path) -> bool:
    """True for a run directory (config.yaml)."""
    return (Path(path) / "config.yaml").is_file()


def _check(path: str | Path) -> Path:
    """`path` as a Path if it is a run or card directory, else an error saying what it is instead."""
    p = Path(path)
    if is_run(p) or is_card(p):
        return p
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    raise FileNotFoundError(f"{p} is neither a run directory (config.yaml) nor a data card (card.json + subset.parquet)")


def _join_new(table: pl.DataFrame, other: pl.DataFrame) -> pl.DataFrame:
    """Left-join the columns of `other` that `table` lacks, on id, keeping `table`'s rows and order."""
    cols = [c for c in other.columns if c not in table.columns]
    if not cols:
        return table
    other = other.select("id", *cols).unique("id", keep="first", maintain_order=True)
    try:
        other = other.with_columns(pl.col("id").cast(table.schema["id"]))
    except pl.exceptions.PolarsError as e:
        raise InspectError(f"cannot join on id ({other.schema['id']} vs {table.schema['id']}): {one_line(e)}") from None
    return table.join(other, on="id", how="left", maintain_order="left")


def _front(table: pl.DataFrame) -> pl.DataFrame:
    """Order columns: id, kept, weight, reason, score columns, then the rest."""
    scores = score_columns(table)
    first = [c for c in (*FRONT, *scores) if c in table.columns]
    return table.select(*first, *[c for c in table.columns if c not in first])


def _selection(path: Path) -> pl.DataFrame:
    """A run's selection.parquet with id, a boolean kept, weight and reason (missing ones as nulls)."""
    table = _read_parquet(path, need=("id", "kept"))
    if table.schema["kept"] != pl.Boolean:
        try:
            table = table.with_columns(pl.col("kept").cast(pl.Boolean))
        except pl.exceptions.PolarsError:
            raise InspectError(f"{path}: column kept is {table.schema['kept']}, not true/false") from None
    if "weight" not in table.columns:
        table = table.with_columns(weight=pl.lit(None, pl.Float64))
    if "reason" not in table.columns:
        table = table.with_columns(reason=pl.lit(None, pl.String))
    return table.with_columns(pl.col("reason").cast(pl.String))


def _run_table(run: Path) -> pl.DataFrame:
    """A run's selection (or its bare score ids) joined with its scores and training data on id."""
    sel, scores, train = run / "selection.parquet", run / "scores.parquet", run / "data" / "train.parquet"
    if sel.is_file():
        table = _selection(sel)
    elif scores.is_file():
        table = _read_parquet(scores, columns=["id"]).with_columns(
            kept=pl.lit(None, pl.Boolean), weight=pl.lit(None, pl.Float64), reason=pl.lit(None, pl.String))
    else:
        raise FileNotFoundError(f"{run} has no selection.parquet or scores.parquet yet")
    for extra in (scores, train):
        if extra.is_file():
            table = _join_new(table, _read_parquet(extra))
    return table


def _card_run(facts: dict[str, Any]) -> Path | None:
    """The run directory a card recorded, if it recorded one."""
    run_dir = _dict(facts.get("run")).get("run_dir")
    return Path(run_dir) if isinstance(run_dir, str) and run_dir else None


def _card_table(card: Path) -> pl.DataFrame:
    """A card's kept subset and its dropped rows (cards since `dropped.parquet`), with scores and reasons
    from its run when that run still exists."""
    facts = _read_json(card / "card.json")
    table = _read_parquet(card / "subset.parquet").with_columns(kept=pl.lit(True))
    if (card / "dropped.parquet").is_file():
        dropped = _read_parquet(card / "dropped.parquet").with_columns(kept=pl.lit(False))
        table = pl.concat([table, dropped], how="diagonal_relaxed")
    run = _card_run(facts)
    if run is not None and (run / "scores.parquet").is_file():
        table = _join_new(table, _read_parquet(run / "scores.parquet"))
    if run is not None and (run / "selection.parquet").is_file():
        table = _join_new(table, _selection(run / "selection.parquet").select("id", "reason"))
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
        config = _read_yaml(p / "config.yaml")
        return {"path": str(p), "kind": "run", "name": p.name, "recipe": config.get("name"), "select": config.get("select")}
    facts = _read_json(p / "card.json")
    return {"path": str(p), "kind": "card", "name": facts.get("name", p.name),
            "recipe": _dict(facts.get("run")).get("recipe"), "select": facts.get("rules"),
            "read": _dict(facts.get("counts")).get("read")}


# --- summary -----------------------------------------------------------------------------------


def inspect_run(run_dir: str | Path, n: int = 3) -> dict[str, Any]:
    """Counts, score summaries, drop reasons and a few kept and dropped examples of a run or card."""
    check_n(n)
    run = _check(run_dir)
    if not is_run(run):
        return _inspect_card(run, n)
    config = _read_yaml(run / "config.yaml")
    report: dict[str, Any] = {"run_dir": str(run), "recipe": config.get("name"), "select": config.get("select")}
    if (run / "metrics.json").is_file():
        report["metrics"] = _read_json(run / "metrics.json")
    if not (run / "selection.parquet").is_file():
        report["status"] = "no selection yet"
        return report
    table = load_table(run)
    kept, dropped = table.filter(pl.col("kept")), table.filter(~pl.col("kept"))
    report["counts"] = {"read": table.height, "kept": kept.height, "dropped": dropped.height}
    numeric = score_columns(table)
    report["scores"] = {c: {"kept": _describe(kept.get_column(c)), "dropped": _describe(dropped.get_column(c))}
                        for c in numeric}
    report["drop_reasons"] = _reason_counts(dropped)
    show = [c for c in ("id", "reason", "weight", *numeric[:2], "prompt", "response") if c in table.columns]
    report["kept_examples"] = kept.head(n).select(show).to_dicts()
    report["dropped_examples"] = dropped.head(n).select(show).to_dicts()
    return report


def _inspect_card(card: Path, n: int) -> dict[str, Any]:
    """The summary of a card: its recorded counts and score statistics, and its first kept examples."""
    facts = _read_json(card / "card.json")
    table = load_table(card)
    kept, dropped_rows = table.filter(pl.col("kept")), table.filter(~pl.col("kept"))
    show = [c for c in ("id", "reason", "weight", *score_columns(table)[:2], "prompt", "response")
            if c in table.columns]
    counts = {"read": None, "kept": kept.height, "dropped": None, **_dict(facts.get("counts"))}
    dropped = _dict(facts.get("examples")).get("dropped")
    return {
        "run_dir": str(card), "recipe": facts.get("name"), "select": facts.get("rules"),
        "counts": counts, "scores": _dict(facts.get("score_stats")), "drop_reasons": _reason_counts(dropped_rows),
        "kept_examples": kept.head(n).select(show).to_dicts(),
        "dropped_examples": [d for d in dropped if isinstance(d, dict)][:n] if isinstance(dropped, list) else [],
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
        raise InspectError(f"--where {text!r}: expected COLUMN OP VALUE with OP in < <= > >= == !=")
    col, op, value = m.groups()
    return col, "==" if op == "=" else op, value


def _number(text: str, col: str, raw: str, dtype: pl.DataType) -> float | int:
    """The value of a numeric condition: an int for integer columns (exact), else a float (nan, inf too)."""
    if dtype.is_integer() and re.fullmatch(r"[+-]?\d+", raw) and abs(int(raw)) < 2**63:
        return int(raw)
    try:
        return float(raw)
    except ValueError:
        raise InspectError(f"--where {text!r}: column {col} is numeric ({dtype}), {raw!r} is not a number") from None


def where_expr(text: str, schema: pl.Schema) -> pl.Expr:
    """A polars filter for one `COLUMN OP VALUE` condition, the value typed by the column's dtype.

    Numbers compare as IEEE floats: a NaN cell matches no <, <=, >, >= (polars would order NaN above
    everything); `COL == nan` / `COL != nan` test for NaN as `== null` / `!= null` test for null, and
    ordering against NaN (`ppl < nan`), which could never match, is an error.
    """
    col, op, raw = parse_where(text)
    if col not in schema:
        raise InspectError(f"--where {text!r}: no column {col!r}; columns: {', '.join(schema)}")
    dtype = schema[col]
    if isinstance(dtype, NESTED):
        raise InspectError(f"--where {text!r}: column {col} holds {dtype}; only numbers, true/false and text compare")
    if raw.lower() in {"null", "none"}:
        if op not in {"==", "!="}:
            raise InspectError(f"--where {text!r}: compare with null only by == or !=")
        return pl.col(col).is_null() if op == "==" else pl.col(col).is_not_null()
    value: Any
    if dtype.is_numeric():
        value = _number(text, col, raw, dtype)
        is_float = dtype.is_float()
        if isinstance(value, float) and math.isnan(value):
            if op not in {"==", "!="}:
                raise InspectError(f"--where {text!r}: no number is {op} NaN, so this would match nothing; "
                                   f"use '{col} == nan' to find NaN values or '{col} != nan' to leave them out")
            if not is_float:
                return pl.lit(False) if op == "==" else pl.col(col).is_not_null()
            return pl.col(col).is_nan() if op == "==" else pl.col(col).is_not_nan()
        expr = OPS[op](pl.col(col), pl.lit(value))
        return expr & pl.col(col).is_not_nan() if is_float and op in {"<", "<=", ">", ">="} else expr
    if dtype == pl.Boolean:
        if raw.lower() not in {"true", "false", "1", "0"}:
            raise InspectError(f"--where {text!r}: column {col} is true/false, not {raw!r}")
        value = raw.lower() in {"true", "1"}
        return OPS[op](pl.col(col), pl.lit(value))
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
        try:
            table = table.filter(where_expr(cond, table.schema))
        except pl.exceptions.PolarsError as e:
            raise InspectError(f"--where {cond!r}: {one_line(e)}") from None
    if subset == "kept":
        table = table.filter(pl.col("kept").fill_null(False))
    elif subset == "dropped":
        table = table.filter(~pl.col("kept").fill_null(True))
    elif subset is not None:
        raise InspectError(f"subset must be 'kept' or 'dropped', not {subset!r}")
    if sort is not None:
        if sort not in table.columns:
            raise InspectError(f"--sort {sort!r}: no such column; columns: {', '.join(table.columns)}")
        if isinstance(table.schema[sort], NESTED):
            raise InspectError(f"--sort {sort!r}: column {sort} holds {table.schema[sort]}; "
                               "sort by a number, true/false or text column")
        try:
            table = table.sort(sort, descending=descending, nulls_last=True, maintain_order=True)
        except pl.exceptions.PolarsError as e:
            raise InspectError(f"--sort {sort!r}: {one_line(e)}") from None
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
    """The first `n` examples matching the filters, with id, kept, weight, reason, scores, prompt and response."""
    check_n(n)
    table = load_table(path)
    rows = select_examples(table, where, sort, descending, subset)
    if columns:
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise InspectError(f"--columns: no column {', '.join(missing)}; columns: {', '.join(table.columns)}")
        show = list(dict.fromkeys(["id", *columns]))
    else:
        show = [c for c in (*FRONT, *score_columns(table), "prompt", "response") if c in table.columns]
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
        raise MissingExample(f"no example with id {example_id!r} in {path}")
    r = row.row(0, named=True)
    scores = score_columns(table)
    ranks = {}
    for c in scores:
        col = table.get_column(c).cast(pl.Float64)
        ranks[c] = None if r[c] is None or math.isnan(float(r[c])) else int((col < float(r[c])).sum()) + 1
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


def check_export_target(out: str | Path, force: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse an export into a run or data card folder, over the command's `inputs`, or over a file without
    `force`: the one output guard every command shares (`pipeline.core.runs.check_output`).

    A run's own files (selection.parquet, ...) are its record: `--kept --export RUN/selection.parquet`
    must not silently replace them.
    """
    out = Path(out)
    if out.suffix.lower() not in {".parquet", ".jsonl", ".ndjson"}:
        raise InspectError(f"--export {out}: use a .parquet, .jsonl or .ndjson file name")
    return check_output(out, "--export", inputs=inputs, force=force)


def export_table(table: pl.DataFrame, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Write `table` to .parquet or .jsonl/.ndjson atomically; return path, format, rows and columns."""
    out = check_export_target(out, force)
    fmt = "parquet" if out.suffix.lower() == ".parquet" else "jsonl"
    try:
        with atomic_path(out) as tmp:
            if fmt == "parquet":
                table.write_parquet(tmp)
            else:
                table.write_ndjson(tmp)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise InspectError(f"--export {out}: {getattr(e, 'strerror', None) or one_line(e)}") from None
    return {"path": str(out), "format": fmt, "rows": table.height, "columns": table.columns}


def export_report(
    path: str | Path,
    out: str | Path,
    where: Sequence[str] = (),
    sort: str | None = None,
    descending: bool = False,
    subset: str | None = None,
    n: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Filter and sort a run's or card's joined table as `query_report` does and write all its columns."""
    check_n(n)
    check_export_target(out, force, inputs=[path])  # before reading: a refused target fails fast
    rows = select_examples(load_table(path), where, sort, descending, subset)
    return {"source": str(path), **export_table(rows if n is None else rows.head(n), out, force)}


# --- list --------------------------------------------------------------------------------------


def _mtime(path: Path) -> str:
    """The file's modification time as UTC ISO 8601."""
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_entry(run: Path) -> dict[str, Any]:
    """One line of `--list` for a run: name, recipe, start time, status, kept/read, base -> tuned."""
    config = _read_yaml(run / "config.yaml")
    metrics = _read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    entry: dict[str, Any] = {"name": run.name, "path": str(run), "recipe": config.get("name"),
                             "started": _mtime(run / "config.yaml")}
    base, tuned = _dict(metrics.get("base")), _dict(metrics.get("tuned"))
    if base and tuned:
        entry["status"] = "done"
    elif metrics:
        entry["status"] = "curated"
    elif (run / "selection.parquet").is_file():
        entry["status"] = "selected"
    elif (run / "scores.parquet").is_file():
        entry["status"] = "scored"
    else:
        entry["status"] = "started"
    counts = _dict(metrics.get("selection"))
    if not counts and (run / "selection.parquet").is_file():
        kept = _selection(run / "selection.parquet").get_column("kept")
        counts = {"read": kept.len(), "kept": int(kept.sum())}
    entry["read"], entry["kept"] = counts.get("read"), counts.get("kept")
    entry["metrics"] = {
        k: {"base": base.get(k), "tuned": tuned.get(k)} for k in ("accuracy", "nll")
    } if entry["status"] == "done" else None
    return entry


def card_entry(card: Path) -> dict[str, Any]:
    """One line of `--list` for a data card: name, rules, kept/read and its run."""
    facts = _read_json(card / "card.json")
    counts = _dict(facts.get("counts"))
    return {"name": facts.get("name", card.name), "path": str(card), "rules": facts.get("rules", []),
            "read": counts.get("read"), "kept": counts.get("kept"),
            "run_dir": _dict(facts.get("run")).get("run_dir")}


def _entry(read: Callable[[Path], dict[str, Any]], path: Path) -> dict[str, Any]:
    """`read(path)`, or a row naming the folder and its error, so one broken folder never hides the others."""
    try:
        return read(path)
    except READ_ERRORS as e:
        return {"name": path.name, "path": str(path), "error": one_line(e)}


def _subdirs(root: Path, keep: Callable[[Path], bool]) -> list[Path]:
    """The folders directly in `root` that `keep` accepts, by name; `root` is taken literally, never globbed."""
    if not root.is_dir():
        return []
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and keep(p))
    except OSError as e:
        raise InspectError(f"{root}: cannot list: {e.strerror or e}") from None


def list_report(output_dir: str | Path = DEFAULT_OUTPUT_DIR, cards_dir: str | Path = DEFAULT_CARDS_DIR) -> dict[str, Any]:
    """Runs under `output_dir` and data cards under `cards_dir`; an unreadable one is a row with `error`."""
    runs = _subdirs(Path(output_dir), is_run)
    cards = _subdirs(Path(cards_dir), is_card)
    return {"output_dir": str(output_dir), "cards_dir": str(cards_dir),
            "runs": [_entry(run_entry, r) for r in runs], "cards": [_entry(card_entry, c) for c in cards]}


# --- rich rendering ----------------------------------------------------------------------------
# Every user-controlled string (example text, reasons, ids, column names, paths, conditions) reaches
# rich as a `Text`, never as a markup string: `[/x]` in a reason must print, not raise MarkupError.
# The console itself also has markup and emoji codes off, so a str that slips through prints literally.


def _fmt(v: Any, width: int = 200) -> str:
    """A cell value as short text: floats to 4 significant digits, None as empty."""
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


TEXTS = ("prompt", "response")  # long text columns: wrapped side by side over the width the others leave
TEXT_SHOWN = 600  # characters of a prompt or response shown in a table row (`--id` shows all)


def check_width(width: int | None) -> None:
    """Refuse a terminal width too narrow to show a table (`--width`)."""
    if width is not None and width < 40:
        raise InspectError(f"--width {width}: must be 40 or more")


def _console(width: int | None = None) -> Any:
    """A console that prints strings literally (no markup, no :emoji: codes), `width` columns wide (default:
    the terminal's)."""
    from rich.console import Console

    return Console(markup=False, emoji=False, width=width)


def _text(*parts: Any) -> Any:
    """Literal text from parts: a str, or a (str, style) pair for our own styling."""
    from rich.text import Text

    return Text.assemble(*parts)


def _rows_table(title: str, rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """A rich table of `rows` (dicts) with literal titles, headers and cells."""
    from rich.table import Table

    cols = list(columns or (rows[0] if rows else []))
    texts = [c for c in cols if c in TEXTS]
    t = Table(title=_text(title), expand=bool(texts))  # prompt and response share what the other columns leave
    for col in cols:
        if col in texts or (texts and col == "reason"):  # texts get twice the reason's share of the free width
            t.add_column(_text(col), overflow="fold", ratio=2 if col in texts else 1, min_width=12)
            continue
        width = {"reason": 40, "error": 80}.get(col)
        t.add_column(_text(col), overflow="fold", max_width=width, no_wrap=col in {"id", "kept"})
    for r in rows:
        t.add_row(*(_text(_clip(r.get(c)) if c in texts else _fmt(r.get(c), 200)) for c in cols))
    return t


def _clip(value: Any) -> str:
    """A prompt or response for a table cell: up to TEXT_SHOWN characters, saying how many more there are."""
    text = "" if value is None else str(value)
    return text if len(text) <= TEXT_SHOWN else f"{text[:TEXT_SHOWN]}… (+{len(text) - TEXT_SHOWN:,} chars)"


def _arrow(pair: dict[str, Any] | None, spec: str) -> str:
    """`base -> tuned` formatted by `spec`, or "" when either is missing or not a number."""
    if not isinstance(pair, dict):
        return ""
    base, tuned = pair.get("base"), pair.get("tuned")
    if not isinstance(base, int | float) or not isinstance(tuned, int | float):
        return ""
    return f"{base:{spec}} -> {tuned:{spec}}"


def print_report(report: dict[str, Any], width: int | None = None) -> None:
    """Render a summary (`inspect_run`) as rich tables."""
    from rich.table import Table

    con = _console(width)
    con.print(_text((str(report["recipe"]), "bold"), "  ", report["run_dir"]))
    if "counts" not in report:
        con.print(_text(report.get("status", "")))
        return
    c = report["counts"]
    con.print(_text(f"read {c.get('read')}  kept {c.get('kept')}  dropped {c.get('dropped')}  "
                    f"rule {_rule(report['select'])}"))
    m = _dict(report.get("metrics"))
    base, tuned = _dict(m.get("base")), _dict(m.get("tuned"))
    evals = [f"{label} base {arrow.replace(' -> ', ' -> tuned ')}"
             for label, key, spec in (("accuracy", "accuracy", ".3f"), ("NLL", "nll", ".4f"))
             if (arrow := _arrow({"base": base.get(key), "tuned": tuned.get(key)}, spec))]
    if evals:
        con.print(_text(";  ".join(evals)))
    t = Table(title="scores")
    for col in ("score", "subset", "count", "mean", "median", "min", "max"):
        t.add_column(col)
    for name, parts in report["scores"].items():
        for part, d in _dict(parts).items():
            d = _dict(d)
            t.add_row(_text(str(name)), _text(str(part)), *(_text(_fmt(d.get(k))) for k in ("count", "mean", "median", "min", "max")))
    con.print(t)
    if report.get("drop_reasons"):
        con.print(_rows_table("drop reasons", [{"reason": r, "count": k} for r, k in report["drop_reasons"]]))
    for title in ("kept_examples", "dropped_examples"):
        if report[title]:
            con.print(_rows_table(title.replace("_", " "), report[title]))


def print_query(report: dict[str, Any], width: int | None = None) -> None:
    """Render a `query_report` as one table."""
    con = _console(width)
    filters = "; ".join([*report["where"], *([report["subset"]] if report["subset"] else [])]) or "all"
    order = f"  sorted by {report['sort']}{' desc' if report['descending'] else ''}" if report["sort"] else ""
    con.print(_text((report["source"], "bold"), f"  {filters}{order}: ",
                    f"{report['matched']} of {report['total']} match, showing {report['shown']}"))
    con.print(_rows_table("examples", report["rows"], report["columns"]))


def print_example(report: dict[str, Any], width: int | None = None) -> None:
    """Render an `example_report`: verdict, scores with ranks, prompt and response."""
    con = _console(width)
    verdict = {True: ("kept", "green"), False: ("dropped", "red")}.get(report["kept"], "not selected yet")
    con.print(_text((str(report["id"]), "bold"), "  ", verdict, f"  weight {_fmt(report['weight'])}  ({report['source']})"))
    con.print(_text(f"reason: {_fmt(report['reason'], 10_000)}"))
    con.print(_text(f"rule:   {_rule(report['select'])}"))
    rows = [{"score": c, "value": v, "rank (1 = lowest)": f"{report['ranks'][c]} of {report['of']}"}
            for c, v in report["scores"].items()]
    if rows:
        con.print(_rows_table("scores", rows))
    for field in ("prompt", "response"):
        con.rule(field)
        con.print(_text(str(report[field] or "")))
    for k, v in report["other"].items():
        if v is not None:
            con.print(_text((str(k), "dim"), f": {_fmt(v, 300)}"))


def print_compare(report: dict[str, Any], width: int | None = None) -> None:
    """Render a `compare_report`: the two subsets, their overlap and score shifts."""
    con = _console(width)
    a, b = report["a"], report["b"]
    con.print(_rows_table("subsets", [{"": k, "kind": s["kind"], "name": s["name"], "kept": s["kept"],
                                       "read": s["read"], "path": s["path"]} for k, s in (("A", a), ("B", b))]))
    jac = report["jaccard"]
    con.print(_text(f"overlap {report['overlap']}  union {report['union']}  Jaccard {_fmt(jac) if jac is not None else '-'}"
                    f"  only in A {report['only_a']}  only in B {report['only_b']}"))
    rows = [{"score": c, "mean A": s["a"]["mean"], "mean B": s["b"]["mean"], "shift": s["mean_shift"],
             "median A": s["a"]["median"], "median B": s["b"]["median"], "median shift": s["median_shift"]}
            for c, s in report["shift"].items()]
    if rows:
        con.print(_rows_table("score shift (B - A, kept subsets)", rows))
    for side, cols in report["borrowed_scores"].items():
        con.print(_text((f"{side.upper()} has no {', '.join(cols)}: read from the other side's scores", "dim")))


def print_export(report: dict[str, Any], width: int | None = None) -> None:
    """One line: what was written where."""
    _console(width).print(_text(f"wrote {report['rows']} rows x {len(report['columns'])} columns ({report['format']}) "
                           f"-> {report['path']}"))


def _in_folder(entry: dict[str, Any]) -> str:
    """A listing row's error without its folder's path (the row names the folder already)."""
    return str(entry["error"]).removeprefix(f"{entry['path']}{os.sep}")


def print_listing(report: dict[str, Any], width: int | None = None) -> None:
    """Render `list_report`: a runs table and a data cards table; broken ones show their error."""
    con = _console(width)
    runs = []
    for r in report["runs"]:
        if "error" in r:
            runs.append({"run": r["name"], "status": "error", "error": _in_folder(r)})
            continue
        m = r["metrics"] or {}
        runs.append({"run": r["name"], "recipe": r["recipe"], "started": r["started"], "status": r["status"],
                     "kept/read": f"{r['kept']}/{r['read']}" if r["read"] is not None else "",
                     "accuracy": _arrow(m.get("accuracy"), ".3f"), "nll": _arrow(m.get("nll"), ".4f")})
    run_cols = ["run", "recipe", "started", "status", "kept/read", "accuracy", "nll"]
    con.print(_rows_table(f"runs in {report['output_dir']}", runs,
                          run_cols + (["error"] if any("error" in r for r in runs) else [])))
    cards = [{"card": c["name"], "error": _in_folder(c)} if "error" in c else
             {"card": c["name"], "rule": _rule(c["rules"]), "kept/read": f"{c['kept']}/{c['read']}", "run": c["run_dir"]}
             for c in report["cards"]]
    card_cols = ["card", "rule", "kept/read", "run"]
    con.print(_rows_table(f"data cards in {report['cards_dir']}", cards,
                          card_cols + (["error"] if any("error" in c for c in cards) else [])))
