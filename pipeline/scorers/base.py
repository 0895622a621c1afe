"""What every scorer receives: the model to score with, loaded once and shared."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.assets import DEFAULT_MODEL


@dataclass
class ScoreContext:
    """Model name plus lazily loaded model and tokenizer; `max_length` caps tokenized examples."""

    model_name: str = DEFAULT_MODEL
    max_length: int = 512
    max_tokens: int = 8192
    progress: bool = True
    seed: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def tokenizer(self):
        if "tok" not in self._cache:
            from pipeline.modeling import load_tokenizer

            self._cache["tok"] = load_tokenizer(self.model_name)
        return self._cache["tok"]

    def model(self):
        if "model" not in self._cache:
            from pipeline.modeling import load_model

            self._cache["model"] = load_model(self.model_name)
        return self._cache["model"]
