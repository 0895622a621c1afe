"""Study results: variants x seeds at equal compute, compared with a baseline on one held-out test split.

`write_results` turns the per-example evaluation of every tuned model into the files a reader needs:
`results.parquet` (the `pipeline.evaluation.stats.compare` table with per-variant training cost),
`per_example.parquet` (its input, so every number can be recomputed), `runs.parquet` (one row per
cell: steps, tokens, time, noise kept), `results.md` (a paper-ready table with 95% CIs and a verdict per
variant) and `results.png` (differences from the baseline with their CIs). `study_report` reads them
back for `pipeline inspect`; `merge_studies` joins the seeds of one study run in parts (`pipeline merge`).
"""

from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.io import atomic_path, read_json, write_json, write_parquet, write_text
from pipeline.evaluation.stats import METRICS, compare

RESULTS = "results.parquet"
PER_EXAMPLE = "per_example.parquet"
RUNS = "runs.parquet"
MARKDOWN = "results.md"
FIGURE = "results.png"
META_KEY = "pipeline.study"  # parquet key-value metadata holding baseline, level and meta
COST = ("steps", "train_tokens", "train_seconds")
_LABELS = {"nll": "NLL (nats/token)", "bpb": "bits/byte", "accuracy": "accuracy"}


def _cost(runs: pl.DataFrame) -> pl.DataFrame:
    """Per variant: number of runs, mean of every numeric run column (steps, tokens, training seconds, extras) and
    the other columns that hold one value per variant (a selector or loss description)."""
    if "variant" not in runs.columns:
        raise ValueError(f"runs needs a 'variant' column (has {runs.columns})")
    runs = runs.with_columns(*[pl.lit(None, dtype=pl.Float64).alias(c) for c in COST if c not in runs.columns])
    numeric = [c for c, t in runs.schema.items() if c not in ("variant", "seed") and (t.is_numeric() or t == pl.Null)]
    others = [c for c in runs.columns if c not in ("variant", "seed", *numeric)
              and runs.group_by("variant").agg(pl.col(c).n_unique()).get_column(c).max() == 1]
    return runs.group_by("variant", maintain_order=True).agg(
        pl.len().alias("n_runs"), *[pl.col(c).cast(pl.Float64).mean() for c in numeric],
        *[pl.col(c).first() for c in others])


