"""Fine-tuning through TRL's SFTTrainer on pre-tokenized examples (completion-only loss).

Examples are tokenized by `pipeline.models.loading.encode_examples`, the same path the scorers and the
evaluation use, and handed to TRL as `input_ids` + `completion_mask`, from which TRL builds labels
that ignore prompt tokens. The loss is a `pipeline.losses` token loss run by
`pipeline.training.trainer.TokenLossSFTTrainer`; example weights and per-token columns (token labels,
reference NLLs) travel with the examples to it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch

from pipeline.core.config import LoraSection, MaskedThoughtSection, TrainSection, check_section
from pipeline.models.loading import encode_examples, load_model, load_tokenizer


def train_settings(cfg: TrainSection | dict | None) -> TrainSection:
    """A `train` section with every default filled in and checked (`pipeline.core.config.TrainSection`)."""
    return cfg if isinstance(cfg, TrainSection) else check_section(TrainSection, cfg, "train")


def build_dataset(tokenizer, examples: pl.DataFrame, max_length: int, weights: list[float] | None = None,
                  token_columns: dict[str, list[list[float]]] | None = None):
    """A `datasets.Dataset` of input_ids + completion_mask (+ example weight, + per-token columns when given).

    Each per-token row is either aligned with the example's input_ids (same length) or holds one
    value per response token (placed on the response positions, 0 on the prompt). Loss weights from the
    data multiply in here: `data_weight` into `example_weight`, chat turns' `loss_weight` into `token_weight`
    (`pipeline.data.weights`).
    """
    import datasets

    from pipeline.data.weights import example_weights, with_turn_weights
    from pipeline.losses.base import TOKEN_WEIGHT

    encoded = encode_examples(tokenizer, examples, max_length)
    columns: dict[str, list] = {
        "input_ids": [e["input_ids"] for e in encoded],
        "completion_mask": [e["completion_mask"] for e in encoded],
    }
    if weights is not None and len(weights) != len(encoded):
        raise ValueError(f"{len(weights)} weights for {len(encoded)} examples")
    weights = example_weights(examples, weights)
    if weights is not None:
        columns["example_weight"] = [float(w) for w in weights]
    for name, rows in (token_columns or {}).items():
        if len(rows) != len(encoded):
            raise ValueError(f"token column {name!r} has {len(rows)} rows for {len(encoded)} examples")
        columns[name] = [align_token_row(name, i, list(r), e["completion_mask"])
                         for i, (r, e) in enumerate(zip(rows, encoded, strict=True))]
    return datasets.Dataset.from_dict(with_turn_weights(encoded, columns, TOKEN_WEIGHT))


def align_token_row(name: str, index: int, row: list, completion_mask: list[int]) -> list:
    """One per-token row aligned with input_ids: as is, or response-only values scattered onto the response."""
    if len(row) == len(completion_mask):
        return row
    n_resp = sum(completion_mask)
    if len(row) == n_resp:
        values = iter(row)
        return [next(values) if m else 0 for m in completion_mask]
    raise ValueError(
        f"token column {name!r}, example {index}: {len(row)} values, expected {len(completion_mask)} "
        f"(input_ids) or {n_resp} (response tokens); was it scored with the same tokenizer and max_length?"
    )


def sft_config(cfg: TrainSection, output_dir: Path, seed: int, loss: Any = None):
    """TRL SFTConfig from our `train` section; CPU-safe (no bf16, no forced checkpointing). `loss` (built
    from `cfg.loss` when not given) decides TRL's `loss_type`."""
    from trl import SFTConfig

    if loss is None:
        from pipeline.losses import get_loss

        loss = get_loss(cfg.loss, **cfg.loss_params)
    on_gpu = torch.cuda.is_available()
    save_steps = cfg.save_steps
    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=cfg.max_steps,
        num_train_epochs=float(cfg.epochs),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=float(cfg.learning_rate),
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=float(cfg.warmup_ratio),  # a float in [0, 1) is a ratio
        weight_decay=float(cfg.weight_decay),
        adam_beta2=float(cfg.adam_beta2),
        max_length=cfg.max_length,
        completion_only_loss=True,
        **{_checkpointing_field(): cfg.gradient_checkpointing},
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if save_steps > 0 else "no",
        save_steps=save_steps if save_steps > 0 else 500,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],  # tensorboard: output_dir/runs/<time_host>
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=not os.isatty(2),
        loss_type=getattr(loss, "trl_loss_type", "nll"),
        # keep example_weight / token_label / ref_nll for our collator
        remove_unused_columns=False,
    )


