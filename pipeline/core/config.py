"""Recipes: plain YAML data with torchtune-style `key=value` overrides, checked against typed sections.

`pipeline run sft-math --set train.max_steps=20 --set select.fraction=0.5` loads
`recipes/sft-math.yaml`, applies each override (values parsed as YAML) and validates the whole
recipe against `Recipe`, whose sections hold the one default of every key: a recipe file only says
what it changes. A misspelt key, a value of the wrong type or a bad YAML value raises `ConfigError`
naming the key path and the keys allowed there. A part's own free parameters (`select`,
`score.params`, `train.loss_params`) are checked against that part's declared parameters by
`pipeline.flows.recipe`, which knows the registries.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.registry import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

# Short names a recipe may use for the offline defaults (see pipeline.models.assets).
DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
# Tokens per example where scoring, training and evaluation tokenize (sft-math's examples fit).
DEFAULT_MAX_LENGTH = 384
# Where runs and data cards go unless a recipe (`output_dir`, `cards_dir`) or a command says otherwise.
DEFAULT_OUTPUT_DIR = "runs"
DEFAULT_CARDS_DIR = "data_cards"
# Characters per prompt or response above which ingest quarantines a record as too long.
DEFAULT_MAX_CHARS = 32_000
# Upper bounds of keys that memory or time follow (a typo like n_train=1000000000 must not run the machine
# out of memory): rows of a generated split or a subset, tokens of a sequence, tokens generated per answer,
# rows per batch, optimizer steps, epochs, characters per field, seeds (numpy takes seeds below 2**32).
MAX_ROWS = 1_000_000
MAX_TOKENS = 131_072
MAX_NEW_TOKENS = 32_768
MAX_BATCH = 4096
MAX_STEPS = 10_000_000
MAX_EPOCHS = 1000
MAX_CHARS = 10_000_000
MAX_SEED = 2**32 - 1


# A `data.dataset` entry; which rg: domains exist and which settings they take is checked when loading.
_DATASET = re.compile(r"gsm_symbolic|gsm8k|rg:[a-z0-9_]+(;[A-Za-z_][A-Za-z0-9_]*=[^;]*)*")


def cache_dir() -> Path:
    """Where converted models, stage outputs and references live ($SFT_PIPELINE_CACHE)."""
    root = os.environ.get("SFT_PIPELINE_CACHE") or Path.home() / ".cache" / "sft-pipeline"
    return Path(root)


def check_path_component(value: str) -> str:
    """`value` if it can name one folder (a run, a card, a recipe): no `/`, `\\`, `..`, leading `.` or NUL;
    else a ValueError, since a name that becomes a path must never lead outside its folder."""
    if not value or len(value) > 200 or any(c in value for c in "/\\\0") or value.startswith("."):
        raise ValueError(f"{value[:80]!r} must be one plain folder name (no /, \\, NUL or leading ., "
                         "at most 200 characters)")
    return value


# transformers' SchedulerType names; a name not listed here is looked up in transformers itself (newer versions).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay")


def check_scheduler(name: str) -> str:
    """`name` if transformers knows it as a learning-rate scheduler, else a ValueError listing the names."""
    if name in SCHEDULERS:
        return name
    try:
        from transformers.trainer_utils import SchedulerType

        known = [s.value for s in SchedulerType]
    except ImportError:
        known = list(SCHEDULERS)
    if name not in known:
        raise ValueError(f"unknown learning-rate scheduler (transformers' names: {', '.join(known)})")
    return name


# ---------------------------------------------------------------------------------------------
# Typed sections: the one default of every recipe key.


class Section(BaseModel):
    """A recipe section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # floats finite


class NoiseSection(Section):
    """Benchmarks only: corrupt a share of the TRAINING rows in place with canary kinds
    (`pipeline.data.canaries.corrupt`); each corrupted row keeps its kind in a `noise` column."""

    share: float = Field(gt=0, lt=1)
    kinds: list[str] | None = None  # None = all kinds (pipeline.data.canaries.KINDS)