def _verdict(lo: float | None, hi: float | None, lower_is_better: bool) -> str:
    """'better', 'worse' or 'indistinguishable' from the CI of variant minus baseline."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "not measured"
    if hi < 0:
        return "better" if lower_is_better else "worse"
    if lo > 0:
        return "worse" if lower_is_better else "better"
    return "indistinguishable"


def _num(x: float | None, digits: int = 4, sign: bool = False, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * scale:+.{digits}f}" if sign else f"{x * scale:.{digits}f}"


def _ci(row: dict, name: str, digits: int = 4, sign: bool = False, scale: float = 1.0, unit: str = "") -> str:
    """`value [lo, hi]` of column `name` in `row` (`-` when it is missing or NaN)."""
    if _num(row.get(name)) == "-":
        return "-"
    return (f"{_num(row[name], digits, sign, scale)}{unit} "
            f"[{_num(row[f'{name}_lo'], digits, sign, scale)}, {_num(row[f'{name}_hi'], digits, sign, scale)}]")


def _tokens(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def _seconds(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x / 3600:.1f} h" if x >= 3600 else f"{x / 60:.1f} min" if x >= 60 else f"{x:.0f} s"


def _markdown(rows: list[dict], baseline: str, level: float, n_boot: int, meta: dict, oracle: str | None = None) -> str:
    """The results table, a verdict per variant and a header with how the numbers were made."""
    pct = f"{level:.0%}"
    first = rows[0] if rows else {}
    header = {"command": meta.get("command"), "machine": meta.get("machine") or platform.node(),
              "seeds": meta.get("seeds", first.get("n_seeds")), "test size": meta.get("test_size", first.get("n_examples")),
              "generated (accuracy)": first.get("n_generated"),
              "date": meta.get("date") or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    extra = {k: v for k, v in meta.items()
             if k not in ("command", "machine", "seeds", "test_size", "date", "compute_minutes")}
    lines = ["# Study results", "", *[f"- **{k}**: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}"
                                      for k, v in {**header, **extra}.items() if v is not None],
             *_compute_lines(meta.get("compute_minutes")),
             f"- **baseline**: `{baseline}`",
             f"- **intervals**: {pct} percentile bootstrap ({n_boot} replicates) over test examples and seeds; "
             "differences are paired (same resampled examples and seeds for variant and baseline)", "",
             f"| variant | NLL [{pct} CI] | ΔNLL vs baseline | bits/byte | Δbpb | accuracy | Δacc (pts) | steps | train tokens | train time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        is_base = r["variant"] == baseline
        name = f"{r['variant']} (baseline)" if is_base else r["variant"]
        lines.append(" | ".join([
            f"| {name}", _ci(r, "nll"), "0" if is_base else _ci(r, "d_nll", sign=True),
            _ci(r, "bpb"), "0" if is_base else _ci(r, "d_bpb", sign=True),
            _ci(r, "accuracy", 1, scale=100, unit="%"),
            "0" if is_base or r.get("d_accuracy") is None else _ci(r, "d_accuracy", 1, sign=True, scale=100),
            _num(r.get("steps"), 0), _tokens(r.get("train_tokens")), _seconds(r.get("train_seconds")) + " |"]))
    lines += ["", f"## Verdicts at {pct}", "", f"- `{baseline}` is the baseline."]
    for r in rows:
        if r["variant"] == baseline:
            continue
        nll = _verdict(r["d_nll_lo"], r["d_nll_hi"], lower_is_better=True)
        acc = _verdict(r.get("d_accuracy_lo"), r.get("d_accuracy_hi"), lower_is_better=False)
        words = {"better": "beats the baseline", "worse": "is worse than the baseline",
                 "indistinguishable": "is indistinguishable from the baseline", "not measured": "was not measured"}
        lines.append(f"- `{r['variant']}`: on NLL it {words[nll]} (ΔNLL {_ci(r, 'd_nll', sign=True)}); "
                     f"on accuracy it {words[acc]} (Δ {_ci(r, 'd_accuracy', 1, sign=True, scale=100)} pts).")
    lines += _recovered_lines(rows, baseline, oracle, pct)
    lines += _noise_lines(rows)
    lines += ["", f"![differences from the baseline]({FIGURE})", ""]
    return "\n".join(lines)


def _compute_lines(minutes: dict | None) -> list[str]:
    """The study's compute by phase, one line (nothing when the study did not record it)."""
    if not minutes:
        return []
    phases = [f"{k} {v:.1f}" for k, v in minutes.items() if k not in ("total", "unrecorded")]
    missing = minutes.get("unrecorded") or 0
    tail = f"; {missing} stage(s) ran before times were kept and are not counted" if missing else ""
    return [f"- **compute (minutes, each stage once, as timed when it ran)**: {', '.join(phases)}; "
            f"total {minutes.get('total', 0):.1f}{tail}"]


def _recovered_lines(rows: list[dict], baseline: str, oracle: str | None, pct: str) -> list[str]:
    """With an oracle variant: the share of its gain over the baseline each other variant recovers."""
    if oracle is None:
        return []
    best = next((r for r in rows if r["variant"] == oracle), {})
    lines = ["", f"## Share of the oracle's gain recovered ({pct} CI)", "",
             f"(variant - `{baseline}`) / (`{oracle}` - `{baseline}`), per bootstrap replicate: 1 = as good as "
             f"the oracle, 0 = no better than the baseline, below 0 = worse. The oracle's own gain: ΔNLL "
             f"{_ci(best, 'd_nll', sign=True)}, Δaccuracy {_ci(best, 'd_accuracy', 1, sign=True, scale=100)} pts; "
             "`-` where its interval contains 0 (no gain to share).", "",
             "| variant | share of ΔNLL | share of Δaccuracy |", "|---|---|---|"]
    for r in rows:
        if r["variant"] not in (baseline, oracle):
            lines.append(f"| {r['variant']} | {_ci(r, 'recovered_nll', 2)} | {_ci(r, 'recovered_accuracy', 2)} |")
    return lines


