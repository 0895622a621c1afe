"""Loading models and tokenizers, and turning examples into token ids the same way everywhere.

Scorers, trainers and evaluation all tokenize through `encode_examples`, so a score, a training
label and an evaluation NLL always refer to the same tokens. A row with a `messages` chat is
rendered whole by the model's chat template and its completion mask covers every assistant turn;
a row without one is its `prompt` and `response` (see `encode_example` and `encode_chat`). A chat turn's
`loss_weight` (`pipeline.data.weights`) is applied here, once for every user: 0 takes the turn out of the
mask, another value comes back per token as the encoding's `loss_weight` (training's `token_weight`).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import polars as pl
import torch

from pipeline.core.hashing import model_revision
from pipeline.data.weights import TURN_WEIGHT, turn_weight
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


def attention(dtype: torch.dtype | None = None) -> str | None:
    """The attention kernel for this hardware: FlashAttention-2 on a GPU in half precision when the
    `flash_attn` package is installed, else None = transformers' default (PyTorch SDPA where the
    architecture supports it: flash/mem-efficient kernels on GPU, the flash kernel on CPU; else eager)."""
    import importlib.util

    half = (dtype or default_dtype()) in (torch.bfloat16, torch.float16)
    if torch.cuda.is_available() and half and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


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

    dtype = dtype or default_dtype()
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype, attn_implementation=attention(dtype))
    return model.to(device_ or device()).eval()


def prompt_text(tokenizer: Any, prompt: str | list[dict]) -> str:
    """The prompt as the model sees it: its chat template with a generation prompt when it has one.

    `prompt` is one user turn's text, or a whole conversation (a list of role/content turns, as
    `generation_prompts` gives for chat rows) that the model is to continue as the assistant.
    """
    if isinstance(prompt, list):
        return render_chat(tokenizer, prompt, add_generation_prompt=True)
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


# Jinja `{% generation %}` markers (any whitespace-trim variant), as TRL's `has_generation_markers` finds them.
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _column(df: pl.DataFrame, name: str) -> list:
    return df.get_column(name).to_list() if name in df.columns else [None] * df.height


def row_chat(messages: str | None, response: str | None = None) -> list[dict] | None:
    """The conversation of a row's `messages` (strict JSON text), or None for a prompt/response row.

    The row's `response` is its last assistant turn: when it differs from the stored turn (a CLEAR
    correction replaced it), the conversation ends with the row's `response`.
    """
    if messages is None:
        return None
    chat = json.loads(messages) if isinstance(messages, str) else messages
    if chat is None:
        return None
    if not isinstance(chat, list) or not chat or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in chat):
        raise ValueError("messages must be a non-empty list of turns with a string role and content")
    chat = [dict(m) for m in chat]
    last = last_assistant(chat)
    if last is not None and response is not None and chat[last]["content"] != response:
        chat[last]["content"] = response
    return chat


def last_assistant(chat: list[dict]) -> int | None:
    """Index of a conversation's last assistant turn (None without one)."""
    return max((i for i, m in enumerate(chat) if m["role"] == "assistant"), default=None)


def chat_column(df: pl.DataFrame) -> list[list[dict] | None]:
    """Each row's conversation (`row_chat`), None where the row has none (or the table no `messages`)."""
    if "messages" not in df.columns:
        return [None] * df.height
    return [row_chat(m, r) for m, r in zip(_column(df, "messages"), _column(df, "response"), strict=True)]


def generation_prompts(df: pl.DataFrame) -> list[str | list[dict]]:
    """What the model continues when asked to answer each row (for `generate` / `prompt_text`): the
    `prompt` text, or for a chat row every turn before its last assistant turn."""
    out: list[str | list[dict]] = []
    for prompt, chat in zip(_column(df, "prompt"), chat_column(df), strict=True):
        if chat is None:
            out.append(prompt)
        else:
            last = last_assistant(chat)
            out.append(chat if last is None else chat[:last])
    return out


def response_texts(df: pl.DataFrame) -> list[list[str]]:
    """Per row the texts that carry loss: `[response]`, or the content of every assistant turn of a chat
    (but those with `loss_weight` 0)."""
    return [[response] if chat is None else [m["content"] for i, m in enumerate(chat)
                                             if m["role"] == "assistant" and turn_weight(m, i) > 0]
            for response, chat in zip(_column(df, "response"), chat_column(df), strict=True)]