class DataSection(Section):
    # gsm_symbolic (offline, reasoning-gym) | gsm8k (openai/gsm8k, online) | rg:<numeric reasoning-gym domain>
    # [;key=value...] (offline, e.g. rg:chain_sum;max_digits=1), or a list of them: a mixture whose rows carry
    # their domain and whose n_train / n_val / n_test are shared out over the domains (pipeline.data.math)
    dataset: str | list[str] = "gsm_symbolic"
    n_train: int = Field(96, gt=0, le=MAX_ROWS)
    n_val: int = Field(16, gt=0, le=MAX_ROWS)
    n_test: int = Field(48, gt=0, le=MAX_ROWS)
    subset: str | None = None  # the train flow's input: a data card folder or a parquet of examples
    # Your own data instead of `dataset` (pipeline.data.source): a JSONL/JSON/CSV/parquet file (.gz too),
    # a folder of them, a `pipeline ingest` output folder, a datasets.save_to_disk folder or a hub name.
    source: str | None = None
    split: str = "train"  # the split of a hub dataset `source`
    # canonical name -> your field: prompt, response, messages, answer, domain, id, weight (per-example loss weight)
    fields: dict[str, str] = {}
    domain: str | None = None  # domain of records without one; None = the file name in a folder, else "default"
    validation: str | None = None  # optional held-out sources (same formats) for datamix / evaluation
    test: str | None = None
    max_chars: int = Field(DEFAULT_MAX_CHARS, gt=0, le=MAX_CHARS)  # longer prompts or responses are quarantined
    noise: NoiseSection | None = None  # benchmarks: e.g. {share: 0.3} corrupts 30% of the train split

    @pydantic.field_validator("dataset")
    @classmethod
    def _dataset_names(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names:
            raise ValueError("an empty list: give gsm_symbolic, gsm8k, rg:<name>, or a list of them")
        for name in names:
            if not _DATASET.fullmatch(name):
                raise ValueError(f"{name!r} is not gsm_symbolic, gsm8k, or rg:<reasoning-gym domain>[;key=value...] "
                                 "(e.g. rg:chain_sum;max_digits=1)")
        domains = [n.split(";", 1)[0] for n in names]
        if len(set(domains)) < len(domains):
            raise ValueError(f"a domain appears twice in {names}: list each domain once")
        return value

    @pydantic.field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - {"prompt", "response", "messages", "answer", "domain", "id", "weight"})
        if unknown:
            raise ValueError(f"unknown canonical field {unknown[0]!r}: map prompt, response, messages, answer, "
                             "domain, id or weight to your field names")
        return value


class ScoreSection(Section):
    scorer: str | list[str] = "perplexity"  # a registered scorer, module:attr, or a list of them
    params: dict[str, Any] = {}  # the scorer's parameters; with a list, {scorer: {...}}
    max_length: int = Field(DEFAULT_MAX_LENGTH, gt=0, le=MAX_TOKENS)  # tokens per example (prompt truncated from the left)
    max_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS * 64)  # padded tokens per batch; None = 1024 on CPU, 16384 on GPU
    shard_size: int = Field(1024, gt=0, le=MAX_ROWS)  # rows per resumable shard
    executor: Literal["local", "ray"] = "local"
    num_workers: int = Field(2, gt=0, le=1024)  # Ray actors


class MaskedThoughtSection(Section):
    """Masked Thought (arXiv 2403.02178): corrupt response input tokens at a rate ramping from p to cap.

    The paper's reference trainer ramps from 0 to the cap over the first 66% of training
    (`rate = cap * step / (0.66 * max_steps + 1)`); that is the default schedule.
    """

    enabled: bool = False  # on/off, independent of the starting rate p
    p: float = Field(0.0, ge=0, le=1)  # rate at step 0
    cap: float = Field(0.4, ge=0, le=1)  # rate at the end of the ramp (0.4 GSM8K; 0.2 collator recipes)
    ramp_ratio: float = Field(0.66, ge=0, le=1)  # share of max_steps the ramp takes; 0 = constant cap
    ramp_steps: int | None = Field(None, gt=0, le=MAX_STEPS)  # absolute ramp length in steps; overrides ramp_ratio
    replace: Literal["random", "mask"] = "random"

    @pydantic.model_validator(mode="after")
    def _p_needs_enabled(self) -> MaskedThoughtSection:
        if self.p > 0 and not self.enabled:
            raise ValueError("p > 0 while enabled is false: set masked_thought.enabled=true to mask "
                             "(p is the starting rate, not the on/off switch)")
        return self


