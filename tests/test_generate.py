"""Greedy generation: the slot decoder gives transformers' greedy tokens; fallbacks, threads, evaluation."""

from __future__ import annotations

import inspect
import warnings

import polars as pl
import pytest
import torch

from pipeline.models.generate import (
    _faster_thread_count,
    _greedy_slots,
    _hf_generate,
    cache_kwarg,
    cpu_threads,
    generate,
    generate_ids,
    slots_supported,
    slots_unsupported_reason,
)
from pipeline.models.loading import load_model, load_tokenizer, prompt_text

PROMPTS = [
    "What is 2 + 3?",
    "A farmer has 17 sheep and buys 5 more, then sells 9 of them at the market. How many sheep are left?",
    "Name a color.",
    "Tom reads 12 pages a day for 4 days and then 7 pages a day for 3 days. How many pages did he read in total?",
    "What is 10 times 7?",
    "Write the number after 41.",
]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    """The real SmolLM2-135M-Instruct with '.' as EOS, so rows stop at different steps (refill, compaction)."""
    tok = load_tokenizer(str(smollm2_dir))
    tok.eos_token = "."
    return load_model(str(smollm2_dir), dtype=torch.float32, device_=torch.device("cpu")), tok


@pytest.mark.parametrize("batch_size,knobs", [
    (6, {"refill": False, "compact": False, "share_prefix": False, "prefill_tokens": 10**9}),
    (2, {"refill": False, "compact": False, "share_prefix": False, "prefill_tokens": 10**9}),
    (6, {}),
    (2, {}),
    (4, {"prefill_tokens": 40}),
    (3, {"share_prefix": False, "compact": False}),
])
def test_slot_decoder_gives_transformers_greedy_tokens(smollm2, batch_size, knobs):
    """Same token ids as `generate` on fixed left-padded batches, whatever rows are refilled, dropped,
    shared or prefilled together (capacity shifts included: refilled rows outlive max_new_tokens)."""
    model, tok = smollm2
    texts = [prompt_text(tok, p) for p in PROMPTS]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    reference = _hf_generate(model, tok, texts, 14, 6, progress=False)
    stats: dict = {}
    got = _greedy_slots(model, ids, 14, batch_size, tok.eos_token_id, tok.pad_token_id, threads=1, stats=stats, **knobs)
    assert got == reference
    assert any(t[-1] == tok.eos_token_id and len(t) < 14 for t in got)  # early stops exercised
    assert stats["live_row_steps"] + len(PROMPTS) == sum(len(t) for t in got)  # first tokens come from prefill
    if knobs.get("compact", True) and batch_size < len(PROMPTS):
        assert stats["compactions"] > 0


def test_generate_decodes_ids_and_falls_back_for_processed_logits(tiny_model_dir, capsys):
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, dtype=torch.float32, device_=torch.device("cpu"))
    assert slots_supported(model)
    texts = generate(model, tok, PROMPTS[:3], max_new_tokens=5, batch_size=2, progress=False, threads=1)
    ids = generate_ids(model, tok, PROMPTS[:3], max_new_tokens=5, batch_size=2, progress=False, threads=1)
    assert texts == [tok.decode(t, skip_special_tokens=True) for t in ids]
    assert ids == _hf_generate(model, tok, [prompt_text(tok, p) for p in PROMPTS[:3]], 5, 2, progress=False)
    model.generation_config.repetition_penalty = 1.3  # transformers would apply it: so must we, via its generate
    assert not slots_supported(model)
    assert slots_unsupported_reason(model) == "generation config sets repetition_penalty"
    hf = _hf_generate(model, tok, [prompt_text(tok, p) for p in PROMPTS[:3]], 5, 2, progress=False)
    assert generate_ids(model, tok, PROMPTS[:3], max_new_tokens=5, batch_size=2, progress=False, threads=1) == hf
    capsys.readouterr()
    generate_ids(model, tok, PROMPTS[:1], max_new_tokens=2, batch_size=1, progress=True, threads=1)
    assert "not the slot decoder: generation config sets repetition_penalty" in capsys.readouterr().err
    assert generate(model, tok, [], progress=False) == []


