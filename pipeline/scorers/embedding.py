"""Sentence embeddings of examples (`pipeline.models.embedder`: Sentence-BERT mean pooling).

Used for diversity/clustering selectors (sensitivity), IGF's secondary learner and CLEAR's
free-text consistency.
"""

from __future__ import annotations

import polars as pl

from pipeline.models.assets import DEFAULT_EMBEDDER
from pipeline.models.embedder import embed_texts
from pipeline.scorers import register_scorer
from pipeline.scorers.base import ScoreContext

VERSION = "1"


def example_texts(examples: pl.DataFrame, field: str = "both") -> list[str]:
    """What is embedded: the prompt, the response, or both joined by a blank line."""
    if field in ("prompt", "response"):
        return examples.get_column(field).to_list()
    if field != "both":
        raise ValueError(f"field must be prompt, response or both, got {field!r}")
    return [f"{p}\n\n{r}" for p, r in zip(examples.get_column("prompt").to_list(),
                                          examples.get_column("response").to_list(), strict=True)]


@register_scorer("embedding")
def embedding(examples: pl.DataFrame, ctx: ScoreContext, embedder: str = DEFAULT_EMBEDDER, field: str = "both",
              batch_size: int = 64, max_length: int = 256) -> pl.DataFrame:
    """Columns: id, embedding (list[float32], unit norm)."""
    tok, model = ctx.embedder(embedder)
    vectors = embed_texts(example_texts(examples, field), tok, model, batch_size, max_length)
    return pl.DataFrame(
        {"id": examples.get_column("id"), "embedding": list(vectors)},
        schema={"id": pl.String, "embedding": pl.List(pl.Float32)},
    )


embedding.VERSION = VERSION
embedding.uses_model = False
embedding.key_models = ("embedder",)
