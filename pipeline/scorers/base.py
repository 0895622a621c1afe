"""What every scorer receives: the model to score with, loaded once and shared."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from pipeline.core.config import DEFAULT_MAX_LENGTH, DEFAULT_MODEL


@dataclass
class ScoreContext:
    """Model name plus lazily loaded models and tokenizer; `max_length` caps tokenized examples."""

    model_name: str = DEFAULT_MODEL
    max_length: int = DEFAULT_MAX_LENGTH
    max_tokens: int | None = None  # padded tokens per batch; None = 1024 on CPU, 16384 on GPU
    progress: bool = True
    seed: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def settings(self) -> dict[str, Any]:
        """The settings without loaded models: what travels to a remote worker (Ray)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def tokenizer(self):
        if "tok" not in self._cache:
            from pipeline.models.loading import load_tokenizer

            self._cache["tok"] = load_tokenizer(self.model_name)
        return self._cache["tok"]

    def model(self):
        if "model" not in self._cache:
            from pipeline.models.loading import load_model

            self._cache["model"] = load_model(self.model_name)
        return self._cache["model"]

    def model_for(self, name: str | None):
        """The context's model when `name` is None or its own, else another model (e.g. a reference), loaded once."""
        if name is None or name == self.model_name:
            return self.model()
        key = f"model:{name}"
        if key not in self._cache:
            from pipeline.models.loading import load_model

            self._cache[key] = load_model(name)
        return self._cache[key]

    def embedder(self, name: str):
        """(tokenizer, encoder) of a sentence embedder, loaded once; see `pipeline.scorers.embedding`."""
        key = f"embedder:{name}"
        if key not in self._cache:
            from pipeline.models.embedder import load_embedder

            self._cache[key] = load_embedder(name)
        return self._cache[key]
