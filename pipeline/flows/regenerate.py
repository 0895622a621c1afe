"""`pipeline regenerate CARD`: recompute a data card's subset from the config it records and compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.flows.curate import curate_flow


def regenerate(card_dir: str | Path, out_dir: str | Path, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Re-run a card's curation (load -> score -> select) from the config it recorded and compare the
    subset with the card's `subset.parquet`, row for row (ids, content, weights).

    `cache_dir` defaults to a fresh folder under `out_dir`, so every stage is recomputed rather than
    read back from the stage cache that produced the card.
    """
    card_dir, out_dir = Path(card_dir), Path(out_dir)
    if not (card_dir / "card.json").is_file():
        raise FileNotFoundError(f"{card_dir} is not a data card folder (no card.json)")
    card = json.loads((card_dir / "card.json").read_text())
    config = dict(card["run"]["config"])
    config.update(cache_dir=str(cache_dir or out_dir / "cache"), cards_dir=str(out_dir / "cards"))
    metrics = curate_flow(config=config, run_dir=str(out_dir / "run"))
    old = pl.read_parquet(card_dir / "subset.parquet")
    new = pl.read_parquet(Path(metrics["data_card"]) / "subset.parquet")
    same_ids = old.get_column("id").to_list() == new.get_column("id").to_list()
    identical = same_ids and old.equals(new)
    return {"identical": identical, "rows": {"card": old.height, "regenerated": new.height},
            "same_ids": same_ids, "card": str(card_dir), "regenerated_card": metrics["data_card"]}
