"""LESS, gradient-based selection for a target set (Xia et al., ICML 2024, arXiv 2402.04333).

Reference code: princeton-nlp/LESS (`less/data_selection/collect_grad_reps.py`, `get_info.py`,
`matching.py`), read and followed here step by step:

1. **Warm-up**: LoRA on a small random share of the pool (`warmup_fraction`, the paper's 5%) for
   `warmup_epochs` (4), through the project's own trainer: the score stage trains it once (cached) as
   this scorer's reference model (`needs = {"reference_model"}`, `reference_plan` picks the rows and
   the settings); a checkpoint, with Adam's state, is saved at the end of each epoch.
2. **Features** at a checkpoint: the gradient of each example's mean response-token loss with respect
   to the LoRA parameters. Pool examples get Adam's update direction from the warm-up optimizer's
   moments m, v (reference `obtain_gradients_with_adam`; no bias correction, eps inside the root):
   `m' = b1 m + (1-b1) g`, `v' = b2 v + (1-b2) g^2`, `feature = m' / sqrt(v' + eps)`, with b1, b2,
   eps those the warm-up optimizer ran with (the reference hard-codes 0.9, 0.999, 1e-8, its training
   settings). Target examples keep the plain gradient `g` (the reference's "sgd" type).
3. **Projection**: a seeded Rademacher matrix (entries +-1/sqrt(dim)) applied block by block with
   torch's own ops, as the reference's TRAK `BasicProjector` (Rademacher, seed 0) does on a machine
   without its CUDA kernel. `dim` defaults to 1024 for CPU (the paper uses 8192). Why not a library:
   `traker` 0.3.2 ships only a source archive whose build pulls a second torch (2.14.1 with CUDA
   wheels) into the build environment; `dattri` 0.3.0 installs but pulls `pretty_midi` and `mido`
   for a projector that is the same seeded block matrix product.
4. **Score**: features L2-normalized; `cosine(pool feature, target feature)` summed over checkpoints
   with weights = each epoch's mean learning rate (normalized to sum 1); then the mean over the target
   examples of each task and the max over tasks (`matching.py`: reshape to tasks, `.mean(-1).max(-1)`).
   With one task the score is the mean cosine to the target examples. Tasks are the target rows'
   `task_column` (`domain`) values.

By default the last checkpoint alone is used (`checkpoints: 1`): at this scale the warm-up is a few
steps, and every extra checkpoint costs one more gradient pass over pool and target. Features are cached
per checkpoint, example table, projection and code next to the warm-up run (`<run>/less_features/`),
so a new target set re-uses the pool's features.

Column: `less` (higher = the example's update points where the target's gradients point).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from pipeline.core.config import LoraSection, TrainSection, check_section
from pipeline.core.hashing import config_hash, file_hash, fingerprint
from pipeline.core.io import atomic_path
from pipeline.core.registry import ConfigError
from pipeline.models.loading import encode_examples, load_model, model_key
from pipeline.scorers import register_scorer
from pipeline.scorers.base import ScoreContext, Scorer

# The reference's LoRA for gradient features (get_info.py defaults; the paper's warm-up used r=128 on 7B).
DEFAULT_LORA: dict[str, Any] = {"r": 8, "alpha": 32, "dropout": 0.1,
                                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
BLOCK = 1 << 14  # gradient coordinates per block of the projection matrix (part of the projection's definition)
GROUP = 64  # examples whose full gradients are held at once before projecting (amortizes generating the matrix)


# ---------------------------------------------------------------------------------------------
# The formulas (plain functions, tested one by one).


def adam_direction(grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                   betas: tuple[float, float], eps: float) -> torch.Tensor:
    """Adam's update direction had the optimizer taken one more step on `grad` (LESS's training features)."""
    b1, b2 = betas
    m = b1 * exp_avg + (1 - b1) * grad
    v = b2 * exp_avg_sq + (1 - b2) * grad**2
    return m / torch.sqrt(v + eps)


def rademacher_block(seed: int, block: int, rows: int, dim: int) -> torch.Tensor:
    """Block `block` (rows x dim) of the seeded projection matrix: entries +-1/sqrt(dim)."""
    state = int(np.random.SeedSequence([seed, block]).generate_state(1)[0])
    gen = torch.Generator().manual_seed(state)
    signs = torch.randint(0, 2, (rows, dim), generator=gen, dtype=torch.int8)
    return (signs.to(torch.float32) * 2 - 1) / math.sqrt(dim)


def project(grads: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """`grads` (n x p) times the seeded p x dim Rademacher matrix, built and applied one block of rows at a time."""
    grads = grads.to(torch.float32)
    out = torch.zeros(grads.shape[0], dim)
    for b, start in enumerate(range(0, grads.shape[1], BLOCK)):
        chunk = grads[:, start:start + BLOCK]
        out += chunk @ rademacher_block(seed, b, chunk.shape[1], dim)
    return out


def influence(train: list[torch.Tensor], target: list[torch.Tensor], weights: list[float],
              tasks: list[str]) -> np.ndarray:
    """LESS's score: sum over checkpoints of weight x cosine(train, target), mean over each task's target
    rows, max over tasks (`matching.py`); equal weights when they sum to 0. `train[c]` (n x d) and `target[c]` (m x d) are one checkpoint's
    projected features; `tasks` names the task of each target row."""
    if sum(weights) <= 0:  # e.g. one checkpoint whose only step ran at learning rate 0 (warm-up of the schedule)
        weights = [1.0] * len(weights)
    total = sum(weights)
    sim = sum((w / total) * (torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T)
              for w, a, b in zip(weights, train, target, strict=True))
    labels = np.asarray(tasks)
    per_task = [sim[:, torch.from_numpy(labels == t)].mean(dim=1) for t in dict.fromkeys(tasks)]
    return torch.stack(per_task, dim=1).max(dim=1).values.double().numpy()


# ---------------------------------------------------------------------------------------------
# Warm-up checkpoints: the LoRA weights and Adam's moments, in the model's parameter order.


def checkpoint_dirs(warmup: str | Path) -> list[Path]:
    """The epoch checkpoints of a warm-up run, oldest first: `warmup` is the run's `model` folder (what the
    score stage passes), the run folder, or one `checkpoint-N` folder."""
    path = Path(warmup)
    if (path / "optimizer.pt").exists():
        return [path]
    for run in (path.parent, path):
        found = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        found = [p for p in found if (p / "optimizer.pt").exists() and (p / "adapter_config.json").exists()]
        if found:
            return found
    raise ConfigError("score.params.warmup", f"{warmup}: no LoRA checkpoint with optimizer state (optimizer.pt); "
                      "leave `warmup` unset so the score stage trains the warm-up")


def checkpoint_weight(ckpt: Path) -> float:
    """The mean learning rate of the epoch that ends at `ckpt` (the paper's checkpoint weight), from its
    trainer_state.json; 1.0 when none was logged."""
    state_file = ckpt / "trainer_state.json"
    if not state_file.exists():
        return 1.0
    state = json.loads(state_file.read_text())
    epoch = float(state.get("epoch") or 0.0)
    lrs = [h["learning_rate"] for h in state.get("log_history", [])
           if "learning_rate" in h and epoch - 1 < float(h.get("epoch", 0.0)) <= epoch + 1e-9]
    return float(np.mean(lrs)) if lrs else 1.0


def load_lora(base: str, ckpt: Path):
    """The base model with the checkpoint's LoRA adapter, in eval mode, only the LoRA weights trainable."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(base, dtype=torch.float32), str(ckpt), is_trainable=True)
    model.eval()
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def lora_params(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable (LoRA) parameters in the order the trainer handed them to its optimizer."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def adam_state(ckpt: Path, params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, Any]:
    """Flat exp_avg and exp_avg_sq aligned with `params`, and the optimizer's betas and eps.

    The trainer's optimizer numbers parameters group by group in `named_parameters` order (weight-decay
    group first; every LoRA matrix is in it); shapes are checked so a misalignment cannot pass silently.
    """
    saved = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    order = [i for g in saved["param_groups"] for i in g["params"]]
    if len(order) != len(params):
        raise ValueError(f"{ckpt}: the optimizer holds {len(order)} tensors, the adapter has {len(params)} "
                         "trainable ones")
    avg, avg_sq = [], []
    for i, (name, p) in zip(order, params, strict=True):
        state = saved["state"].get(i)
        if state is None or state["exp_avg"].shape != p.shape:
            raise ValueError(f"{ckpt}: optimizer state {i} does not match parameter {name} {tuple(p.shape)}")
        avg.append(state["exp_avg"].reshape(-1).float())
        avg_sq.append(state["exp_avg_sq"].reshape(-1).float())
    group = saved["param_groups"][0]
    return {"exp_avg": torch.cat(avg), "exp_avg_sq": torch.cat(avg_sq),
            "betas": tuple(float(b) for b in group.get("betas", (0.9, 0.999))), "eps": float(group.get("eps", 1e-8))}


def example_gradient(model, params: list[torch.nn.Parameter], enc: dict) -> torch.Tensor:
    """Flat gradient of one example's mean response-token NLL with respect to `params` (the LoRA weights)."""
    dev = params[0].device
    ids = torch.tensor([enc["input_ids"]], device=dev)
    labels = ids.masked_fill(torch.tensor([enc["completion_mask"]], device=dev) == 0, -100)
    loss = model(input_ids=ids, labels=labels).loss
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads]).float().cpu()  # features are built on the CPU