class LoraSection(Section):
    """LoRA through peft; the saved model is merged."""

    r: int = Field(16, gt=0, le=MAX_BATCH)
    alpha: int = Field(32, gt=0, le=1_000_000)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class TokenLabelsSection(Section):
    """How the held-out reference behind per-token columns (`token_label`, `ref_nll`) is obtained, and how
    influence labels are ranked (`pipeline.training.columns`).

    No token is scored by a reference that trained on it: by default the kept examples are split
    into `folds` parts and reference i (a LoRA, as in forgetting tokens, arXiv 2508.04329) trains on
    the other parts and labels part i (cross-fitting). `reference_data` trains one reference on a
    separate set instead (e.g. Rho-1's higher-quality reference); `reference` names a finished one.
    """

    method: Literal["forgetting", "token_cleaning"] | None = None  # token_label ranking; default: the loss's
    fraction: float | None = Field(None, ge=0, le=1)  # rho (forgetting, 0.7) / keep (token_cleaning, 0.6)
    reference: str | None = None  # a reference model folder or id; wins over training one
    reference_data: str | None = None  # parquet (or data card folder) that trains ONE reference for all labels
    folds: int = Field(2, ge=2, le=100)  # cross-fitting folds: reference i trains on the others, labels fold i
    subset_size: int | None = Field(None, gt=0, le=MAX_ROWS)  # examples each reference trains on (of those allowed); None = all
    lora: LoraSection | None = LoraSection()  # the reference is base + LoRA (r 16, alpha 32); null = full fine-tune
    reference_train: dict[str, Any] = {}  # other train settings of the reference (pipeline.training.reference)


class IgfFilterSection(Section):
    """IGF's training-time filter (Antonello et al. 2021, arXiv 2010.00050): every batch is filled with examples
    whose predicted information gain (a score column) is >= the threshold of that step, as the reference
    fills its batches from the stream; the reference schedule is 1.0 (one std above the mean of z-scored IG)
    for the first 10 steps, then -1.0. `units: std` reads the thresholds in standard deviations of the
    predictions themselves (mean + t * std): the learner's predictions are shrunk (std about 0.2), so raw 1.0
    passes almost nothing."""

    column: str = "information_gain"  # the score table's column of predicted IG
    threshold: float = Field(1.0, allow_inf_nan=False)  # threshold for steps < after_steps
    after_steps: int = Field(10, ge=0, le=MAX_STEPS)
    then: float = Field(-1.0, allow_inf_nan=False)  # threshold from step after_steps on
    units: Literal["raw", "std"] = "raw"  # raw: the column's values; std: mean + t * std of the column


class TrainSection(Section):
    loss: str = "ce"  # ce | dft | talr | forgetting | token_cleaning | rho1 | module:attr
    loss_params: dict[str, Any] = {}
    think_weight: float = Field(1.0, ge=0, allow_inf_nan=False)  # loss weight inside <think>...</think> (delimiters 1)
    think_delimiters: tuple[str, str] = ("<think>", "</think>")
    columns: dict[str, str] = {}  # column a loss requires -> its provider (registered name or module:attr); default: the column's name
    masked_thought: MaskedThoughtSection = MaskedThoughtSection()
    token_labels: TokenLabelsSection = TokenLabelsSection()
    igf_filter: IgfFilterSection | None = None  # e.g. {} for the reference schedule; None = off
    epochs: float = Field(1, gt=0, le=MAX_EPOCHS)
    max_steps: int = Field(-1, ge=-1, le=MAX_STEPS)  # > 0 overrides epochs; -1 = epochs
    batch_size: int = Field(8, gt=0, le=MAX_BATCH)
    grad_accum: int = Field(1, gt=0, le=MAX_BATCH)
    learning_rate: float = Field(5e-5, gt=0)
    lr_scheduler: str = "cosine"  # a transformers SchedulerType name (checked)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta2: float = Field(0.95, gt=0, lt=1)
    max_length: int = Field(DEFAULT_MAX_LENGTH, gt=0, le=MAX_TOKENS)
    gradient_checkpointing: bool = False
    logging_steps: int = Field(1, gt=0, le=MAX_STEPS)
    save_steps: int = Field(0, ge=0, le=MAX_STEPS)  # > 0 writes checkpoints that a re-run resumes from
    lora: LoraSection | None = None  # e.g. {r: 16, alpha: 32}; None = full fine-tune
    launcher: Literal["local", "accelerate", "torchrun"] = "local"
    num_processes: int | None = Field(None, gt=0, le=1024)  # default: the GPU count (1 on CPU)
    accelerate_config: str | None = None  # default: the shipped FSDP config
    # training curves per step: tensorboard (copied into the run's tensorboard/), none, or wandb/mlflow/trackio
    report_to: Literal["tensorboard", "none", "wandb", "mlflow", "trackio"] = "tensorboard"

    @pydantic.field_validator("report_to")
    @classmethod
    def _logger_installed(cls, value: str) -> str:
        import importlib.util

        if value != "none" and importlib.util.find_spec(value) is None:
            raise ValueError(f"{value} is not installed: `pip install {value}`, or set train.report_to=none")
        return value

    @pydantic.field_validator("lr_scheduler")
    @classmethod
    def _scheduler_name(cls, value: str) -> str:
        return check_scheduler(value)