def _checkpointing_field() -> str:
    """transformers 5.x renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns)."""
    import dataclasses

    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def build_trainer(model_name: str, examples: pl.DataFrame, output_dir: str | Path, cfg: TrainSection | dict,
                  seed: int = 0, weights: list[float] | None = None,
                  token_columns: dict[str, list[list[float]]] | None = None, callbacks: list | None = None,
                  loss: Any = None):
    """The `TokenLossSFTTrainer` that `train` runs: model and tokenizer loaded, dataset built, settings applied.

    `cfg` is a `train` section (defaults filled in here); `loss` the built loss (default: built from
    `cfg.loss`); the trainer writes checkpoints under output_dir/checkpoints.
    benchmarks/bench_training.py times this very trainer.
    """
    from pipeline.losses import get_loss
    from pipeline.training.trainer import TokenLossSFTTrainer, check_columns

    cfg = train_settings(cfg)
    loss = loss if loss is not None else get_loss(cfg.loss, **cfg.loss_params)
    check_columns(loss, set(token_columns or {}))
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, dtype=torch.float32).train()
    masked = masked_thought(cfg.masked_thought, tokenizer, model, seed)
    dataset = build_dataset(tokenizer, examples, cfg.max_length, weights, token_columns)
    igf = cfg.igf_filter.model_dump() if cfg.igf_filter else None
    if igf:  # IGF's predicted information gain travels with each example
        dataset = dataset.add_column("igf_score", igf_scores(examples, igf))
    return TokenLossSFTTrainer(
        model=model,
        args=sft_config(cfg, Path(output_dir) / "checkpoints", seed, loss),
        train_dataset=dataset,
        processing_class=tokenizer,
        loss=loss,
        masked_thought=masked,
        igf_filter=igf,
        base_model=model_name,  # loaded (frozen) only for a loss with `reference_kl`: ASFT's anchor
        callbacks=[*crash_callbacks(), *(callbacks or [])],
        peft_config=lora_config(cfg.lora),
    )


def train(model_name: str, examples: pl.DataFrame, output_dir: str | Path, cfg: TrainSection | dict, seed: int = 0,
          weights: list[float] | None = None,
          token_columns: dict[str, list[list[float]]] | None = None, loss: Any = None) -> dict:
    """Fine-tune `model_name` on `examples` with the loss `cfg.loss` (or the built `loss`); save model and
    tokenizer to output_dir/model.

    `weights` (one per example) multiply each example's token losses; `token_columns` carries the
    per-token columns (`token_label`, `ref_nll`) some losses need. Returns the training metrics,
    with `phase_s`: seconds spent building the trainer (model load, dataset, init), training and saving.
    """
    start = time.perf_counter()
    cfg = train_settings(cfg)
    output_dir = Path(output_dir)
    trainer = build_trainer(model_name, examples, output_dir, cfg, seed, weights, token_columns, loss=loss)
    built = time.perf_counter()
    resume = _last_checkpoint(output_dir / "checkpoints")
    result = trainer.train(resume_from_checkpoint=resume)
    trained = time.perf_counter()
    check_finite(trainer, result.training_loss, output_dir, cfg)
    final = output_dir / "model"
    save_model(trainer, model_name, trainer.processing_class, final, output_dir / "adapter" if cfg.lora else None)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "runtime_s": result.metrics.get("train_runtime"),
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in history],
        "model_dir": str(final),
        "resumed_from": resume,
        "igf_skipped": trainer.igf_filtered if cfg.igf_filter else None,  # stream examples failing their step
        "igf_fallback_steps": trainer._igf_sampler.fallback_steps if cfg.igf_filter else None,
        "train_tokens": int(getattr(trainer, "_total_train_tokens", 0)),  # real (non-pad) tokens trained on
        "phase_s": {"build": round(built - start, 3), "train": round(trained - built, 3),
                    "save": round(time.perf_counter() - trained, 3)},
    }


