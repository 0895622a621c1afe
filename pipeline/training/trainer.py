"""TRL's SFTTrainer with our token-level losses on its fused LM head (no full-vocabulary logits).

TRL's collator and `remove_unused_columns` drop extra dataset columns and its `compute_loss_func`
never sees them, so this module has its own collator (pads and carries `example_weight` and
per-token columns) and overrides `compute_loss`. Normalizer counts (response, positive, kept
tokens...) are summed over the whole gradient-accumulation window before the first micro-batch,
like `num_items_in_batch`, so accumulation gives the update of one big batch. A loss whose weights
depend on every token of the window (`needs_window_nll`, e.g. TALR with `window="accumulation"`) also
gets `window_stats` from a no-grad forward over the window's micro-batches, run once per step.

On CPU the forward takes a leaner path than TRL's fused head, with the same per-token values
(`TokenLossSFTTrainer.fused_outputs`): without Triton, TRL projects every position of the padded
batch (prompt and padding too) through the LM head, in 4096 x 32768 tiles with some 25 elementwise
passes each; that was 28% of a training step (benchmarks/RESULTS.md, "Training"). Here the body runs
without an attention mask (exact for right padding: a causal model's real tokens never attend to the
padding after them), and where the model allows it without the padding at all (rows packed end to end,
attention per row: `pipeline.models.packing`; a third of a gsm_symbolic batch is padding); only
positions with a label go through the head (`HeadLogProbs`).

A loss that declares head statistics (`TokenLoss.head_stats`: EAFT's top-k entropy, ASFT's KL to a
frozen reference) always takes this tiled pass, on any device: the statistics come from the same
tiles as the log-probs, so no [B, T, V] logits exist. For `reference_kl` the trainer loads the
reference once (`base_model`, or the loss's named `reference`; under LoRA the model with its adapter
disabled) and runs its body under `torch.inference_mode` beside the trained model's.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.utils import is_peft_model
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import FusedCausalLMOutput, pad

from pipeline.losses.base import (
    EXAMPLE_WEIGHT,
    REFERENCE_KL,
    TOPK_ENTROPY,
    TokenLoss,
    shift_columns,
)
from pipeline.losses.ce import CrossEntropy
from pipeline.losses.masked_thought import MaskedThought
from pipeline.models.engine import length_batches, plain_head
from pipeline.models.loading import load_model
from pipeline.models.packing import packable, packed_hidden, row_offsets

IGF_SCORE = "igf_score"  # per-example predicted information gain for the IGF filter
_EXAMPLE_COLUMNS = (EXAMPLE_WEIGHT, IGF_SCORE)  # always carried; a loss adds the columns it `requires`
# Dataset columns TRL itself reads; every other column of the dataset travels to the loss as a batch column.
_TRL_COLUMNS = {"input_ids", "completion_mask", "assistant_masks", "labels", "attention_mask", "position_ids",
                "seq_lengths", "token_type_ids", "prompt", "completion", "messages", "text"}
_TOKEN_DTYPES = {"token_label": torch.int8}
_MODEL_INPUTS = {"input_ids", "labels", "attention_mask", "use_cache"}  # what the CPU path knows how to run

# LM-head tiles of the CPU path: tokens x vocabulary entries per matmul (see benchmarks/bench_training.py).
HEAD_TOKEN_CHUNK = 1024
HEAD_VOCAB_CHUNK = 8192


@dataclass
class HeadOutput(FusedCausalLMOutput):
    """TRL's fused-head output plus the loss's head statistics ({name: [B, T-1]}, zero where ignored)."""

    head_columns: dict[str, torch.Tensor] | None = None


class HeadLogProbs(torch.autograd.Function):
    """log p(target) for [N, H] hidden states under a bias-free head [V, H], in (token x vocab) tiles.

    Forward: each tile's logits fold into a running logsumexp (and, with `metrics`, the entropy's
    E_p[z] and the first argmax), so at most one tile of logits exists. Backward recomputes each
    tile and turns it into `-g * p` in place (three passes), then two GEMMs; the `+g` at the target
    goes straight to the target's row. Entropy and top-1 come without gradient (metrics only).

    Head statistics a loss declares (`pipeline.losses.base.HEAD_STATS`) come from the same tiles:
    `topk > 0` keeps a running top-k of each row's logits and returns the entropy of their softmax
    (no gradient); `ref_hidden` [N, H] and `ref_weight` [V, H] of a frozen reference model add
    KL(q || p) per row, q the reference's distribution, folded like the logsumexp (one tile of each
    model's logits at a time). Its gradient, `g_kl * (p - q)` on the logits, joins the log-prob's in
    the backward pass, which recomputes the reference tile; nothing flows to the reference.
    Returns (log_probs [N], entropy, is_top1), each [N] or None, and with a statistic asked for also
    (topk_entropy, kl).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, metrics: bool, token_chunk: int, vocab_chunk: int,
                topk: int = 0, ref_hidden=None, ref_weight=None):
        n, vocab = hidden.shape[0], weight.shape[0]
        anchored = ref_hidden is not None
        lse = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_empty(n, dtype=torch.float32) if metrics else None
        top1 = hidden.new_empty(n, dtype=torch.bool) if metrics else None
        topk_entropy = hidden.new_empty(n, dtype=torch.float32) if topk else None
        ref_lse = hidden.new_empty(n, dtype=torch.float32) if anchored else None
        kl = hidden.new_empty(n, dtype=torch.float32) if anchored else None
        for t0 in range(0, n, token_chunk):
            h, rows = hidden[t0 : t0 + token_chunk], slice(t0, t0 + token_chunk)
            run = mean_z = best = arg = top_vals = run_q = gap = None
            for v0 in range(0, vocab, vocab_chunk):
                tile = (h @ weight[v0 : v0 + vocab_chunk].T).float()
                if metrics:
                    top, idx = tile.max(1)
                    p = torch.sub(tile, top[:, None]).exp_()
                    total = p.sum(1)
                    chunk_lse, chunk_z = top + total.log(), torch.linalg.vecdot(p, tile) / total
                else:
                    chunk_lse = torch.logsumexp(tile, 1)
                if topk:  # the k largest logits so far: this tile's top-k merged with the running ones
                    vals = tile.topk(min(topk, tile.shape[1]), 1).values
                    if top_vals is not None:
                        vals = torch.cat([top_vals, vals], 1)
                        vals = vals.topk(min(topk, vals.shape[1]), 1).values
                    top_vals = vals
                if anchored:  # reference logsumexp and E_q[z_ref - z], folded like the logsumexp
                    ref_tile = (ref_hidden[rows] @ ref_weight[v0 : v0 + vocab_chunk].T).float()
                    q_top = ref_tile.max(1).values
                    q = torch.sub(ref_tile, q_top[:, None]).exp_()
                    q_total = q.sum(1)
                    chunk_q, chunk_gap = q_top + q_total.log(), torch.linalg.vecdot(q, ref_tile.sub_(tile)) / q_total
                    if run_q is None:
                        run_q, gap = chunk_q, chunk_gap
                    else:
                        merged_q = torch.logaddexp(run_q, chunk_q)
                        gap = gap * (run_q - merged_q).exp() + chunk_gap * (chunk_q - merged_q).exp()
                        run_q = merged_q
                if run is None:
                    run = chunk_lse
                    if metrics:
                        mean_z, best, arg = chunk_z, top, idx
                    continue
                merged = torch.logaddexp(run, chunk_lse)
                if metrics:
                    mean_z = mean_z * (run - merged).exp() + chunk_z * (chunk_lse - merged).exp()
                    better = top > best  # strict: the first maximum wins, like argmax
                    best, arg = torch.where(better, top, best), torch.where(better, idx + v0, arg)
                run = merged
            lse[rows] = run
            if metrics:
                entropy[rows] = run - mean_z
                top1[rows] = arg == targets[rows]
            if topk:
                logq = torch.log_softmax(top_vals, 1)
                topk_entropy[rows] = -(logq.exp() * logq).sum(1)
            if anchored:  # KL(q || p) = E_q[z_ref - z] - lse_ref + lse
                ref_lse[rows] = run_q
                kl[rows] = gap - run_q + run
        target = torch.linalg.vecdot(hidden, weight[targets]).float()
        ctx.save_for_backward(hidden, weight, targets, lse, ref_hidden, ref_weight, ref_lse)
        ctx.chunks = (token_chunk, vocab_chunk)
        ctx.mark_non_differentiable(*[t for t in (entropy, top1, topk_entropy) if t is not None])
        if not (topk or anchored):
            return target - lse, entropy, top1
        return target - lse, entropy, top1, topk_entropy, kl

    @staticmethod
    def backward(ctx, grad, *other_grads):
        hidden, weight, targets, lse, ref_hidden, ref_weight, ref_lse = ctx.saved_tensors
        grad_kl = other_grads[3] if len(other_grads) == 4 else None
        token_chunk, vocab_chunk = ctx.chunks
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad = grad.to(hidden.dtype)
        anchored = ref_hidden is not None and grad_kl is not None
        if anchored:
            grad_kl = grad_kl.to(hidden.dtype)
        g_hidden = torch.zeros_like(hidden) if need_hidden else None
        g_weight = torch.zeros_like(weight) if need_weight else None
        for t0 in range(0, hidden.shape[0], token_chunk):
            h, rows = hidden[t0 : t0 + token_chunk], slice(t0, t0 + token_chunk)
            row_lse = lse[rows, None].to(hidden.dtype)
            # d/dz of (g log p(target) + g_kl KL(q||p)) = g 1[target] + (g_kl - g) p - g_kl q
            coef = (grad_kl[rows, None] - grad[rows, None]) if anchored else -grad[rows, None]
            for v0 in range(0, weight.shape[0], vocab_chunk):
                w = weight[v0 : v0 + vocab_chunk]
                tile = (h @ w.T).sub_(row_lse).exp_().mul_(coef)
                if anchored:
                    q = (ref_hidden[rows] @ ref_weight[v0 : v0 + vocab_chunk].T).to(hidden.dtype)
                    tile.sub_(q.sub_(ref_lse[rows, None].to(hidden.dtype)).exp_().mul_(grad_kl[rows, None]))
                if need_hidden:
                    g_hidden[rows].addmm_(tile, w)
                if need_weight:
                    g_weight[v0 : v0 + vocab_chunk].addmm_(tile.T, h)
        if need_hidden:
            g_hidden.add_(grad[:, None] * weight[targets])
        if need_weight:
            g_weight.index_add_(0, targets, grad[:, None] * hidden)
        return g_hidden, g_weight, None, None, None, None, None, None, None


