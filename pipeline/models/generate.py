"""Greedy generation: what evaluation and CLEAR's corrections use.

Plain full-attention decoders (Llama, Qwen, Mistral, SmolLM, ...) run `_greedy_slots`, a decode
loop written for throughput (numbers in benchmarks/RESULTS.md, "Generation"):

- `batch_size` rows decode together and a row that finishes is refilled at once with the next
  prompt (longest prompts first), so the batch stays full instead of running its tail with a few
  live rows; once no prompt is left, finished rows are dropped from the batch.
- Keys and values live in preallocated buffers written in place (`_SlotLayer`): transformers'
  dynamic cache concatenates, copying the whole cache at every step.
- The token prefix all prompts share (the chat template's system turn) is run once, and its keys
  and values are copied to every row.
- Identical prompts filled together (CLEAR's k samples of one question) are prefilled once and
  their keys and values copied to each row.
- Prompts are prefilled in forwards of similar length (`PREFILL_TOKENS_CPU` padded tokens on CPU),
  not padded to the batch's longest, and only the last position goes through the LM head.
- On CPU the thread count is the process's own unless asked otherwise: `threads="auto"` measures 1
  thread against all as it goes (`cpu_threads`), which pays when other processes share the cores
  (each of a step's ~700 small parallel regions then waits for a descheduled thread) but misjudges
  a quiet 2-core machine, so it is opt-in.

Every row sees what `transformers`' `generate` gives it with left padding: its real tokens at
positions 0.., padding masked out, argmax of the float logits. Other models (sliding-window or
hybrid caches, generation configs that process logits) fall back to `_hf_generate`, the former
implementation.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections import deque

import numpy as np
import torch

from pipeline.models.loading import prompt_text

# Generation-config fields whose non-neutral values make `transformers` change logits or stop
# differently from plain argmax until EOS: such models use `_hf_generate`.
_NEUTRAL = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
            "encoder_no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": 0, "guidance_scale": 1.0}
_UNSET = ("bad_words_ids", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens",
          "sequence_bias", "exponential_decay_length_penalty", "watermarking_config", "stop_strings", "max_time",
          "token_healing", "remove_invalid_values")
PROBE_EVERY = 32  # decode steps or prefill forwards between thread-count probes on CPU (a probe costs ~1 step)
PREFILL_TOKENS_CPU = 512  # padded prompt tokens per prefill forward on CPU (1 thread: 5.4 s vs 5.8 at 1024, 12.9 unchunked)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 160, batch_size: int = 16,
             progress: bool = True, threads: int | str | None = None) -> list[str]:
    """Greedy completions for `prompts`, `batch_size` rows at a time.

    `threads`: torch threads while generating on CPU: None keeps the process's count, a number fixes
    it, "auto" lets `cpu_threads` measure 1 against the process's count as it goes and use the faster
    (the process's count is restored afterwards).
    """
    if not prompts:
        return []
    return [tokenizer.decode(t, skip_special_tokens=True)
            for t in generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size, progress, threads)]


@torch.inference_mode()
def generate_ids(model, tokenizer, prompts: list[str], max_new_tokens: int = 160, batch_size: int = 16,
                 progress: bool = True, threads: int | str | None = None) -> list[list[int]]:
    """`generate`'s new token ids per prompt, up to and including the first EOS."""
    if not prompts:
        return []
    texts = [prompt_text(tokenizer, p) for p in prompts]
    reason = slots_unsupported_reason(model)
    if reason is not None:
        if progress:  # say so: this path is ~1.2-1.6x slower on CPU (benchmarks/RESULTS.md, "Generation")
            print(f"[generate] transformers' generate, not the slot decoder: {reason}", file=sys.stderr, flush=True)
        with cpu_threads(model, threads):
            return _hf_generate(model, tokenizer, texts, max_new_tokens, batch_size, progress)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return _greedy_slots(model, ids, max_new_tokens, batch_size, eos=tokenizer.eos_token_id, pad=pad,
                         threads=threads, progress=progress)


@torch.inference_mode()
def sample_ids(model, tokenizer, texts: list[str], seeds: list[int], temperature: float, max_new_tokens: int,
               batch_size: int, max_length: int | None = None, progress: bool | str = False) -> list[list[int]] | None:
    """One sampled continuation per prompt text (already templated; left-truncated to `max_length` tokens),
    from softmax(logits / temperature), each from its own seed, with the slot decoder (rows leave the batch
    when they end, freed rows take the next prompt); None when the model needs `transformers`' generate.
    `progress`: a count of finished texts on stderr, under that label when it is a string."""
    if not texts:
        return []
    if slots_unsupported_reason(model) is not None:
        return None
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max_length:
        ids = [x[-max_length:] for x in ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return _greedy_slots(model, ids, max_new_tokens, batch_size, eos=tokenizer.eos_token_id, pad=pad,
                         temperature=temperature, seeds=seeds, progress=progress)


def cache_kwarg(model) -> str | None:
    """The name `model.forward` takes its KV cache under: `cache` since transformers 5.24, before
    that `past_key_values` (still accepted, with a deprecation warning, until 5.40); None if neither."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def slots_supported(model) -> bool:
    """True when `_greedy_slots` gives what `transformers`' greedy `generate` gives for `model`."""
    return slots_unsupported_reason(model) is None


def slots_unsupported_reason(model) -> str | None:
    """Why `model` needs `transformers`' generate rather than the slot decoder, or None: the decoder
    needs a decoder-only model whose cache is full attention only and whose generation config adds
    no logits processing or extra stopping."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if getattr(model.config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    params = set(inspect.signature(model.forward).parameters)
    missing = sorted({"logits_to_keep", "position_ids", "attention_mask"} - params)
    if cache_kwarg(model) is None:
        missing.append("cache (or past_key_values)")
    if missing:
        return f"{type(model).__name__}.forward takes no {', '.join(missing)}"
    layers = DynamicCache(config=model.config).layers
    other = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    if not layers or other:
        return f"cache layers other than full attention ({', '.join(other) or 'none'})"
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return None
    changed = [k for k, v in _NEUTRAL.items() if getattr(gc, k, None) not in (None, v)]
    changed += [k for k in _UNSET if getattr(gc, k, None)]
    return f"generation config sets {', '.join(changed)}" if changed else None


def _hf_generate(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int,
                 progress: bool) -> list[list[int]]:
    """`transformers`' `generate` on left-padded batches, longest prompts first (the former path).

    Returns each prompt's new token ids up to and including the first EOS (the padding after it dropped).
    """
    dev = next(model.parameters()).device
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out: list[list[int]] = [[] for _ in texts]
    eos = tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
            )
            for row, i in enumerate(idx):
                new = gen[row, enc["input_ids"].shape[1] :].tolist()
                out[i] = new[: new.index(eos) + 1] if eos in new else new
            if progress:
                print(f"\r[generate] {min(start + batch_size, len(order))}/{len(order)} prompts", end="",
                      file=sys.stderr, flush=True)
    finally:
        tokenizer.padding_side = side
    if progress and texts:
        print(file=sys.stderr, flush=True)
    return out


# --- threads ---------------------------------------------------------------------------------


def _faster_thread_count(hidden: int, rows: int, many: int, reps: int = 6, margin: float = 0.7) -> int:
    """1 or `many`, whichever runs a decode-sized matmul ([rows, hidden] x [hidden, 4 hidden]) faster now.

    On an idle machine `many` threads win; when other processes hold the cores, each parallel region
    waits for a descheduled thread and one thread wins by 4-50x (benchmarks/RESULTS.md). A wrong
    `many` costs far more than a wrong 1, so `many` must beat `margin` x the single-thread time. Its
    run (pool wake-up included) stops once it cannot, so a probe costs about two single-thread totals.
    """
    x, w = torch.ones(rows, hidden), torch.ones(4 * hidden, hidden)

    def timed(threads: int, budget: float) -> float:
        torch.set_num_threads(threads)
        total = 0.0
        for _ in range(reps):
            start = time.perf_counter()
            x @ w.T
            total += time.perf_counter() - start
            if total > budget:
                break
        return total

    timed(1, 0.0)  # one warm-up matmul
    single = timed(1, float("inf"))
    return many if timed(many, margin * single) < margin * single else 1


class cpu_threads:
    """Context: torch's thread count while running `model` on CPU, restored on exit (no-op on GPU).

    A number fixes it, None keeps the process's. "auto" chooses between 1 and the process's count: on entry with a probe
    (`_faster_thread_count` on `rows` rows), or, with `probe_on_enter=False`, starting at 1 thread
    and probing from a loop that reports each unit of work (`observe`) and asks when to re-probe
    (`tick`): a probe's choice of several threads is undone as soon as the work it runs gets slower
    per unit than at 1 thread (the probe misjudged a busy machine), and re-probing then backs off.
    """

    def __init__(self, model, threads: int | str | None = None, rows: int = 16, probe_on_enter: bool = True):
        if not (threads is None or threads == "auto" or (isinstance(threads, int) and threads > 0)):
            raise ValueError(f"threads: a positive number, None or 'auto', got {threads!r}")
        self.cpu = next(model.parameters()).device.type == "cpu"
        self.fixed = threads if isinstance(threads, int) else None
        self.hidden = int(getattr(model.config.get_text_config(), "hidden_size", 1024))
        self.rows = rows
        self.probe_on_enter = probe_on_enter
        self.saved = torch.get_num_threads()
        self.auto = self.cpu and threads == "auto" and self.saved > 1
        self.single: dict[str, float] = {}  # seconds per unit of each kind of work at 1 thread
        self.interval, self.countdown = PROBE_EVERY, 0
        self.chosen: list[int] = []

    def __enter__(self):
        if self.cpu and self.fixed is not None:
            torch.set_num_threads(self.fixed)
        elif self.auto:
            if self.probe_on_enter:
                self.choose()
            else:
                torch.set_num_threads(1)
        return self

    def choose(self, rows: int | None = None) -> None:
        if self.auto:
            torch.set_num_threads(_faster_thread_count(self.hidden, max(rows or self.rows, 1), self.saved))
            self.chosen.append(torch.get_num_threads())

    def tick(self, rows: int, kinds: tuple[str, ...] = ("prefill", "decode")) -> None:
        """Before a unit of work: re-probe every `interval` units once each kind has a 1-thread time."""
        if not self.auto or not all(k in self.single for k in kinds):
            return
        self.countdown -= 1
        if self.countdown <= 0:
            self.choose(rows)
            self.countdown = self.interval

    def observe(self, kind: str, seconds: float, units: float = 1.0) -> None:
        """After a unit of work: keep the 1-thread reference, undo a slower multi-thread choice."""
        if not self.auto:
            return
        per = seconds / max(units, 1e-9)
        if torch.get_num_threads() == 1:
            self.single[kind] = per
        elif kind in self.single and per > 1.2 * self.single[kind]:
            torch.set_num_threads(1)
            self.chosen.append(1)
            self.interval *= 2
            self.countdown = self.interval

    def __exit__(self, *exc) -> None:
        if self.cpu:
            torch.set_num_threads(self.saved)


# --- the slot decoder ------------------------------------------------------------------------


def _dynamic_layer():
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class _SlotLayer(_dynamic_layer()):
    """One attention layer's keys and values in [rows, heads, capacity, dim] buffers.

    Columns are shared by all rows (left padding): `update` writes the step's column in place and
    attention reads the view of columns [start, end). Buffers start zeroed and only ever receive
    finite values, so masked columns contribute exactly nothing.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.buf_k, self.buf_v = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self.start = self.end = 0
        self._view()

    def _view(self) -> None:
        self.keys = self.buf_k[:, :, self.start : self.end]
        self.values = self.buf_v[:, :, self.start : self.end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        self.buf_k[:, :, self.end : self.end + n] = key_states
        self.buf_v[:, :, self.end : self.end + n] = value_states
        self.end += n
        self._view()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.end - self.start

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.buf_k, self.buf_v = self.buf_k[indices], self.buf_v[indices]
        self._view()


class _SlotCache:
    """The decoder's cache: `_SlotLayer`s plus the [rows, capacity] attention mask over its columns."""

    def __init__(self, model, template, rows: int, capacity: int):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=model.config)
        self.cache.layers = [
            _SlotLayer(layer.keys.new_zeros(rows, layer.keys.shape[1], capacity, layer.keys.shape[3]),
                       layer.values.new_zeros(rows, layer.values.shape[1], capacity, layer.values.shape[3]))
            for layer in template.layers
        ]
        self.mask = torch.zeros(rows, capacity, dtype=torch.long, device=template.layers[0].keys.device)
        self.start = self.end = 0

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    def set_window(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        for layer in self.cache.layers:
            layer.start, layer.end = start, end
            layer._view()

    def place(self, rows: list[int], group, width: int) -> None:
        """Copy a prefilled group's keys/values (all `width` columns) into `rows`, ending at column `end`."""
        idx = torch.tensor(rows, device=self.mask.device)
        lo = self.end - width
        for dst, src in zip(self.cache.layers, group.layers, strict=True):
            dst.buf_k[idx, :, lo : self.end] = src.keys
            dst.buf_v[idx, :, lo : self.end] = src.values

    def keep_rows(self, rows: list[int]) -> None:
        idx = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask = self.mask[idx]

    def shift(self, keep_from: int, capacity: int) -> None:
        """Move columns [keep_from, end) to the front of new buffers of `capacity` columns."""
        n = self.end - keep_from
        for layer in self.cache.layers:
            for name in ("buf_k", "buf_v"):
                old = getattr(layer, name)
                new = old.new_zeros(old.shape[0], old.shape[1], capacity, old.shape[3])
                new[:, :, :n] = old[:, :, keep_from : self.end]
                setattr(layer, name, new)
        mask = self.mask.new_zeros(self.mask.shape[0], capacity)
        mask[:, :n] = self.mask[:, keep_from : self.end]
        self.mask = mask
        self.set_window(max(self.start - keep_from, 0), n)


def _common_prefix(seqs: list[list[int]]) -> int:
    """Tokens all sequences share at the start, leaving at least one token of each to prefill."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _prefill(model, suffixes: list[list[int]], prefix, n_prefix: int, pad: int, dev: torch.device, cache_name: str):
    """Run left-padded `suffixes` after the shared prefix's cache; (last-position logits, cache, width)."""
    from transformers import DynamicCache

    rows, width = len(suffixes), max(len(s) for s in suffixes)
    ids = torch.full((rows, width), pad, dtype=torch.long)
    mask = torch.zeros((rows, n_prefix + width), dtype=torch.long)
    mask[:, :n_prefix] = 1
    for r, s in enumerate(suffixes):
        ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[r, n_prefix + width - len(s) :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, n_prefix:]
    cache = DynamicCache(config=model.config)
    if prefix is not None:
        for i, layer in enumerate(prefix.layers):
            cache.update(layer.keys.expand(rows, -1, -1, -1).contiguous(),
                         layer.values.expand(rows, -1, -1, -1).contiguous(), i)
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev),
                use_cache=True, logits_to_keep=1, **{cache_name: cache})
    return out.logits[:, -1], cache, mask, n_prefix + width


def _unique_prompts(suffixes: list[list[int]], share: bool) -> tuple[list[list[int]], torch.Tensor | None]:
    """The distinct token lists in first-seen order and, when some repeat, each input's index among them."""
    if not share:
        return suffixes, None
    first: dict[tuple[int, ...], int] = {}
    which = [first.setdefault(tuple(s), len(first)) for s in suffixes]
    if len(first) == len(suffixes):
        return suffixes, None
    return [list(u) for u in first], torch.tensor(which)


@torch.inference_mode()
def _greedy_slots(model, ids: list[list[int]], max_new_tokens: int, batch_size: int, eos: int | None, pad: int,
                  threads: int | str | None = None, progress: bool | str = False, refill: bool = True, compact: bool = True,
                  share_prefix: bool = True, prefill_tokens: int | None = None,
                  stats: dict | None = None, temperature: float = 0.0,
                  seeds: list[int] | None = None, share_prompts: bool = True) -> list[list[int]]:
    """Greedy token ids (EOS included when produced) for each prompt in `ids`; see the module docstring.

    `temperature` > 0 samples instead, from softmax(logits / temperature) (no top-k or top-p), each
    prompt from its own generator seeded with `seeds[i]`, so a prompt's sample depends on its seed only,
    not on the batch it shares or the thread count.

    `refill`, `compact`, `share_prefix` and `share_prompts` (identical prompts prefilled once, e.g. CLEAR's
    k samples of one question) switch the batching levers off for measurements
    (`refill=False` decodes fixed batches of `batch_size` prompts to the end, as `_hf_generate`).
    `prefill_tokens`: padded tokens per prefill forward (prompts of similar length go together);
    None = `PREFILL_TOKENS_CPU` on CPU, the scoring engine's default elsewhere. `stats`, when given,
    receives counters (steps, row-steps, prefill tokens, seconds by phase, thread counts chosen).
    """
    from pipeline.models.engine import default_max_tokens, length_batches

    dev = next(model.parameters()).device
    cache_name = cache_kwarg(model)
    gens = None
    if temperature > 0:
        if seeds is None or len(seeds) != len(ids):
            raise ValueError("sampling needs one seed per prompt")
        gens = [torch.Generator().manual_seed(int(x)) for x in seeds]

    def pick(logits: torch.Tensor, prompts: list[int]) -> list[int]:
        """The next token of each row (`prompts[j]` owns row j of `logits`): argmax, or a seeded sample."""
        if gens is None:
            return logits.float().argmax(-1).tolist()
        probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        return [int(torch.multinomial(probs[j], 1, generator=gens[i])) for j, i in enumerate(prompts)]

    budget = prefill_tokens or (PREFILL_TOKENS_CPU if dev.type == "cpu" else default_max_tokens(dev))
    n = len(ids)
    order = sorted(range(n), key=lambda i: -len(ids[i]))  # stable: longest first, ties by position
    rows = max(1, min(batch_size, n))
    out: list[list[int]] = [[] for _ in range(n)]
    st = {"steps": 0, "row_steps": 0, "live_row_steps": 0, "prefill_tokens": 0, "prefill_s": 0.0,
          "decode_s": 0.0, "compactions": 0, "threads": []}

    with cpu_threads(model, threads, rows, probe_on_enter=False) as thr:
        prefix, n_prefix = None, 0
        if share_prefix and n > 1:
            n_prefix = _common_prefix(ids)
        if n_prefix:
            from transformers import DynamicCache

            t0 = time.perf_counter()
            prefix = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([ids[0][:n_prefix]], device=dev), use_cache=True, logits_to_keep=1,
                  **{cache_name: prefix})
            st["prefill_tokens"] += n_prefix
            st["prefill_s"] += time.perf_counter() - t0

        queue = deque(order)
        slots: _SlotCache | None = None
        owner = [-1] * rows            # prompt index decoded in each row, -1 when free
        last = torch.zeros(rows, dtype=torch.long)      # each row's latest token
        pos = torch.zeros(rows, dtype=torch.long)       # its next position id
        starts = [0] * rows            # first column of each row's occupant
        done = 0

        def finish(r: int) -> None:
            nonlocal done
            owner[r] = -1
            done += 1
            if progress:
                label = progress if isinstance(progress, str) else "generate"
                print(f"\r[{label}] {done}/{n} prompts", end="", file=sys.stderr, flush=True)

        def record(r: int, token: int) -> None:
            i = owner[r]
            out[i].append(token)
            if token == eos or len(out[i]) >= max_new_tokens:
                finish(r)

        while queue or any(o >= 0 for o in owner):
            free = [r for r in range(len(owner)) if owner[r] < 0]
            can_fill = queue and free and (refill or len(free) == len(owner))
            if can_fill:
                t0 = time.perf_counter()
                group = [queue.popleft() for _ in range(min(len(free), len(queue)))]
                suffix_lens = [len(ids[i]) - n_prefix for i in group]
                for chunk in length_batches(suffix_lens, max(budget, max(suffix_lens))):  # little padding
                    members = [group[j] for j in chunk]
                    rows_g = [free[j] for j in chunk]
                    thr.tick(len(members))
                    t1 = time.perf_counter()
                    unique, copies = _unique_prompts([ids[i][n_prefix:] for i in members], share_prompts)
                    logits, cache, mask, width = _prefill(model, unique, prefix, n_prefix, pad, dev, cache_name)
                    if copies is not None:  # one prefill per distinct prompt, its cache rows copied
                        logits, mask = logits[copies.to(logits.device)], mask[copies]
                        for layer in cache.layers:
                            idx = copies.to(layer.keys.device)
                            layer.keys, layer.values = layer.keys[idx], layer.values[idx]
                    thr.observe("prefill", time.perf_counter() - t1, len(unique) * (width - n_prefix))
                    st["prefill_tokens"] += sum(len(u) for u in unique)
                    if slots is None:  # the first chunk holds the longest prompt: every later one fits its width
                        slots = _SlotCache(model, cache, len(owner), width + max_new_tokens + 1)
                        slots.set_window(0, width)
                    if slots.end < width:  # cannot happen: prompts arrive longest first, shifts keep their width
                        raise RuntimeError(f"slot cache has {slots.end} columns, a prompt needs {width}")
                    slots.place(rows_g, cache, width)
                    rows_t = torch.tensor(rows_g, device=slots.mask.device)
                    slots.mask[rows_t, slots.end - width : slots.end] = mask.to(slots.mask.device)
                    slots.mask[rows_t, : slots.end - width] = 0
                    first = pick(logits, members)
                    for r, i, tok in zip(rows_g, members, first, strict=True):
                        owner[r], starts[r] = i, slots.end - width
                        last[r] = tok
                        pos[r] = len(ids[i])
                        record(r, tok)
                st["prefill_s"] += time.perf_counter() - t0
                continue
            live = [r for r in range(len(owner)) if owner[r] >= 0]
            if not live:
                continue
            t0 = time.perf_counter()
            if compact and not queue and len(live) < len(owner):  # nothing left to refill: drop finished rows
                slots.keep_rows(live)
                keep = torch.tensor(live)
                owner = [owner[r] for r in live]
                starts = [starts[r] for r in live]
                last, pos = last[keep], pos[keep]
                live = list(range(len(owner)))
                st["compactions"] += 1
            if slots.end + 1 > slots.capacity:  # keep the columns live rows and future (shorter) prompts need
                need = len(ids[queue[0]]) if queue else 0
                keep_from = max(0, min(min(starts[r] for r in live), slots.end - need))
                slots.shift(keep_from, max(slots.capacity, 2 * (slots.end - keep_from) + 1))
                starts = [max(s - keep_from, 0) for s in starts]
            window = min(starts[r] for r in live)
            slots.set_window(window, slots.end)
            thr.tick(len(owner))
            t1 = time.perf_counter()
            slots.mask[:, slots.end] = 1  # finished rows attend to their own (finite) column too
            logits = model(input_ids=last[:, None].to(dev), attention_mask=slots.mask[:, window : slots.end + 1],
                           position_ids=pos[:, None].to(dev), use_cache=True, logits_to_keep=1,
                           **{cache_name: slots.cache}).logits[:, -1]
            slots.set_window(window, slots.end + 1)
            if gens is None:
                nxt = logits.float().argmax(-1).cpu()
            else:  # finished rows still in the batch get a placeholder token (never recorded)
                nxt = torch.zeros(len(owner), dtype=torch.long)
                nxt[live] = torch.tensor(pick(logits[live], [owner[r] for r in live]))
            thr.observe("decode", time.perf_counter() - t1)
            last, pos = nxt, pos + 1
            st["steps"] += 1
            st["row_steps"] += len(owner)
            st["live_row_steps"] += len(live)
            tokens = nxt.tolist()
            for r in live:
                record(r, tokens[r])
            st["decode_s"] += time.perf_counter() - t0
        st["threads"] = thr.chosen
    if progress:
        print(file=sys.stderr, flush=True)
    if stats is not None:
        stats.update(st)
    return out
