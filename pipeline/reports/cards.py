"""Data cards: what was selected, from what, by which rule, with score distributions and examples.

A card is a folder with `README.md` (Hugging Face dataset-card YAML header whose `configs` point at
the subset's parquet, so `datasets.load_dataset(card_dir)` reads it), `card.json` with the same
facts for scripts, one histogram PNG per score column, and `subset.parquet`.

`subset.parquet` holds what training should see: where CLEAR's auto-correct (arXiv 2403.12776)
replaced a response, the row's `response` is the correction and `old_response` the original (null
for uncorrected rows; the column is present only when a selection stage corrected), so
`train-subset` on the card trains on the corrections and the originals stay auditable.

Loss weights from the data (a chat turn's `loss_weight`, an example's `data_weight`: `pipeline.data.weights`)
stay in the subset's `messages` and `data_weight` columns, so training on the card applies them (times the
subset's `weight`); card.json's `data_weights` and the README summarize those of the kept rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from pipeline.core.io import atomic_path, write_json, write_parquet, write_text
from pipeline.data.weights import weight_summary
from pipeline.selectors.base import CORRECTION, apply_corrections


def histogram_png(path: Path, values: dict[str, list[float]], column: str) -> Path:
    """Overlaid histograms of one score for kept and dropped examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    finite = {k: [x for x in v if x is not None and math.isfinite(x)] for k, v in values.items()}
    allv = [x for v in finite.values() for x in v]
    bins = 30 if allv else 1
    for label, vals in finite.items():
        if vals:
            ax.hist(vals, bins=bins, range=(min(allv), max(allv)), alpha=0.6, label=f"{label} (n={len(vals)})")
    ax.set_xlabel(column)
    ax.set_ylabel("examples")
    ax.set_title(f"{column}: kept vs dropped")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _stats(values: list[float]) -> dict[str, float | None]:
    s = pl.Series(values, dtype=pl.Float64).drop_nulls().drop_nans()
    if s.is_empty():
        return {"count": 0}
    return {
        "count": s.len(), "mean": s.mean(), "std": s.std(), "min": s.min(),
        "p10": s.quantile(0.1), "median": s.median(), "p90": s.quantile(0.9), "max": s.max(),
    }


def write_card(
    card_dir: str | Path,
    *,
    name: str,
    examples: pl.DataFrame,
    scores: pl.DataFrame,
    selection: pl.DataFrame,
    source: dict[str, Any],
    scorers: list[dict[str, Any]],
    rules: list[dict[str, Any]],
    stages: list[dict[str, Any]],
    score_columns: list[str],
    run: dict[str, Any] | None = None,
    n_examples: int = 3,
    quarantine: pl.DataFrame | None = None,
) -> Path:
    """Write the card folder for the subset of `examples` kept by `selection`; return its path.

    The folder holds `subset.parquet` (kept rows with their weight and reason), `dropped.parquet`
    (every dropped row with its reason) and, when records were rejected on reading, their
    `quarantine.parquet`: kept + dropped + quarantined = records read, also per domain.
    Corrections in `selection` (`new_response`) replace the kept rows' responses in the subset, the
    replaced ones kept in `old_response`; the README and card.json count them.
    """
    card_dir = Path(card_dir)
    card_dir.mkdir(parents=True, exist_ok=True)
    corrects = CORRECTION in selection.columns
    examples = apply_corrections(examples, selection, keep_old=True) if corrects else examples
    sel = selection.select("id", *[c for c in selection.columns
                                   if c not in examples.columns and c not in ("id", CORRECTION)])
    table = (
        examples.join(sel, on="id", how="left", maintain_order="left")
        .join(scores, on="id", how="left", maintain_order="left")
    )
    kept = table.filter(pl.col("kept"))
    dropped = table.filter(~pl.col("kept"))
    subset = kept.select([*examples.columns, "weight", "reason"])
    n_corrected = kept.filter(pl.col("old_response").is_not_null()).height if corrects else 0
    write_parquet(card_dir / "subset.parquet", subset)
    write_parquet(card_dir / "dropped.parquet", dropped.select([*examples.columns, "reason"]))
    n_quarantined = 0 if quarantine is None else quarantine.height
    if n_quarantined:
        write_parquet(card_dir / "quarantine.parquet", quarantine)
    domains = (table.group_by("domain").agg(pl.len().alias("read"), pl.col("kept").sum().alias("kept"))
               .with_columns((pl.col("read") - pl.col("kept")).alias("dropped")).sort("domain")
               if "domain" in table.columns else pl.DataFrame())

    score_stats, images = {}, []
    for col in score_columns:
        score_stats[col] = {"kept": _stats(kept.get_column(col).to_list()), "dropped": _stats(dropped.get_column(col).to_list())}
        img = f"hist_{col}.png"
        histogram_png(card_dir / img, {"kept": kept.get_column(col).to_list(), "dropped": dropped.get_column(col).to_list()}, col)
        images.append(img)

    main = score_columns[0] if score_columns else None

    def pick(df: pl.DataFrame) -> list[dict]:
        """Typical (closest to the median score) and atypical (extremes) examples."""
        if df.is_empty():
            return []
        if main is None:
            return df.head(n_examples).select("id", "prompt", "response", "reason").to_dicts()
        med = df.get_column(main).median()
        typical = df.sort((pl.col(main) - med).abs()).head(n_examples)
        atypical = pl.concat([df.sort(main).head(1), df.sort(main, descending=True).head(1)]).unique("id", maintain_order=True)
        return [
            {"kind": kind, "id": r["id"], "score": r[main], "reason": r["reason"],
             "prompt": r["prompt"][:300], "response": r["response"][:300]}
            for kind, part in (("typical", typical), ("atypical", atypical))
            for r in part.iter_rows(named=True)
        ]

    facts = {
        "name": name,
        "source": source,
        "scorers": scorers,
        "rules": rules,
        "counts": {"read": table.height + n_quarantined, "kept": kept.height, "dropped": dropped.height,
                   "quarantined": n_quarantined},
        "domains": {r["domain"]: {k: r[k] for k in ("read", "kept", "dropped")} for r in domains.iter_rows(named=True)},
        "corrections": {"count": n_corrected, "original_column": "old_response" if corrects else None},
        "data_weights": weight_summary(subset),
        "stages": stages,
        "score_stats": score_stats,
        "histograms": images,
        "examples": {"kept": pick(kept), "dropped": pick(dropped)},
        "subset": {"file": "subset.parquet", "rows": kept.height},
        "run": run or {},
    }
    write_json(card_dir / "card.json", facts)
    write_text(card_dir / "README.md", _markdown(facts))
    return card_dir


