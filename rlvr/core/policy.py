"""The trainable policy: a transformers causal LM, its tokenizer, and LoRA when asked for."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class ModelConfig:
    """Fields every model plugin config has."""

    dtype: str = "float32"  # float32 | bfloat16 | float16
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                    "gate_proj", "up_proj", "down_proj"])
    load_in_4bit: bool = False  # QLoRA: NF4 base weights through bitsandbytes (implies lora)
    max_seq_length: int = 2048


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is not a dtype rlvr knows; use one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclass
class Policy:
    """What a model plugin returns: the model to train and its tokenizer."""

    model: Any
    tokenizer: Any
    name: str = ""
    is_lora: bool = False
    _frozen_reference: Any = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reference(self) -> contextlib.AbstractContextManager[Any]:
        """Context giving the reference model: the base with LoRA adapters off, or a frozen copy.

        The frozen copy (full fine-tuning only) is made on first use, so runs with beta = 0 never pay for it.
        """
        if self.is_lora:
            return _adapters_disabled(self.model)
        if self._frozen_reference is None:
            ref = copy.deepcopy(self.model).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            self._frozen_reference = ref
        return contextlib.nullcontext(self._frozen_reference)

    def set_reference_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the frozen reference weights (resume of a full fine-tune)."""
        if not self.is_lora:
            with self.reference() as ref:
                ref.load_state_dict(state)


@contextlib.contextmanager
def _adapters_disabled(model: Any) -> Iterator[Any]:
    with model.disable_adapter():
        yield model


def finish_policy(model: Any, tokenizer: Any, cfg: ModelConfig, name: str) -> Policy:
    """Common tail of every model loader: pad token, generation config, LoRA."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.config.use_cache = True
    is_lora = bool(cfg.lora or cfg.load_in_4bit)
    if is_lora:
        from peft import LoraConfig, get_peft_model

        if cfg.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [t for t in cfg.lora_target_modules if t in present]
        if not targets:
            raise ValueError(f"model.lora_target_modules={list(cfg.lora_target_modules)} matches no module of "
                             f"{name}; its linear layers are named: {sorted(present)[:40]}")
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    return Policy(model=model, tokenizer=tokenizer, name=name, is_lora=is_lora)


def eos_token_ids(policy: Policy) -> list[int]:
    """Every token id that ends a completion (the tokenizer's EOS and the model's generation EOS)."""
    ids: set[int] = set()
    tok = policy.tokenizer
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen = getattr(policy.model, "generation_config", None)
    for src in (getattr(gen, "eos_token_id", None), getattr(policy.model.config, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    return sorted(ids)


def save_policy(policy: Policy, path: str, merged: bool = False) -> None:
    """Save weights + tokenizer loadable by plain transformers (or peft for an adapter).

    With LoRA: the adapter alone by default, or merged into the base weights with ``merged=True``.
    """
    model = policy.model
    if policy.is_lora and merged:
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    policy.tokenizer.save_pretrained(path)
