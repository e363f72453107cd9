"""``model=hf``: any transformers causal LM by hub id or local path (full, LoRA, or QLoRA 4-bit)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import LoadError, PathNotFoundError
from rlvr.core.policy import ModelConfig, Policy, finish_policy, torch_dtype


@dataclass
class HFModelConfig(ModelConfig):
    name_or_path: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = None  # e.g. sdpa, eager, flash_attention_2
    device_map: Optional[str] = None


def load_hf(cfg: HFModelConfig) -> Policy:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.expanduser(cfg.name_or_path)
    if cfg.name_or_path.startswith((".", "/", "~")) and not os.path.isdir(path):
        raise PathNotFoundError(
            f"model.name_or_path={cfg.name_or_path!r}: no such directory. Give a local model "
            "directory (with config.json) or a Hugging Face hub id like 'Qwen/Qwen2.5-3B-Instruct'."
        )
    kwargs: dict = {
        "dtype": torch_dtype(cfg.dtype),
        "revision": cfg.revision,
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    if cfg.load_in_4bit:
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(cfg.dtype) if cfg.dtype != "float32" else torch.float32,
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise LoadError(
            f"could not load model.name_or_path={cfg.name_or_path!r}: {exc}. Check the path or hub id; "
            "offline machines need a local directory."
        ) from exc
    return finish_policy(model, tokenizer, cfg, name=cfg.name_or_path)


@hookimpl
def rlvr_models() -> list[PluginSpec]:
    return [PluginSpec("hf", load_hf, HFModelConfig, "any transformers causal LM (hub id or local path)")]