def gradient_features(model, encoded: list[dict], state: dict | None, dim: int, seed: int,
                      progress: bool = False) -> torch.Tensor:
    """Projected per-example features (n x dim): Adam directions when `state` is given, plain gradients else."""
    params = [p for _, p in lora_params(model)]
    out, pending = [], []
    for i, enc in enumerate(encoded):
        g = example_gradient(model, params, enc)
        if state is not None:
            g = adam_direction(g, state["exp_avg"], state["exp_avg_sq"], state["betas"], state["eps"])
        pending.append(g)
        if len(pending) == GROUP or i == len(encoded) - 1:
            out.append(project(torch.stack(pending), dim, seed))
            pending = []
        if progress and (i + 1) % 50 == 0:
            print(f"[less] gradients {i + 1}/{len(encoded)}", flush=True)
    return torch.cat(out) if out else torch.zeros(0, dim)


# ---------------------------------------------------------------------------------------------
# The target set.


def load_target(target: str) -> pl.DataFrame:
    """Prompt/response rows of the target set: a parquet with those columns (a run's split), or any source
    `pipeline ingest` reads (JSONL, JSON, CSV, parquet, a folder)."""
    from pipeline.data.examples import example_id
    from pipeline.data.source import read_source

    path = Path(target)
    if not path.exists():
        raise ConfigError("score.params.target", f"{target}: no such file (give `validation` for the run's "
                          "validation split, or a JSONL/parquet file of prompt/response rows)")
    rows = pl.read_parquet(path, glob=False) if path.suffix == ".parquet" else None
    if rows is None or not {"prompt", "response"} <= set(rows.columns):
        rows = read_source(str(path))[0]
    if "id" not in rows.columns:
        rows = rows.with_columns(pl.Series("id", [example_id(p, r) for p, r in
                                                  zip(rows["prompt"], rows["response"], strict=True)]))
    if rows.height == 0:
        raise ConfigError("score.params.target", f"{target}: the target set has no rows")
    return rows