@dataclass
class TokenLossCollator(DataCollatorForLanguageModeling):
    """TRL's padding collator that also carries `extra_columns`: per-example ones (`example_weight`, or any column
    holding one number per example) as [B], per-token ones as [B, T] (padded with 0).

    `masked_thought` rides along as the collator's input transform, but is applied by
    `TokenLossSFTTrainer.compute_loss` (`apply_masked_thought`): accelerate and the Trainer
    prefetch batches, so the global step is not known when a batch is collated.
    """

    extra_columns: tuple[str, ...] = _EXAMPLE_COLUMNS
    masked_thought: MaskedThought | None = None

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.padding_free:
            raise ValueError("TokenLossCollator does not support padding_free")
        base = [{k: v for k, v in ex.items() if k not in self.extra_columns} for ex in examples]
        out = super().torch_call(base)
        for name in self.extra_columns:
            if name not in examples[0]:
                continue
            values = [ex[name] for ex in examples]
            if name in _EXAMPLE_COLUMNS or not isinstance(values[0], (list, tuple)):
                out[name] = torch.tensor(values, dtype=torch.float32)
                continue
            rows = []
            for ex, row in zip(examples, values, strict=True):
                n = len(ex["input_ids"])
                if len(row) < n:
                    raise ValueError(f"column {name!r} has {len(row)} values for {n} input_ids")
                rows.append(torch.tensor(row[:n], dtype=_TOKEN_DTYPES.get(name, torch.float32)))
            out[name] = pad(rows, padding_value=0, padding_side="right",
                            pad_to_multiple_of=self.pad_to_multiple_of)
        return out

    def apply_masked_thought(self, batch: dict[str, Any], step: int, micro: int = 0,
                             max_steps: int = 0) -> dict[str, Any]:
        """Batch with response input tokens masked for (step, micro) of a `max_steps` run; labels untouched."""
        if self.masked_thought is None or not self.masked_thought.enabled:
            return batch
        ids = self.masked_thought.masked_inputs(batch["input_ids"], batch["labels"], step, micro, max_steps)
        return {**batch, "input_ids": ids}