def _noise_lines(rows: list[dict]) -> list[str]:
    """With `data.noise`: the corrupted training rows each variant's selection kept, by kind (mean over seeds)."""
    kinds = sorted({k.removeprefix("noise_kept_") for r in rows for k in r if k.startswith("noise_kept_")}
                   - {"all", "corrected"})
    if not kinds:
        return []
    if any(r.get("noise_kept_corrected") is not None for r in rows):
        kinds.append("corrected")  # replaced by a selector's correction: trains on the new response, not counted
    lines = ["", "## Noisy training rows kept (mean over seeds)", "",
             "| variant | all | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 2) + "|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {_num(r.get('noise_kept_all'), 1)} | "
                     + " | ".join(_num(r.get(f"noise_kept_{k}"), 1) for k in kinds) + " |")
    return lines


def _figure(path: Path, rows: list[dict], baseline: str, level: float) -> Path:
    """One panel per metric: variant minus baseline with its CI as an error bar, and a zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 0.5 * len(names) + 1.8), dpi=100, sharey=True)
    for ax, m in zip(axes, METRICS, strict=True):
        scale = 100.0 if m == "accuracy" else 1.0
        ax.axvline(0.0, color="grey", lw=1, ls="--")
        ys = [i for i, r in enumerate(rows) if r.get(f"d_{m}") is not None]
        if ys:
            d = [rows[i][f"d_{m}"] * scale for i in ys]
            err = [[(rows[i][f"d_{m}"] - rows[i][f"d_{m}_lo"]) * scale for i in ys],
                   [(rows[i][f"d_{m}_hi"] - rows[i][f"d_{m}"]) * scale for i in ys]]
            ax.errorbar(d, ys, xerr=err, fmt="o", capsize=3)
        else:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel(f"Δ {_LABELS[m]}{' (pts)' if m == 'accuracy' else ''}")
        ax.set_title(f"{_LABELS[m]}: variant − {baseline}")
    axes[0].invert_yaxis()
    fig.suptitle(f"Difference from baseline with {level:.0%} CI (lower NLL/bpb, higher accuracy is better)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_results(folder: str | Path, per_example: pl.DataFrame, runs: pl.DataFrame, baseline: str,
                  meta: dict[str, Any], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                  oracle: str | None = None) -> dict[str, Any]:
    """Compare the variants with `baseline` and write results.parquet, per_example.parquet, results.md and
    results.png into `folder`; return their paths and the results rows. With `oracle`, the share of its
    gain each variant recovers (`recovered_<metric>`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = compare(per_example, baseline, n_boot=n_boot, seed=seed, level=level, oracle=oracle)
    table = table.join(_cost(runs), on="variant", how="left", maintain_order="left")
    rows = table.to_dicts()
    stored = {"baseline": baseline, "oracle": oracle, "level": level, "n_boot": n_boot, "seed": seed, "meta": meta}
    paths = {"results": folder / RESULTS, "per_example": folder / PER_EXAMPLE,
             "markdown": folder / MARKDOWN, "figure": folder / FIGURE}
    with atomic_path(paths["results"]) as tmp:
        table.write_parquet(tmp, metadata={META_KEY: json.dumps(stored, default=str)})
    write_parquet(paths["per_example"], per_example)
    write_parquet(folder / RUNS, runs)
    write_text(paths["markdown"], _markdown(rows, baseline, level, n_boot, meta, oracle))
    _figure(paths["figure"], rows, baseline, level)
    return {"paths": {k: str(v) for k, v in paths.items()}, "rows": rows}


def study_report(folder: str | Path) -> dict[str, Any]:
    """A study folder's results for `pipeline inspect`: baseline, level, meta (study.json over the stored
    meta) and one dict per variant."""
    folder = Path(folder)
    path = folder / RESULTS
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a study folder, or its results were not written yet")
    stored = json.loads(pl.read_parquet_metadata(path).get(META_KEY) or "{}")
    meta = dict(stored.get("meta") or {})
    if (folder / "study.json").exists():
        study = read_json(folder / "study.json")
        meta.update(study if isinstance(study, dict) else {"study": study})
    return {"folder": str(folder), "baseline": stored.get("baseline"), "oracle": stored.get("oracle"),
            "level": stored.get("level"), "n_boot": stored.get("n_boot"), "seed": stored.get("seed"), "meta": meta,
            "rows": pl.read_parquet(path, glob=False).to_dicts()}


# The meta keys that must agree for parts to be seeds of one study.
SAME = ("recipe", "variants", "test_size", "train_steps", "batch_size", "model")


def merge_studies(out: str | Path, folders: list[str | Path], *, force: bool = False) -> dict[str, Any]:
    """One results folder from studies of one recipe that ran different seeds (other machines or sessions):
    the per-example tables and cells joined, then compared as if one study had run every seed. Refuses parts
    that disagree on baseline, oracle, variants, test examples or compute, and a seed that two parts ran."""
    if len(folders) < 2:
        raise ValueError("merge needs at least two study folders")
    out = Path(out)
    if (out / RESULTS).exists() and not force:
        raise ValueError(f"{out / RESULTS} exists: give another folder or --force")
    parts = [_study_part(Path(f)) for f in folders]
    first = parts[0]
    for part in parts[1:]:
        for key in ("baseline", "oracle", "level", "n_boot", "seed"):
            if part["stored"].get(key) != first["stored"].get(key):
                raise ValueError(f"{part['folder']}: {key} is {part['stored'].get(key)!r}, "
                                 f"{first['folder']} has {first['stored'].get(key)!r}")
        for key in SAME:
            if part["meta"].get(key) != first["meta"].get(key):
                raise ValueError(f"{part['folder']}: {key} is {part['meta'].get(key)!r}, "
                                 f"{first['folder']} has {first['meta'].get(key)!r}: not parts of one study")
        if part["ids"] != first["ids"]:
            raise ValueError(f"{part['folder']}: its test examples differ from {first['folder']}'s "
                             f"({len(part['ids'] ^ first['ids'])} ids in one only): not one test split")
    seen: dict[Any, Path] = {}
    for part in parts:
        for s in part["seeds"]:
            if s in seen:
                raise ValueError(f"seed {s} is in both {seen[s]} and {part['folder']}: merge parts with other seeds")
            seen[s] = part["folder"]
    parts.sort(key=lambda p: min(p["seeds"]))
    minutes: dict[str, float] = {}
    for part in parts:
        for k, v in (part["meta"].get("compute_minutes") or {}).items():
            minutes[k] = round(minutes.get(k, 0) + v, 2)
    meta = {**{k: first["meta"].get(k) for k in SAME}, "seeds": sorted(seen),
            "command": "pipeline merge " + " ".join(str(f) for f in [out, *folders]),
            "machine": "; ".join(dict.fromkeys(str(p["meta"].get("machine")) for p in parts)),
            "merged_from": {str(p["folder"]): p["seeds"] for p in parts}, "compute_minutes": minutes or None}
    stored = first["stored"]
    written = write_results(out, pl.concat([p["per_example"] for p in parts], how="vertical_relaxed"),
                            pl.concat([p["runs"] for p in parts], how="diagonal_relaxed"), stored["baseline"], meta,
                            n_boot=stored["n_boot"], seed=stored["seed"], level=stored["level"],
                            oracle=stored.get("oracle"))
    write_json(out / "study.json", meta)
    return written


def _study_part(folder: Path) -> dict[str, Any]:
    """One part of a merge: stored settings, meta, per-example table, cells and seeds of a study folder."""
    for name in (RESULTS, PER_EXAMPLE):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} not found: not a finished study folder")
    report = study_report(folder)
    if report["meta"].get("partial"):
        raise ValueError(f"{folder}: {report['meta']['partial']}")
    per_example = pl.read_parquet(folder / PER_EXAMPLE, glob=False)
    if (folder / RUNS).exists():
        runs = pl.read_parquet(folder / RUNS, glob=False)
    else:  # written before runs.parquet: the per-variant means, one row per run (means are unchanged)
        results = pl.read_parquet(folder / RESULTS, glob=False)
        keep = [c for c in results.columns if c in (*COST, "kept") or c.startswith("noise_kept_")]
        rows = [i for i, n in enumerate(results.get_column("n_runs").to_list()) for _ in range(int(n))]
        runs = results.select("variant", *keep)[rows]
    stored = {key: report[key] for key in ("baseline", "oracle", "level", "n_boot", "seed")}
    return {"folder": folder, "stored": stored, "meta": report["meta"], "per_example": per_example, "runs": runs,
            "seeds": sorted(per_example.get_column("seed").unique().to_list()),
            "ids": set(per_example.get_column("id").unique().to_list())}