@register_scorer("less")
class Less(Scorer):
    """Column `less`: the LESS influence of each example on the target set (see the module docstring)."""

    version = "1"
    model_params = ("warmup",)
    needs = frozenset({"reference_model"})
    reference_param = "warmup"

    def __init__(self, target: str = "validation", warmup: str | None = None, warmup_fraction: float = 0.05,
                 warmup_epochs: int = 4, warmup_train: dict | None = None, lora: dict | None = None,
                 dim: int = 1024, seed: int = 0, checkpoints: int = 1, task_column: str = "domain"):
        if not 0 < warmup_fraction <= 1:
            raise ConfigError("warmup_fraction", f"must be in (0, 1], got {warmup_fraction}")
        if warmup_epochs < 1 or dim < 1 or checkpoints < 1:
            raise ConfigError("dim" if dim < 1 else "checkpoints" if checkpoints < 1 else "warmup_epochs",
                              "must be >= 1")
        if target != "validation" and not Path(target).exists():
            raise ConfigError("target", f"{target}: no such file (give `validation` for the run's validation split, "
                              "or a JSONL/parquet file of prompt/response rows)")
        check_section(LoraSection, {**DEFAULT_LORA, **(lora or {})}, "lora")
        self.target, self.warmup, self.warmup_fraction = target, warmup, warmup_fraction
        self.warmup_epochs, self.warmup_train, self.lora = warmup_epochs, warmup_train, lora
        self.dim, self.seed, self.checkpoints, self.task_column = dim, seed, checkpoints, task_column

    def columns(self) -> list[str]:
        return ["less"]

    def reference_plan(self, examples: pl.DataFrame, settings: dict[str, Any], seed: int
                       ) -> tuple[pl.DataFrame, dict[str, Any]]:
        """The warm-up: a seeded random `warmup_fraction` of the pool (at least one row), LoRA, `warmup_epochs`
        epochs with a checkpoint (and Adam's state) at the end of each; `warmup_train` on top."""
        n = max(1, math.ceil(self.warmup_fraction * examples.height))
        pick = np.sort(np.random.default_rng(seed).permutation(examples.height)[:n])
        rows = examples[pick.tolist()]
        merged = {**settings, **(self.warmup_train or {})}
        cfg = check_section(TrainSection, merged, "score.params.warmup_train")
        per_epoch = math.ceil(math.ceil(n / cfg.batch_size) / cfg.grad_accum)
        return rows, {**merged, "lora": {**DEFAULT_LORA, **(self.lora or {})}, "epochs": self.warmup_epochs,
                      "max_steps": -1, "save_steps": per_epoch}

    def score(self, examples: pl.DataFrame, ctx: ScoreContext) -> tuple[pl.DataFrame, dict]:
        """Pool features (Adam) and target features (SGD) at the last `checkpoints` warm-up checkpoints, then
        the learning-rate-weighted cosine, mean per target task, max over tasks."""
        if self.warmup is None:
            raise ValueError("less needs `warmup`, a warm-up run's model folder (the score stage trains one)")
        if self.target == "validation":
            raise ConfigError("score.params.target", "`validation` is resolved by the score stage; outside a "
                              "recipe give a file of prompt/response rows")
        target = load_target(self.target)
        tasks = (target.get_column(self.task_column).cast(pl.Utf8).fill_null("default").to_list()
                 if self.task_column in target.columns else ["default"] * target.height)
        ckpts = checkpoint_dirs(self.warmup)[-self.checkpoints:]
        weights = [checkpoint_weight(c) for c in ckpts]
        tok = ctx.tokenizer()
        train_f, target_f = [], []
        for ckpt in ckpts:
            loaded: dict[str, Any] = {}  # the checkpoint's model, loaded once if a feature set is not cached
            train_f.append(self._features(ckpt, examples, tok, ctx, loaded, adam=True))
            target_f.append(self._features(ckpt, target, tok, ctx, loaded, adam=False))
        scores = influence(train_f, target_f, weights, tasks)
        meta = {"less": {"checkpoints": [c.name for c in ckpts], "weights": weights, "dim": self.dim,
                         "target_rows": target.height, "tasks": sorted(set(tasks))}}
        return pl.DataFrame({"id": examples.get_column("id"), "less": scores}), meta

    def _features(self, ckpt: Path, rows: pl.DataFrame, tok, ctx: ScoreContext, loaded: dict[str, Any],
                  adam: bool) -> torch.Tensor:
        """Projected features of `rows` at `ckpt`, read from the feature cache next to the warm-up run or computed."""
        key = config_hash([model_key(ctx.model_name), str(ckpt.resolve()), file_hash(str(ckpt / "optimizer.pt")),
                           fingerprint(rows), adam, self.dim, self.seed, ctx.max_length, BLOCK,
                           file_hash(__file__)], 20)
        path = ckpt.parent.parent / "less_features" / f"{key}.pt"
        if path.exists():
            return torch.load(path, weights_only=True)
        model = loaded["model"] = loaded.get("model") or load_lora(ctx.model_name, ckpt)
        state = adam_state(ckpt, lora_params(model)) if adam else None
        feats = gradient_features(model, encode_examples(tok, rows, ctx.max_length), state, self.dim, self.seed,
                                  progress=ctx.progress)
        with atomic_path(path) as tmp:
            torch.save(feats, tmp)
        return feats