class IGFSampler(torch.utils.data.Sampler[int]):
    """IGF's training-time filter as its reference applies it (Antonello et al. 2021, arXiv 2010.00050): the
    examples stream in a seeded shuffled order, and every optimizer step (`per_step` examples across the
    accumulation window and processes) is filled only with examples whose predicted IG passes that step's
    threshold; failing ones are passed over (`skipped`) and met again in the next pass. When no example
    passes a step's threshold at all, the step takes the highest-scoring ones (`fallback_steps` counts it)
    rather than looping forever. One epoch is as many examples as the dataset has."""

    def __init__(self, scores: list[float], options: dict[str, Any], per_step: int, seed: int = 0):
        self.scores = np.asarray(scores, dtype=np.float64)
        self.options, self.per_step, self.seed = options, max(int(per_step), 1), seed
        self.skipped = self.fallback_steps = self._epoch = 0
        if options.get("units") == "std":
            self._center, self._scale = float(self.scores.mean()), float(self.scores.std()) or 1.0
        else:
            self._center, self._scale = 0.0, 1.0

    def threshold(self, step: int) -> float:
        """The threshold of `step` in the column's values: `threshold` before `after_steps`, then `then`."""
        o = self.options
        t = float(o["threshold"] if step < int(o["after_steps"]) else o["then"])
        return self._center + t * self._scale

    def __len__(self) -> int:
        return int(self.scores.size)

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self._epoch)
        start = self._epoch * len(self)
        self._epoch += 1
        queue: list[int] = []
        for emitted in range(start, start + len(self)):
            threshold = self.threshold(emitted // self.per_step)
            if not (self.scores >= threshold).any():
                if emitted % self.per_step == 0:
                    self.fallback_steps += 1
                yield int(np.argsort(-self.scores, kind="stable")[(emitted % self.per_step) % self.scores.size])
                continue
            while True:  # the next example of the stream that passes this step's threshold
                if not queue:
                    queue = rng.permutation(self.scores.size).tolist()
                i = queue.pop()
                if self.scores[i] >= threshold:
                    yield i
                    break
                self.skipped += 1


def check_columns(loss: TokenLoss, columns: set[str] | list[str]) -> None:
    """Raise a clear error when `loss` needs batch columns that are not there."""
    missing = [c for c in getattr(loss, "requires", ()) if c not in columns]
    if missing:
        raise ValueError(
            f"loss {type(loss).__name__} needs the per-token column(s) {missing}, which the dataset lacks; "
            f"pass them as token_columns (pipeline.training.columns makes them before training)"
        )


class TokenLossSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is a `TokenLoss` computed on the fused LM head's per-token log-probs.

    `cpu_fast_path` (default on), `pack_rows` (the CPU path's body runs padding-free, rows packed
    end to end, when `pipeline.models.packing.packable`), `forward_tokens` (padded tokens per body
    forward instead; None = the whole micro-batch at once) and `token_metrics` (entropy / token
    accuracy on the CPU path) are class attributes a benchmark may change.
    """

    cpu_fast_path = True
    pack_rows = True
    forward_tokens: int | None = None
    token_metrics = True

    def __init__(self, *args: Any, loss: TokenLoss | None = None, masked_thought: MaskedThought | None = None,
                 igf_filter: dict[str, Any] | None = None, base_model: str | torch.nn.Module | None = None,
                 **kwargs: Any):
        self.token_loss = loss if loss is not None else CrossEntropy()
        given = [c for c in getattr(kwargs.get("train_dataset"), "column_names", None) or [] if c not in _TRL_COLUMNS]
        self.extra_columns = tuple(dict.fromkeys([*_EXAMPLE_COLUMNS, *getattr(self.token_loss, "requires", ()),
                                                  *given]))
        self.igf_filter = igf_filter
        self._window_counts: dict[str, torch.Tensor] | None = None
        self._window_stats: dict[str, torch.Tensor] | None = None
        self._micro = 0
        self._pack_checked: dict[int, bool] = {}
        targs = kwargs.get("args")
        if targs is not None and getattr(targs, "padding_free", False):
            raise ValueError("TokenLossSFTTrainer does not support padding_free")
        if kwargs.get("data_collator") is None:
            tok = kwargs.get("processing_class")
            tok = getattr(tok, "tokenizer", tok)
            if tok is None:
                raise ValueError("TokenLossSFTTrainer needs processing_class (or a data_collator)")
            pad_token = (targs.pad_token if targs is not None else None) or tok.pad_token or tok.eos_token
            kwargs["data_collator"] = TokenLossCollator(
                pad_token_id=tok.convert_tokens_to_ids(pad_token),
                pad_to_multiple_of=targs.pad_to_multiple_of if targs is not None else None,
                masked_thought=masked_thought,
                extra_columns=self.extra_columns,
            )
        elif masked_thought is not None:
            raise ValueError("pass masked_thought through TokenLossCollator when giving your own data_collator")
        elif isinstance(kwargs["data_collator"], TokenLossCollator):
            kwargs["data_collator"].extra_columns = self.extra_columns
        super().__init__(*args, **kwargs)
        if self.train_dataset is not None and hasattr(self.train_dataset, "column_names"):
            check_columns(self.token_loss, self.train_dataset.column_names)
        if igf_filter is not None:
            self._igf_sampler = self._make_igf_sampler()
        self.reference_model = self._load_reference(base_model)

    def _load_reference(self, base_model: str | torch.nn.Module | None) -> torch.nn.Module | None:
        """The frozen reference of a loss with `reference_kl`, loaded once in the trained model's dtype and device:
        the loss's named `reference`, else `base_model` (the model training started from). None when there is
        nothing to load: no such loss, or LoRA without a named reference (the base is the model with its
        adapter disabled, no second copy)."""
        stats = getattr(self.token_loss, "head_stats", None) or {}
        if REFERENCE_KL not in stats:
            return None
        name = stats[REFERENCE_KL].get("reference")
        if name is None and is_peft_model(self.model):
            return None
        source = name if name is not None else base_model
        if source is None:
            raise ValueError(f"loss {type(self.token_loss).__name__} anchors to a frozen reference model: pass "
                             "base_model= (the model training starts from) or set the loss's `reference`")
        head = self.model.get_output_embeddings().weight
        ref = source if isinstance(source, torch.nn.Module) else load_model(source, dtype=head.dtype,
                                                                             device_=head.device)
        return ref.to(dtype=head.dtype, device=head.device).eval().requires_grad_(False)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *self.extra_columns]))

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also sum the loss's normalizer counts over the accumulation window (like num_items_in_batch)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.igf_filter is not None and self.model.training:  # the sampler filled the window: log it
            step = self.state.global_step
            self._metrics["train"]["igf_threshold"].append(self._igf_sampler.threshold(step))
            self._metrics["train"]["igf_examples"].append(float(sum(len(b["input_ids"]) for b in batch_samples
                                                                    if "input_ids" in b)))
        self._micro = 0
        self._window_counts = self._count_window(batch_samples, device)
        self._window_stats = self._window_nll_stats(batch_samples)
        return batch_samples, num_items_in_batch

    def igf_threshold(self, step: int) -> float:
        """IGF's threshold at `step` in the column's own values (`units: std` converted)."""
        return self._igf_sampler.threshold(step)

    @property
    def igf_filtered(self) -> int:
        """Examples the IGF filter passed over in the stream so far (they failed their step's threshold)."""
        return self._igf_sampler.skipped if self.igf_filter is not None else 0

    def _get_train_sampler(self, train_dataset=None):
        """With `igf_filter`: the IGF sampler, which fills every step with examples passing its threshold."""
        if self.igf_filter is None:
            return super()._get_train_sampler(train_dataset)
        return self._igf_sampler

    def _make_igf_sampler(self) -> IGFSampler:
        dataset = self.train_dataset
        if IGF_SCORE not in dataset.column_names:
            raise ValueError(f"train.igf_filter is on but the dataset has no {IGF_SCORE!r} column")
        a = self.args
        return IGFSampler(dataset[IGF_SCORE], self.igf_filter,
                          per_step=a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size,
                          seed=a.seed)

    def _window_nll_stats(self, batch_samples: list[dict]) -> dict[str, torch.Tensor] | None:
        """The loss's `window_stats` from detached token losses of every micro-batch (inputs masked as in training)."""
        if not getattr(self.token_loss, "needs_window_nll", False) or not batch_samples:
            return None
        nlls, masks = [], []
        model = self.model
        with torch.no_grad():
            for micro, batch in enumerate(batch_samples):
                if "labels" not in batch:
                    return None
                inputs = self._prepare_inputs({k: v for k, v in batch.items() if k not in self.extra_columns})
                if isinstance(self.data_collator, TokenLossCollator):
                    inputs = self.data_collator.apply_masked_thought(inputs, self.state.global_step, micro,
                                                                     self.state.max_steps)
                out = self.fused_outputs(model, {**inputs, "use_cache": False}, metrics=False)
                nlls.append(-out.log_probs.float().masked_fill(~out.label_mask.bool(), 0.0))
                masks.append(out.label_mask.bool())
        # per process: with several processes the statistics cover this process's micro-batches only
        return self.token_loss.window_stats(nlls, masks)

    def _count_window(self, batch_samples: list[dict], device) -> dict[str, torch.Tensor] | None:
        total: dict[str, torch.Tensor] = {}
        for batch in batch_samples:
            if "labels" not in batch:
                return None
            check_columns(self.token_loss, batch.keys())
            mask = batch["labels"][:, 1:] != -100
            cols = shift_columns({k: batch[k] for k in self.extra_columns if k in batch})
            for key, value in self.token_loss.counts(mask, cols).items():
                if key != "tokens":  # num_items_in_batch already carries it
                    total[key] = total.get(key, 0) + torch.as_tensor(value).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = {k: self.accelerator.gather(v.reshape(1)).sum() for k, v in total.items()}
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Fused forward, then our loss on per-token log-probs with the extra columns; TRL's metrics plus the loss's."""
        mode = "train" if self.model.training else "eval"
        extra = {k: inputs.pop(k) for k in self.extra_columns if k in inputs}
        extra.pop(IGF_SCORE, None)  # used by get_batch_samples' filter only
        if mode == "train" and isinstance(self.data_collator, TokenLossCollator):
            inputs = self.data_collator.apply_masked_thought(inputs, self.state.global_step, self._micro,
                                                             self.state.max_steps)
            self._micro += 1
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        outputs = self.fused_outputs(model, inputs)
        counts = self._window_counts if (mode == "train" and num_items_in_batch is not None) else None
        columns = {**shift_columns(extra), **(getattr(outputs, "head_columns", None) or {})}
        loss = self.token_loss.from_log_probs(
            outputs.log_probs, outputs.label_mask, num_items_in_batch, columns,
            step=self.state.global_step, max_steps=self.state.max_steps, counts=counts,
            window=self._window_stats if counts is not None else None,
        )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if self.aux_loss_enabled:
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
        self._log_metrics(mode, inputs, outputs)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return loss, outputs
        return loss

    def fused_outputs(self, model, inputs: dict, metrics: bool = True):
        """Per-token log-probs of the labels ([B, T-1], zero where ignored) with entropy and top-1 for the metrics.

        TRL's fused head (`model(..., fused_lm_head=True)`) on GPU and wherever the CPU path does not
        apply; the CPU path gives the same values (float tolerance) with less work. The head statistics
        the loss declares (`head_stats`) come only from this module's tiled pass (`HeadLogProbs`), on
        any device, in `head_columns` of the output.
        """
        stats = getattr(self.token_loss, "head_stats", None) or {}
        plan = self._cpu_plan(model, inputs, any_device=bool(stats))
        if plan is None:
            if stats:
                raise ValueError(f"loss {type(self.token_loss).__name__} needs {sorted(stats)} from the trainer's "
                                 "tiled LM-head pass, which needs one process, right padding, a plain bias-free "
                                 "head and no extra model inputs (MoE aux loss, position_ids, prompt learning)")
            return model(**inputs, fused_lm_head=True)
        lm, lengths = plan
        ids, labels = inputs["input_ids"], inputs["labels"]
        mask = labels[:, 1:] != -100
        has_label = mask.any(1)
        topk = int(stats[TOPK_ENTROPY]["k"]) if TOPK_ENTROPY in stats else 0
        anchored = REFERENCE_KL in stats
        # rows without a label add nothing to the loss: no forward for them
        rows = [i for i in range(len(lengths)) if has_label[i]]
        hidden, ref_hidden, where_rows, where_cols = [], [], [], []
        row_lengths = [lengths[i] for i in rows]
        idx = torch.tensor(rows, device=ids.device, dtype=torch.long)
        packs = rows and self.forward_tokens is None and self._packs(lm, ids[idx], row_lengths) and (
            not anchored or self._packs(self._reference_lm(model), ids[idx], row_lengths))
        if packs:
            # padding-free: the rows' real tokens end to end, attention per row (pipeline.models.packing)
            r, c = mask[idx].nonzero(as_tuple=True)
            flat = torch.tensor(row_offsets(row_lengths), device=ids.device)[r] + c
            hidden.append(packed_hidden(lm.base_model, ids[idx], row_lengths)[flat])
            if anchored:
                ref_hidden.append(self._reference_hidden(
                    model, lambda body: packed_hidden(body, ids[idx], row_lengths)[flat]))
            where_rows.append(idx[r])
            where_cols.append(c)
            groups = []
        else:
            groups = length_batches(row_lengths, self.forward_tokens or 2**62, max_batch=len(rows) or 1)
        for group in groups:
            idx = torch.tensor([rows[i] for i in group], device=ids.device)
            width = max(lengths[rows[i]] for i in group)
            # no attention mask: right padding, so real tokens never attend to the padding after them
            out = lm.base_model(input_ids=ids[idx, :width], use_cache=False).last_hidden_state
            keep = mask[idx, : width - 1]
            r, c = keep.nonzero(as_tuple=True)
            hidden.append(out[:, :-1][r, c])
            if anchored:
                group_ids, gr, gc = ids[idx, :width], r, c
                ref_hidden.append(self._reference_hidden(
                    model, lambda body, x=group_ids, gr=gr, gc=gc: body(input_ids=x, use_cache=False)
                    .last_hidden_state[:, :-1][gr, gc]))
            where_rows.append(idx[r])
            where_cols.append(c)
        if hidden:
            hidden, r, c = torch.cat(hidden), torch.cat(where_rows), torch.cat(where_cols)
        else:  # nothing to score: keep the output connected to the model so backward still runs
            hidden = lm.get_input_embeddings().weight[:0]
            r = c = torch.zeros(0, dtype=torch.long, device=ids.device)
        weight = lm.get_output_embeddings().weight
        extra = ()
        if topk or anchored:
            ref_weight = self._reference_lm(model).get_output_embeddings().weight if anchored else None
            if anchored and ref_weight.shape != weight.shape:
                raise ValueError(f"the reference model's LM head {tuple(ref_weight.shape)} differs from the trained "
                                 f"model's {tuple(weight.shape)}: they need the same vocabulary")
            refs = torch.cat(ref_hidden) if ref_hidden else hidden.detach()[:0]
            extra = (topk, refs if anchored else None, ref_weight)
        log_probs, entropy, top1, *head = HeadLogProbs.apply(hidden, weight, labels[:, 1:][r, c],
                                                             metrics and self.token_metrics,
                                                             HEAD_TOKEN_CHUNK, HEAD_VOCAB_CHUNK, *extra)

        def scatter(values):
            return None if values is None else values.new_zeros(mask.shape).index_put((r, c), values)

        columns = {}
        if head:
            columns = {name: scatter(values) for name, values in zip((TOPK_ENTROPY, REFERENCE_KL), head, strict=True)
                       if name in stats}
        return HeadOutput(log_probs=scatter(log_probs), entropy=scatter(entropy), is_top1=scatter(top1),
                          label_mask=mask, head_columns=columns)

    def _reference_lm(self, model):
        """The frozen reference causal LM: the loaded copy, or (LoRA, no named reference) the trained one itself."""
        if self.reference_model is not None:
            return self.reference_model
        return model.get_base_model() if is_peft_model(model) else model

    def _reference_hidden(self, model, run) -> torch.Tensor:
        """`run(body)` on the reference model's body (its selected last hidden states), under inference mode
        (with the LoRA adapter disabled when the reference is the trained model's own base)."""
        lm = self._reference_lm(model)
        adapter_off = self.reference_model is None
        if adapter_off and not is_peft_model(model):
            raise ValueError("no reference model loaded for the KL anchor (TokenLossSFTTrainer(base_model=...))")
        was_training = lm.training
        with torch.inference_mode(), (model.disable_adapter() if adapter_off else contextlib.nullcontext()):
            lm.eval()
            try:
                out = run(lm.base_model)
            finally:
                lm.train(was_training)
        return out.clone()  # a normal tensor: autograd may save it for the backward pass

    def _packs(self, lm, ids: torch.Tensor, lengths: list[int]) -> bool:
        """Whether the body runs padding-free: `pack_rows` on, a CPU batch (on GPU, padding-free training is
        flash-attention's varlen kernel: TRL's `padding_free`), the model `packable`, and (checked once per
        model) the packed forward of two short rows equal to the padded one, so a model that ignores
        `position_ids` or the attention interface falls back to padding instead of training on wrong values.
        Not under activation (gradient) checkpointing, read from the layers' own flag (transformers renamed
        the model's property in 5.x): the backward pass recomputes each layer after the forward has
        switched the model back to plain SDPA, which would attend across the packed rows (torch's
        non-reentrant checkpoint stops with a CheckpointError; the reentrant one would train on it)."""
        if (not self.pack_rows or ids.device.type != "cpu" or len(lengths) < 2 or not packable(lm, max(lengths))
                or any(getattr(m, "gradient_checkpointing", False) is True for m in lm.modules())):
            return False
        if id(lm) not in self._pack_checked:
            n = [min(16, length) for length in lengths[:2]]
            was_training = lm.training
            try:
                with torch.inference_mode():
                    lm.eval()  # no dropout: the two forwards must be comparable
                    packed = packed_hidden(lm.base_model, ids[:2], n)
                    padded = lm.base_model(input_ids=ids[:2, : max(n)], use_cache=False).last_hidden_state
                    padded = torch.cat([padded[i, :k] for i, k in enumerate(n)])
            finally:
                lm.train(was_training)
            self._pack_checked[id(lm)] = bool(torch.allclose(packed, padded, rtol=1e-3, atol=1e-3))
            if not self._pack_checked[id(lm)]:
                warnings.warn(f"{type(lm).__name__}: the packed (padding-free) forward differs from the padded one; "
                              "training with padding", stacklevel=2)
        return self._pack_checked[id(lm)]

    def _cpu_plan(self, model, inputs: dict, any_device: bool = False):
        """(the causal LM, each row's length) when the CPU path computes exactly what TRL's head would, else None.
        `any_device`: the tiled pass is needed (head statistics), so any device and dtype, even with the
        fast path off."""
        if not (self.cpu_fast_path or any_device) or self.aux_loss_enabled or self.args.world_size > 1:
            return None
        ids, labels = inputs.get("input_ids"), inputs.get("labels")
        if ids is None or labels is None or (ids.device.type != "cpu" and not any_device) or set(inputs) - _MODEL_INPUTS:
            return None
        lm = model
        if is_peft_model(model):  # LoRA layers sit inside the base model; prompt learning adds tokens: not here
            if model.active_peft_config.is_prompt_learning:
                return None
            lm = model.get_base_model()
        head = lm.get_output_embeddings()
        if type(head) is not torch.nn.Linear or not plain_head(lm) or (head.weight.dtype != torch.float32
                                                                         and not any_device):
            return None
        attn = inputs.get("attention_mask")
        if attn is None:
            return lm, [ids.shape[1]] * ids.shape[0]
        attn = attn.bool()
        if (attn[:, 1:] & ~attn[:, :-1]).any():  # not right padding
            return None
        lengths = attn.sum(1)
        beyond = torch.arange(labels.shape[1] - 1, device=labels.device) >= (lengths[:, None] - 1)
        if (labels[:, 1:] != -100)[beyond].any():  # a label on a padding position
            return None
        return lm, lengths.tolist()

    def _log_metrics(self, mode: str, inputs: dict, outputs: Any) -> None:
        """TRL's entropy / token accuracy / token count, plus the loss's own metrics (e.g. TALR's tau)."""
        metrics = self._metrics[mode]
        num_valid = self.accelerator.gather_for_metrics(outputs.label_mask.sum()).sum()
        if outputs.entropy is not None:
            ent = self.accelerator.gather_for_metrics(outputs.entropy.detach().sum()).sum()
            metrics["entropy"].append((ent / num_valid).item() if num_valid > 0 else 0.0)
        if outputs.is_top1 is not None:
            top1 = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
            metrics["mean_token_accuracy"].append((top1 / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train" and "attention_mask" in inputs:
            seen = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += seen // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        for name, value in getattr(self.token_loss, "metrics", {}).items():
            metrics[name].append(float(value))