class EvalSection(Section):
    n_generate: int = Field(24, ge=0, le=MAX_ROWS)  # greedy generations for accuracy (the slow part on CPU)
    max_new_tokens: int = Field(160, gt=0, le=MAX_NEW_TOKENS)
    batch_size: int = Field(32, gt=0, le=MAX_BATCH)  # rows decoded together: 24 prompts in one batch ran 1.44x faster than batches of 12 (benchmarks/RESULTS.md)
    max_length: int = Field(DEFAULT_MAX_LENGTH, gt=0, le=MAX_TOKENS)


class AuditSection(Section):
    """The audit flow: labelled canaries made from the pool's own rows (`pipeline.data.canaries`), scored with
    the recipe's scorers, and each score's AUROC per canary kind (`pipeline.evaluation.audit`)."""

    share: float = Field(0.1, gt=0, lt=1)  # canaries added, as a share of the pool's rows
    kinds: list[str] | None = None  # canary kinds; None = all (pipeline.data.canaries.KINDS)
    budget: float | None = Field(None, gt=0, lt=1)  # kept share for recall; None = what the recipe's selection kept
    n_boot: int = Field(1000, ge=100, le=100_000)  # bootstrap replicates of each AUROC's interval


class Recipe(Section):
    """A whole recipe: which flow, on what model and data, and each stage's settings."""

    name: str
    description: str = ""
    flow: str = "sft_math"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    model: str = DEFAULT_MODEL  # offline default; any hub id or local folder works online
    output_dir: str = DEFAULT_OUTPUT_DIR
    cards_dir: str = DEFAULT_CARDS_DIR
    cache_dir: str | None = None  # stage cache; None = $SFT_PIPELINE_CACHE/stages
    data: DataSection = DataSection()
    score: ScoreSection = ScoreSection()
    select: dict[str, Any] | list[dict[str, Any]] = {"rule": "all"}  # a rule and its parameters, or a list
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    audit: AuditSection = AuditSection()
    recipe_file: str | None = None  # where it was loaded from (not part of any cache key)
    required: list[str] = []  # dotted keys a user must set for this recipe, e.g. [data.source]
    data_seed: int | None = Field(None, ge=0, le=MAX_SEED)  # seed of the data splits; None = `seed` (a study keeps one test split)
    # The study flow: seeds to repeat every variant with, and the variants (each a `name` plus overrides
    # of any section; the shared sections above are the baseline: see pipeline/flows/study.py).
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(None, max_length=1000)
    variants: list[dict[str, Any]] | None = Field(None, max_length=1000)
    # A variant whose gain over the baseline is the room a rule has (e.g. `data: {noise: null}`, the
    # clean rows): results add each variant's recovered share of that gain, with its CI.
    oracle: str | None = None

    @pydantic.field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_path_component(value)

    @property
    def split_seed(self) -> int:
        """The seed of the data splits: `data_seed` when set (a study's seeds share one test split), else `seed`."""
        return self.seed if self.data_seed is None else self.data_seed


def section_defaults(section: str) -> dict[str, Any]:
    """The defaults of one section (`train`, `eval`, ...) as a plain dict."""
    return Recipe.model_fields[section].default.model_dump()


# ---------------------------------------------------------------------------------------------
# Finding and loading recipes.


def recipe_dirs() -> list[Path]:
    """Folders searched for recipes: ./recipes, then the project's own recipes/."""
    dirs = [Path.cwd() / "recipes", REPO_ROOT / "recipes"]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


# Bounds of any YAML read (recipes, --set values, a run's config.yaml): nesting depth and the number of
# nodes once every alias is expanded (a few hundred bytes of nested aliases would otherwise grow to gigabytes).
YAML_MAX_DEPTH = 100
YAML_MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 numbers (`1e1` and `5e-5` are floats, not strings as in YAML 1.1), bounded in nesting
    depth and in alias expansion: beyond either, a YAMLError saying which bound, never a RecursionError."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {YAML_MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node