def test_cache_argument_follows_the_installed_transformers(tiny_model_dir):
    """transformers 5.24 renamed forward's `past_key_values` to `cache`: the slot decoder must pass
    the name the installed version takes (the old one made `slots_supported` False: a silent 1.5x slowdown)."""
    model, tok = load_model(tiny_model_dir, dtype=torch.float32, device_=torch.device("cpu")), load_tokenizer(tiny_model_dir)
    assert cache_kwarg(model) in inspect.signature(model.forward).parameters
    with warnings.catch_warnings(record=True) as caught:  # a deprecated name still runs, with a FutureWarning
        warnings.simplefilter("always")
        ids = generate_ids(model, tok, PROMPTS[:3], max_new_tokens=4, batch_size=2, progress=False, threads=1)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    assert ids == _hf_generate(model, tok, [prompt_text(tok, p) for p in PROMPTS[:3]], 4, 2, progress=False)

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, logits_to_keep=0):
            return input_ids

    assert cache_kwarg(OldStyle()) == "past_key_values"
    assert cache_kwarg(torch.nn.Linear(2, 2)) is None
    assert slots_unsupported_reason(model) is None


def test_cpu_threads_sets_and_restores_the_thread_count(tiny_model_dir):
    model = load_model(tiny_model_dir, dtype=torch.float32, device_=torch.device("cpu"))
    saved = torch.get_num_threads()
    with cpu_threads(model, threads=1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == saved
    with cpu_threads(model):
        assert torch.get_num_threads() == saved  # default: the process's own count, nothing measured
    with cpu_threads(model, threads="auto") as chooser:
        assert torch.get_num_threads() in (1, saved)
        chooser.choose(rows=4)
    assert torch.get_num_threads() == saved
    assert _faster_thread_count(32, 4, 2) in (1, 2)
    torch.set_num_threads(saved)


def test_evaluate_model_reports_accuracy_and_nll(tiny_model_dir):
    from pipeline.evaluation.heldout import evaluate_model

    test = pl.DataFrame({"id": [f"t{i}" for i in range(4)], "prompt": [f"What is {i} + {i}?" for i in range(4)],
                         "response": [f"{i} + {i} = {2 * i}.\n#### {2 * i}" for i in range(4)],
                         "answer": [str(2 * i) for i in range(4)]})
    saved = torch.get_num_threads()
    metrics, table = evaluate_model(tiny_model_dir, test, {"n_generate": 2, "max_new_tokens": 4, "batch_size": 1},
                                    progress=False)
    assert torch.get_num_threads() == saved
    assert metrics["n_nll"] == 4 and metrics["n_generate"] == 2 and metrics["nll"] > 0
    assert table.get_column("generated").to_list() == [True, True, False, False]


def test_thread_count_does_not_change_greedy_tokens(smollm2):
    """Evaluation may pick 1 or all threads from the machine's load (`cpu_threads`); the answers it
    grades must not depend on that choice, or a run would not be reproducible for its seed."""
    model, tok = smollm2
    many = max(torch.get_num_threads(), 2)
    one = generate_ids(model, tok, PROMPTS, max_new_tokens=24, batch_size=4, progress=False, threads=1)
    assert generate_ids(model, tok, PROMPTS, max_new_tokens=24, batch_size=4, progress=False, threads=many) == one
    assert generate_ids(model, tok, PROMPTS, max_new_tokens=24, batch_size=4, progress=False) == one
    assert generate_ids(model, tok, PROMPTS, max_new_tokens=24, batch_size=4, progress=False, threads="auto") == one


def test_model_loads_with_the_hardware_attention_and_dtype(tiny_model_dir):
    """CPU: fp32 and SDPA (transformers' default); a GPU would get bf16 and FlashAttention-2 when installed."""
    from pipeline.models.loading import attention, default_dtype

    model = load_model(tiny_model_dir)
    if not torch.cuda.is_available():
        assert default_dtype() == torch.float32 and attention() is None
        assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    assert attention(torch.float32) is None  # FlashAttention-2 needs half precision


def test_sampling_depends_on_each_prompts_seed_not_on_its_batch(smollm2):
    """Seeded sampling in the slot decoder: the same seeds give the same samples at any batch size (rows
    refilled, dropped, prefilled together), other seeds give other samples, temperature -> 0 gives greedy."""
    model, tok = smollm2
    texts = [prompt_text(tok, p) for p in PROMPTS for _ in range(2)]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    seeds = list(range(100, 100 + len(ids)))
    args = (model, ids, 10, 0, tok.eos_token_id, tok.pad_token_id)
    one = _greedy_slots(*args[:3], 12, *args[4:], threads=1, temperature=1.0, seeds=seeds)
    assert one == _greedy_slots(*args[:3], 3, *args[4:], threads=1, temperature=1.0, seeds=seeds)
    assert one != _greedy_slots(*args[:3], 12, *args[4:], threads=1, temperature=1.0, seeds=[s + 1 for s in seeds])
    assert one[0] != one[1] or one[2] != one[3]  # copies of a prompt with different seeds differ
    greedy = _greedy_slots(*args[:3], 12, *args[4:], threads=1)
    assert _greedy_slots(*args[:3], 12, *args[4:], threads=1, temperature=1e-4, seeds=seeds) == greedy


def test_copies_of_a_prompt_are_prefilled_once_and_sample_as_if_alone(smollm2):
    """k samples of one prompt (CLEAR) share one prefill: the prefill tokens count each distinct prompt
    once, and every copy's sample is the one its seed gives with nothing shared (the copies' cache rows
    are real copies, not views a later row's prefill could overwrite)."""
    model, tok = smollm2
    ids = tok([prompt_text(tok, p) for p in PROMPTS[:2]], add_special_tokens=False)["input_ids"]
    batch = [ids[0]] * 3 + [ids[1]] * 3
    seeds = [7, 8, 9, 10, 11, 12]
    args = (model, batch, 8, 6, tok.eos_token_id, tok.pad_token_id)
    shared, alone = {}, {}
    got = _greedy_slots(*args, threads=1, temperature=1.0, seeds=seeds, share_prefix=False, stats=shared)
    ref = _greedy_slots(*args, threads=1, temperature=1.0, seeds=seeds, share_prefix=False, share_prompts=False,
                        stats=alone)
    assert got == ref and len({tuple(x) for x in got[:3]}) > 1
    assert shared["prefill_tokens"] == len(ids[0]) + len(ids[1])
    assert alone["prefill_tokens"] == 3 * (len(ids[0]) + len(ids[1]))
    assert got[0] == _greedy_slots(model, [ids[0]], 8, 1, tok.eos_token_id, tok.pad_token_id, threads=1,
                                   temperature=1.0, seeds=[7])[0]


def test_sampled_first_tokens_follow_softmax_of_logits_over_temperature(smollm2):
    """The empirical distribution of 1,500 sampled first tokens matches softmax(logits / T) of the prompt."""
    model, tok = smollm2
    text = prompt_text(tok, "Name a color.")
    ids = tok([text], add_special_tokens=False)["input_ids"][0]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    temperature, n = 0.7, 1500
    probs = torch.softmax(logits / temperature, -1)
    got = _greedy_slots(model, [ids] * n, 1, 500, tok.eos_token_id, tok.pad_token_id, threads=1,
                        temperature=temperature, seeds=list(range(n)))
    counts = torch.bincount(torch.tensor([t[0] for t in got]), minlength=probs.numel()).float()
    top = probs.topk(4).indices
    assert probs[top].sum() > 0.5  # the test reads the mass where it is
    for token in top:
        p = float(probs[token])
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(counts[token] / n - p) < 4 * sigma + 1e-3, (int(token), float(counts[token] / n), p)
