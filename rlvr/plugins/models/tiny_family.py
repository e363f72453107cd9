"""``model=tiny_family model.family=<llama|qwen2|qwen3|gemma3|phi3|mistral>``: a random small model of a family.

Each is the family's own transformers class (``Qwen3ForCausalLM``, ``Gemma3ForCausalLM``, ...) built
from a config with the family's peculiarities kept: Qwen2's q/k/v biases, Qwen3's q/k norms,
Gemma 3's scaled embeddings, sliding-window layers and final-logit soft-capping, Phi-3's fused
``qkv_proj`` / ``gate_up_proj``, Mistral's sliding window; tied or untied embeddings as the real
checkpoints have them (``tie_word_embeddings`` overrides). The byte-level tokenizer of
``model=tiny`` is shared. Used by the per-family LoRA / QLoRA tests; built offline in a second.

``model.load_in_4bit=true`` (QLoRA) saves the random model to a temporary directory and loads it
back through ``model=hf``'s 4-bit path, so it exercises exactly what a hub model goes through.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ConfigError
from rlvr.core.policy import ModelConfig, Policy, finish_policy, torch_dtype
from rlvr.plugins.models.tiny import TinyModelConfig, byte_tokenizer

ATTENTION_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_LINEARS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


@dataclass(frozen=True)
class Family:
    """How to build a small random model of one architecture family."""

    model_class: str  # transformers class name
    config_class: str
    tied: bool  # tie_word_embeddings of the real checkpoints this family stands for
    lora_targets: list[str]
    extra: Callable[[Any], dict[str, Any]] = lambda cfg: {}


def _gemma3_extra(cfg: "TinyFamilyConfig") -> dict[str, Any]:
    head_dim = cfg.hidden_size // cfg.num_heads
    return {
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "sliding_window": 8,
        "layer_types": ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(cfg.num_layers)],
        "final_logit_softcapping": cfg.final_logit_softcapping,
        "attn_logit_softcapping": None,
        "hidden_activation": "gelu_pytorch_tanh",
    }


FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", "LlamaConfig", True, ATTENTION_MLP),  # Llama 3.2 1B/3B tie; 3.1 8B does not
    "qwen2": Family("Qwen2ForCausalLM", "Qwen2Config", True, ATTENTION_MLP),  # Qwen2.5 0.5B-3B tie; 7B+ do not
    "qwen3": Family(
        "Qwen3ForCausalLM",
        "Qwen3Config",
        True,
        ATTENTION_MLP,
        lambda cfg: {"head_dim": cfg.hidden_size // cfg.num_heads},
    ),  # Qwen3-4B ties; 8B does not
    "gemma3": Family("Gemma3ForCausalLM", "Gemma3TextConfig", True, ATTENTION_MLP, _gemma3_extra),
    "phi3": Family("Phi3ForCausalLM", "Phi3Config", False, PHI3_LINEARS),  # Phi-4 uses the Phi-3 architecture
    "mistral": Family("MistralForCausalLM", "MistralConfig", False, ATTENTION_MLP, lambda cfg: {"sliding_window": 8}),
}


@dataclass
class TinyFamilyConfig(TinyModelConfig):
    family: str = "llama"  # llama | qwen2 | qwen3 | gemma3 | phi3 | mistral
    tie_word_embeddings: Optional[bool] = None  # None: as the family's real checkpoints
    final_logit_softcapping: Optional[float] = 30.0  # gemma3 only (Gemma 2 used 30; set null for Gemma 3's own)


def build_model(cfg: TinyFamilyConfig, tokenizer: Any) -> torch.nn.Module:
    """The random small model of ``cfg.family`` (seeded by ``cfg.seed``, in ``cfg.dtype``)."""
    import transformers

    if cfg.family not in FAMILIES:
        raise ConfigError(
            f"model.family={cfg.family!r} is not a family tiny_family knows; choose one of {sorted(FAMILIES)}"
        )
    fam = FAMILIES[cfg.family]
    tied = fam.tied if cfg.tie_word_embeddings is None else bool(cfg.tie_word_embeddings)
    config = getattr(transformers, fam.config_class)(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_seq_length,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fam.extra(cfg),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = getattr(transformers, fam.model_class)(config).to(torch_dtype(cfg.dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def load_tiny_family(cfg: TinyFamilyConfig) -> Policy:
    tok = byte_tokenizer()
    model = build_model(cfg, tok)
    if cfg.lora_target_modules == ModelConfig().lora_target_modules:  # the generic default: use the family's names
        cfg = dataclasses.replace(cfg, lora_target_modules=list(FAMILIES[cfg.family].lora_targets))
    name = f"tiny-{cfg.family}"
    if not cfg.load_in_4bit:
        return finish_policy(model, tok, cfg, name=name)
    from rlvr.plugins.models.hf import HFModelConfig, load_hf

    with tempfile.TemporaryDirectory(prefix="rlvr-tiny-") as tmp:  # through the hub-model path, as QLoRA users load
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)}
        policy = load_hf(HFModelConfig(name_or_path=tmp, **shared))
    policy.name = name
    return policy


@hookimpl
def rlvr_models() -> list[PluginSpec]:
    return [
        PluginSpec(
            "tiny_family",
            load_tiny_family,
            TinyFamilyConfig,
            "random small model of a family (llama, qwen2, qwen3, gemma3, phi3, mistral), for tests",
        )
    ]