def _weights_lines(w: dict) -> list[str]:
    """The README's note that loss weights from the data were used, with their summary."""
    lines = ["## Loss weights from the data", "",
             "Training multiplies each example's `data_weight` into its selection `weight` and each chat turn's "
             "`loss_weight` into its tokens' weight (0 masks the turn).", ""]
    if "examples" in w:
        e = w["examples"]
        lines.append(f"- `weight`: {e['weighted']} of {e['of']} kept examples, "
                     f"min {e['min']:.4g}, mean {e['mean']:.4g}, max {e['max']:.4g}")
    if "turns" in w:
        t = w["turns"]
        lines.append(f"- `loss_weight`: {t['weighted']} of {t['of']} assistant turns ({t['zero']} masked with 0), "
                     f"min {t['min']:.4g}, mean {t['mean']:.4g}, max {t['max']:.4g}")
    return [*lines, ""]


def _markdown(f: dict) -> str:
    header = {
        "pretty_name": f["name"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f["subset"]["file"]}]}],
        "tags": ["sft-pipeline", "data-selection"],
    }
    c = f["counts"]
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
        f"# Data card: {f['name']}", "",
        f"Kept **{c['kept']}** of **{c['read']}** records read ({c['dropped']} dropped by the rules, "
        f"{c.get('quarantined', 0)} quarantined on reading). Every kept row's reason is in `subset.parquet`, "
        "every dropped row's in `dropped.parquet`"
        + (", every quarantined record's in `quarantine.parquet`." if c.get("quarantined") else "."), "",
        *(["## Domains", "", "| domain | read | kept | dropped |", "|---|---|---|---|",
           *[f"| {d} | {v['read']} | {v['kept']} | {v['dropped']} |" for d, v in f.get("domains", {}).items()], ""]
          if len(f.get("domains", {})) > 1 else []),
        *(_weights_lines(f["data_weights"]) if f.get("data_weights") else []),
        *([f"**{f['corrections']['count']}** kept examples carry a corrected response (CLEAR auto-correct): "
           "`response` is the correction, `old_response` the original.", ""]
          if f.get("corrections", {}).get("count") else []),
        "## Source", "", "```json", json.dumps(f["source"], indent=2, default=str), "```", "",
        "## Scorers", "",
        *[f"- `{s.get('name')}` with model `{s.get('model')}`, params `{json.dumps(s.get('params', {}), default=str)}`" for s in f["scorers"]],
        "", "## Selection rules", "",
        *[f"- `{r.get('rule')}`: `{json.dumps({k: v for k, v in r.items() if k != 'rule'}, default=str)}`" for r in f["rules"]],
        "", "## Counts per stage", "", "| stage | read | kept | dropped |", "|---|---|---|---|",
        *[f"| {s['stage']} | {s['read']} | {s['kept']} | {s['dropped']} |" for s in f["stages"]],
        "", "## Score distributions", "",
    ]
    for col, st in f["score_stats"].items():
        lines += [f"### {col}", "", "| subset | count | mean | median | p10 | p90 |", "|---|---|---|---|---|---|"]
        for part in ("kept", "dropped"):
            s = st[part]
            if s.get("count"):
                lines.append(f"| {part} | {s['count']} | {s['mean']:.4g} | {s['median']:.4g} | {s['p10']:.4g} | {s['p90']:.4g} |")
            else:
                lines.append(f"| {part} | 0 | | | | |")
        lines += ["", f"![{col}](hist_{col}.png)", ""]
    for part in ("kept", "dropped"):
        lines += [f"## Examples {part}", ""]
        for ex in f["examples"][part]:
            score = ex.get("score")
            score_txt = f"{score:.4g}" if isinstance(score, float) else str(score)
            lines += [f"- **{ex.get('kind', '')}** `{ex['id']}` score {score_txt}: {ex['reason']}",
                      f"  - prompt: {ex['prompt'][:200]!r}", f"  - response: {ex['response'][:200]!r}"]
        lines.append("")
    if f["run"]:
        lines += ["## Run", "", "```json", json.dumps(f["run"], indent=2, default=str), "```", ""]
    return "\n".join(lines)