def render_chat(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """A conversation as text: the tokenizer's chat template, or without one `role: content` lines
    where each assistant turn ends with the eos token (and `assistant: ` is the generation prompt)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    eos = tokenizer.eos_token or ""
    text = "".join(f"{m['role']}: {m['content']}{eos if m['role'] == 'assistant' else ''}\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


def chat_segments(tokenizer: Any, messages: list[dict]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_assistant) pieces, up to the end of its last assistant turn.

    Assistant turn i spans from the end of `render(messages[:i], add_generation_prompt=True)` (its
    role header is context) to the end of `render(messages[:i + 1])` less trailing whitespace, so it
    holds the reply and the end-of-turn token(s) (`<|im_end|>`), not the newline after them. This
    needs a prefix-stable template: each such rendering must be a prefix of the next and of the
    whole; a template that rewrites earlier turns (e.g. drops their reasoning) raises ValueError.
    """
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ValueError("the chat has no assistant turn: no token would carry loss")
    if turns[0] == 0:
        raise ValueError("the chat starts with an assistant turn: nothing comes before it to condition on")
    full = render_chat(tokenizer, messages[: turns[-1] + 1])
    spans: list[tuple[int, int]] = []
    pos = 0
    for i in turns:
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render_chat(tokenizer, messages[: i + 1])
        if not (upto.startswith(before) and full.startswith(upto)) or len(before) < pos:
            raise ValueError(
                f"the chat template is not prefix-stable at turn {i}: rendering the first {i} turns with a "
                f"generation prompt and then the first {i + 1} turns are not prefixes of one another and of the "
                "whole conversation (it renders earlier turns differently once later ones follow), so the "
                "assistant tokens cannot be located; use a template with {% generation %} markers")
        end = len(before) + len(upto[len(before):].rstrip())
        spans.append((len(before), end))
        pos = end
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for start, end in spans:
        pieces += [(full[pos:start], False), (full[start:end], True)]
        pos = end
    return [(text, assistant) for text, assistant in pieces if text]


def _truncate(ids: list[int], mask: list[int], max_length: int | None, weights: list[float] | None = None) -> dict:
    """Cut a sequence that ends on its last assistant token to `max_length` from the left.

    As `encode_example` does for prompt + response: the last assistant turn is kept whole when it fits
    with at least one token before it (earlier tokens are dropped first), else that one token and the
    head of the turn are kept, so a row keeps response tokens whenever max_length >= 2. Per-token
    `weights` (the turns' loss weights) are cut with them and returned as `loss_weight`.
    """
    if max_length is not None and len(ids) > max_length:
        start = len(mask)
        while start > 0 and mask[start - 1]:
            start -= 1  # start of the last run of assistant tokens
        cut = len(ids) - max_length if len(ids) - start <= max_length - 1 else max(start - 1, 0)
        ids, mask = ids[cut: cut + max_length], mask[cut: cut + max_length]
        weights = None if weights is None else weights[cut: cut + max_length]
    return {"input_ids": ids, "completion_mask": mask, **({TURN_WEIGHT: weights} if weights is not None else {})}


def _turn_runs(mask: list[int]) -> list[int]:
    """For each token, the index of the run of assistant tokens it is in (-1 outside the mask)."""
    out, run = [], -1
    for i, m in enumerate(mask):
        run += bool(m and (i == 0 or not mask[i - 1]))
        out.append(run if m else -1)
    return out


def encode_chat(tokenizer: Any, messages: list[dict], max_length: int | None = None) -> dict:
    """Token ids of a whole conversation with a completion mask that is 1 on every assistant turn.

    A template with `{% generation %}` markers gives the mask itself (transformers'
    `return_assistant_tokens_mask`, what TRL's `assistant_only_loss` uses); any other template (or
    none: `render_chat`) is cut by `chat_segments` and each piece tokenized on its own, as
    `encode_example` tokenizes prompt and response. Either way the mask covers each reply and its
    end-of-turn token(s), never system or user turns or role headers; tokens after the last assistant
    turn carry no loss and are dropped, and `_truncate` cuts from the left. A single user turn and
    reply give exactly `encode_example`'s ids and mask when the end-of-turn token is the eos token.

    Turn weights: an assistant turn with `loss_weight` 0 leaves the mask (as if it were context); when a
    kept turn's weight is not 1 the result also has `loss_weight`, each token's turn weight (1 off the mask).
    """
    weights = [turn_weight(m, i) for i, m in enumerate(messages) if m["role"] == "assistant"]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and GENERATION_MARKER.search(template):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), [int(m) for m in out["assistant_masks"]]
        turn = _turn_runs(mask)
    else:
        ids, mask, turn, k = [], [], [], -1
        for text, assistant in chat_segments(tokenizer, messages):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            k += assistant
            ids += piece
            mask += [int(assistant)] * len(piece)
            turn += [k if assistant else -1] * len(piece)
    if 1 not in mask:
        raise ValueError("no assistant tokens: the chat template marks none of the assistant turns")
    if any(w != 1.0 for w in weights):
        if max(turn) + 1 != len(weights):
            raise ValueError(f"{TURN_WEIGHT}: the template's assistant tokens fall into {max(turn) + 1} runs for "
                             f"{len(weights)} assistant turns, so each turn's weight cannot be placed")
        token_weights = [weights[k] if k >= 0 else 1.0 for k in turn]
        mask = [int(m and w > 0) for m, w in zip(mask, token_weights, strict=True)]
        if 1 not in mask:
            raise ValueError(f"zero_weight: every assistant turn has {TURN_WEIGHT} 0, nothing to train")
    last = len(mask) - mask[::-1].index(1)
    kept = any(w not in (0.0, 1.0) for w in weights)  # 0 is the mask's; only other values need a column
    return _truncate(ids[:last], mask[:last], max_length, token_weights[:last] if kept else None)


def encode_examples(tokenizer: Any, df: pl.DataFrame, max_length: int | None = None) -> list[dict]:
    """`encode_chat` for rows with a `messages` chat, `encode_example` (prompt, response) for the others."""
    out = []
    rows = zip(_column(df, "prompt"), _column(df, "response"), _column(df, "messages"), _column(df, "id"), strict=True)
    for i, (prompt, response, messages, ex_id) in enumerate(rows):
        try:
            chat = row_chat(messages, response)
            out.append(encode_example(tokenizer, prompt, response, max_length) if chat is None
                       else encode_chat(tokenizer, chat, max_length))
        except ValueError as e:
            if messages is None:
                raise
            raise ValueError(f"example {ex_id or i}: {e}") from e
    return out
