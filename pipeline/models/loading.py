"""Loading models and tokenizers, and turning examples into token ids the same way everywhere.

Scorers, trainers and evaluation all tokenize through `encode_examples`, so a score, a training
label and an evaluation NLL always refer to the same tokens.
"""

from __future__ import annotations

import os
from typing import Any

import polars as pl
import torch

from pipeline.core.hashing import model_revision
from pipeline.models.assets import resolve_model


def device() -> torch.device:
    """This process's device: its own GPU under torchrun/accelerate (LOCAL_RANK), else the GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def default_dtype() -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def model_key(name: str) -> str:
    """What a result computed with model `name` depends on: its content revision and the device and
    dtype it runs in here (bf16 on a GPU gives other numbers than fp32 on a CPU)."""
    return f"{model_revision(resolve_model(name))}:{device().type}-{str(default_dtype()).removeprefix('torch.')}"


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dtype: torch.dtype | None = None, device_: torch.device | None = None):
    """A causal LM by short name, hub id or folder, in eval mode on the default device."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype or default_dtype())
    return model.to(device_ or device()).eval()


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model sees it: its chat template with a generation prompt when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    return prompt + "\n"


def encode_example(tokenizer: Any, prompt: str, response: str, max_length: int | None = None) -> dict:
    """Token ids of prompt + response + eos, with a completion mask that is 1 on response tokens.

    The prompt is truncated from the left when the whole would exceed `max_length`, so the response
    (what carries loss) is kept whole whenever it fits.
    """
    p_ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        r_ids = r_ids + [tokenizer.eos_token_id]
    if max_length is not None and len(p_ids) + len(r_ids) > max_length:
        keep_prompt = max(1, max_length - len(r_ids))
        p_ids = p_ids[-keep_prompt:]
        r_ids = r_ids[: max_length - len(p_ids)]
    return {"input_ids": p_ids + r_ids, "completion_mask": [0] * len(p_ids) + [1] * len(r_ids)}


def encode_examples(tokenizer: Any, df: pl.DataFrame, max_length: int | None = None) -> list[dict]:
    return [
        encode_example(tokenizer, p, r, max_length)
        for p, r in zip(df.get_column("prompt").to_list(), df.get_column("response").to_list(), strict=True)
    ]
