"""Sentence embeddings of examples (`pipeline.models.embedder`: Sentence-BERT mean pooling).

Used for diversity/clustering selectors (sensitivity), IGF's secondary learner and CLEAR's
free-text consistency.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from pipeline.models.assets import DEFAULT_EMBEDDER
from pipeline.models.embedder import embed_texts
from pipeline.scorers import register_scorer
from pipeline.scorers.base import ScoreContext, Scorer


def example_texts(examples: pl.DataFrame, field: str = "both") -> list[str]:
    """What is embedded: the prompt, the response, or both joined by a blank line."""
    if field in ("prompt", "response"):
        return examples.get_column(field).to_list()
    if field != "both":
        raise ValueError(f"field must be prompt, response or both, got {field!r}")
    return [f"{p}\n\n{r}" for p, r in zip(examples.get_column("prompt").to_list(),
                                          examples.get_column("response").to_list(), strict=True)]


@register_scorer("embedding")
class Embedding(Scorer):
    """Columns: id, embedding (list[float32], unit norm)."""

    version = "1"
    seeded = False  # deterministic given its models
    uses_model = False
    model_params = ("embedder",)

    def __init__(self, embedder: str = DEFAULT_EMBEDDER, field: Literal["both", "prompt", "response"] = "both",
                 batch_size: int = 64,
                 max_length: int = 256):
        self.embedder, self.field, self.batch_size, self.max_length = embedder, field, batch_size, max_length

    def columns(self) -> list[str]:
        return ["embedding"]

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> pl.DataFrame:
        """Sentence embeddings of `examples` from the embedder alone (the context's model is not used)."""
        tok, model = ctx.embedder(self.embedder)
        vectors = embed_texts(example_texts(examples, self.field), tok, model, self.batch_size, self.max_length)
        return pl.DataFrame(
            {"id": examples.get_column("id"), "embedding": list(vectors)},
            schema={"id": pl.String, "embedding": pl.List(pl.Float32)},
        )