def _expanded_size(node: Any, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes in `node` with every alias expanded (memoized, so aliases cost nothing to count); a ComposerError
    beyond YAML_MAX_NODES or for an alias inside its own anchor. Depth is already bounded by the composer."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it", node.start_mark)
    open_.add(key)
    children = node.value if isinstance(node.value, list) else []
    flat = [c for pair in children for c in pair] if isinstance(node, yaml.MappingNode) else children
    total = 1 + sum(_expanded_size(c, sizes, open_) for c in flat)
    open_.discard(key)
    if total > YAML_MAX_NODES:
        raise yaml.composer.ComposerError(None, None, f"expands to more than {YAML_MAX_NODES} values once its "
                                                      "aliases are expanded", node.start_mark)
    sizes[key] = total
    return total


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path) -> dict:
    """A recipe file as a mapping, or a ConfigError naming the file and line."""
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(where, f"not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "a recipe must be a mapping at the top level")
    return data


def find_recipe(name: str) -> Path:
    """Resolve a recipe name (`sft-math`) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in {".yaml", ".yml"} and path.exists():
        return path
    for d in recipe_dirs() if "/" not in name and "\\" not in name and not name.startswith(".") else []:
        for suffix in (".yaml", ".yml"):
            candidate = d / f"{name}{suffix}"
            if candidate.exists():
                return candidate
    try:
        check_path_component(name)
    except ValueError:
        raise FileNotFoundError(f"no recipe file {name!r} (a recipe is a name from `pipeline recipes` or a "
                                ".yaml file)") from None
    known = ", ".join(sorted(r["name"] for r in list_recipes())) or "none"
    raise FileNotFoundError(f"no recipe named {name!r} (known: {known})")


def list_recipes() -> list[dict[str, str]]:
    """Name, description and file of every recipe found; a broken file is listed with its error."""
    seen: dict[str, dict[str, str]] = {}
    for d in recipe_dirs():
        for path in sorted(d.glob("*.y*ml")):
            try:
                data = read_yaml(path)
                name, desc = str(data.get("name", path.stem)), str(data.get("description", ""))
            except ConfigError as err:
                name, desc = path.stem, f"(invalid: {err})"
            seen.setdefault(name, {"name": name, "description": desc, "file": str(path)})
    return list(seen.values())


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], parsed value); values are YAML (numbers, lists, null...)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", f"{text!r} is not key=value")
    keys = key.strip().split(".")
    try:
        parsed = yaml_load(value) if value.strip() else ""
    except yaml.YAMLError as err:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ConfigError(key.strip(), f"value {shown!r} is not valid YAML "
                                       f"({getattr(err, 'problem', None) or 'parse error'})") from None
    return keys, parsed


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """A copy of `config` with every `key=value` set (sections created as needed; `validate` checks keys)."""
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = parse_override(text)
        node = config
        for i, k in enumerate(keys[:-1]):
            if node.get(k) is None:
                node[k] = {}
            elif not isinstance(node[k], dict):
                raise ConfigError(".".join(keys[: i + 1]), f"is a value ({node[k]!r}), not a section: "
                                                           f"cannot set {'.'.join(keys)}")
            node = node[k]
        node[keys[-1]] = value
    return config


def validate(config: dict) -> Recipe:
    """The recipe as typed sections with every default filled in, or a ConfigError naming the key."""
    return check_section(Recipe, config)


def check_section(model: type[Section], data: dict | None, prefix: str = "") -> Any:
    """`data` validated as `model` (defaults filled in); a ConfigError names `prefix.key` and the allowed keys."""
    try:
        return model.model_validate(data or {})
    except pydantic.ValidationError as err:
        e = err.errors()[0]
        loc = [str(x) for x in e["loc"] if not isinstance(x, int)]
        key = ".".join([prefix, *loc] if prefix else loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            raise ConfigError(key, f"unknown key (allowed here: {', '.join(allowed)})") from None
        if e["type"] == "missing":
            raise ConfigError(key, "is required") from None
        raise ConfigError(key, f"{e['msg'][:1].lower()}{e['msg'][1:]}, got {e.get('input')!r}") from None


def _allowed_keys(model: Any, path: list[str]) -> list[str]:
    """Field names of the section at `path` below `model` (e.g. ['train', 'masked_thought'])."""
    for part in path:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
                     None)
        if model is None:
            return []
    return sorted(model.model_fields)


def load_raw(name: str, overrides: list[str] | None = None) -> dict:
    """A recipe file by name or path with overrides applied, not yet validated."""
    path = find_recipe(name)
    config = apply_overrides(read_yaml(path), overrides or [])
    config.setdefault("name", path.stem)
    config["recipe_file"] = str(path)
    return config


def load_recipe(name: str, overrides: list[str] | None = None) -> dict:
    """Load, override and validate a recipe; the result is the resolved config with every default."""
    return validate(load_raw(name, overrides)).model_dump()