def check_finite(trainer, loss: float, output_dir: Path, cfg: TrainSection) -> None:
    """A ValueError, before anything is saved, when training diverged (a non-finite final loss or weights): a NaN
    model is never published. The loss log is kept as output_dir/train_log.json."""
    import json
    import math

    weights_ok = all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
    if math.isfinite(loss) and weights_ok:
        return
    log = output_dir / "train_log.json"
    log.write_text(json.dumps(trainer.state.log_history, default=str) + "\n")
    what = ("weights are" if math.isfinite(loss) else f"loss ({loss}) and weights are" if not weights_ok
            else f"loss ({loss}) is")
    raise ValueError(f"train: training diverged after {trainer.state.global_step} steps: the final {what} not "
                     f"finite, so no model was saved; lower train.learning_rate (now {cfg.learning_rate:g}); the "
                     f"loss log is in {log}")


def save_model(trainer, model_name: str, tokenizer, final: Path, adapter: Path | None) -> None:
    """A plain, loadable Hugging Face folder in `final`, written by rank 0 only.

    Every rank calls `trainer.save_model` (under FSDP it gathers the full state dict, which the
    shipped accelerate config asks for with FULL_STATE_DICT); LoRA saves the adapter that way, then
    rank 0 merges it: in one process into the trained model itself (its base weights are frozen, so
    they are the base's; no second load), across processes into a fresh copy of the base, so no rank
    merges inside a sharded model. The trainer's model is not usable for training after a LoRA save.
    """
    if adapter is None:
        trainer.save_model(str(final))
    else:
        trainer.save_model(str(adapter))
        if trainer.is_world_process_zero():
            if trainer.args.world_size == 1:
                merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            else:
                from peft import PeftModel

                base = load_model(model_name, dtype=torch.float32, device_=torch.device("cpu"))
                if base.get_input_embeddings().num_embeddings != len(tokenizer):  # Masked Thought's added <mask>
                    base.resize_token_embeddings(len(tokenizer))
                merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
            merged.save_pretrained(str(final))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(final))
    trainer.accelerator.wait_for_everyone()


def igf_scores(examples: pl.DataFrame, options: dict) -> list[float]:
    """Each example's predicted information gain (`train.igf_filter.column` of the examples) for the IGF filter."""
    column = options["column"]
    if column not in examples.columns:
        raise ValueError(f"train.igf_filter: the examples have no column {column!r} (the train stage joins it "
                         "from the score table; score with information_gain)")
    values = examples.get_column(column).cast(pl.Float64)
    if values.null_count() or not values.is_finite().all():
        raise ValueError(f"train.igf_filter: column {column!r} has missing or non-finite values")
    return values.to_list()


def lora_config(options: LoraSection | dict | None):
    """A peft `LoraConfig` from `train.lora` ({r, alpha, dropout, target_modules}), or None for full fine-tuning."""
    if not options:
        return None
    from peft import LoraConfig

    o = options if isinstance(options, LoraSection) else check_section(LoraSection, options, "train.lora")
    return LoraConfig(r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=o.target_modules,
                      task_type="CAUSAL_LM")


def crash_callbacks() -> list:
    """The crash-injection callback when SFT_PIPELINE_CRASH=train:N is set (resume tests), else none."""
    from transformers import TrainerCallback

    from pipeline.core.faults import crash_point, maybe_crash

    class CrashAfterSave(TrainerCallback):
        """Kill the process after the checkpoint of the configured step is on disk."""

        def on_save(self, args, state, control, **kwargs):
            maybe_crash("train", state.global_step)

    return [CrashAfterSave()] if crash_point("train") is not None else []


def masked_thought(options: MaskedThoughtSection | dict | None, tokenizer, model, seed: int):
    """The Masked Thought transform from `train.masked_thought`, or None unless `enabled`.

    `replace="mask"` uses the tokenizer's mask token, adding `<mask>` (and resizing the
    embeddings) when it has none.
    """
    from pipeline.losses import MaskedThought

    o = (options if isinstance(options, MaskedThoughtSection)
         else check_section(MaskedThoughtSection, options, "train.masked_thought"))
    if not o.enabled:
        return None
    mask_id = None
    if o.replace == "mask":
        if tokenizer.mask_token is None:
            tokenizer.add_special_tokens({"mask_token": "<mask>"})
            model.resize_token_embeddings(len(tokenizer))
        mask_id = tokenizer.mask_token_id
    return MaskedThought(
        p=o.p, cap=o.cap, ramp_ratio=o.ramp_ratio, ramp_steps=o.ramp_steps, replace=o.replace, seed=seed,
        vocab_size=min(len(tokenizer), model.get_input_embeddings().num_embeddings), mask_token_id=mask_id,
    )


def _last_checkpoint(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder))
