"""The trainable policy: a transformers causal LM, its tokenizer, and LoRA when asked for."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional

import torch

from rlvr.core.errors import ConfigError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class ModelConfig:
    """Fields every model plugin config has."""

    dtype: str = "float32"  # float32 | bfloat16 | float16
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: List[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    load_in_4bit: bool = False  # QLoRA: NF4 base weights through bitsandbytes (implies lora)
    max_seq_length: int = 2048


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not a dtype rlvr knows; use one of {sorted(DTYPES)}")
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
        return contextlib.nullcontext(self.freeze_reference())

    def freeze_reference(self) -> Any:
        """Full fine-tuning: the frozen copy of the weights as they are now (made once; later calls return it).

        The trainer calls it before loading a checkpoint when resuming with beta > 0, so that the KL reference
        is the base model, not the resumed weights."""
        if self._frozen_reference is None:
            ref = copy.deepcopy(self.model).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            self._frozen_reference = ref
        return self._frozen_reference


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
            # The 4-bit base is frozen; the other weights (embeddings, norms, head) stay in model.dtype and the
            # adapters are float32 (peft's default). (peft's prepare_model_for_kbit_training would also upcast
            # every non-4-bit weight to float32: twice the memory for the embeddings and the head, and a
            # float32 residual stream.)
            for p in model.parameters():
                p.requires_grad_(False)
            for module in model.modules():
                # bitsandbytes on AVX512-BF16 CPUs repacks a 4-bit weight, for good, at its first eval-mode
                # no-grad forward (generation), and the repacked path has no autograd: the backward would then
                # lose every gradient that flows through the frozen base layers. Keep the trainable path.
                if hasattr(module, "support_avx512bf16_for_cpu"):
                    module.support_avx512bf16_for_cpu = False
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [t for t in cfg.lora_target_modules if t in present]
        if not targets:
            raise ConfigError(
                f"model.lora_target_modules={list(cfg.lora_target_modules)} matches no module of "
                f"{name}; its linear layers are named: {sorted(present)[:40]}"
            )
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets,
                task_type="CAUSAL_LM",
            ),
        )
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


def save_policy(
    policy: Policy, path: str, merged: bool = False, state_dict: Optional[dict[str, torch.Tensor]] = None
) -> None:
    """Save weights + tokenizer loadable by plain transformers (or peft for an adapter).

    With LoRA: the adapter alone by default (``PeftModel.from_pretrained(base, path)``), or merged into
    the base weights with ``merged=True`` (``AutoModelForCausalLM.from_pretrained(path)``; a QLoRA base
    is de-quantized first, so the merged model is a plain 16/32-bit one). ``state_dict``: the weights to
    write instead of the model's own (a sharded model gathered to this rank).
    """
    if policy.is_lora and merged:
        merged_model(policy.model).save_pretrained(path, safe_serialization=True)
    else:
        extra = {} if state_dict is None else {"state_dict": state_dict}
        policy.model.save_pretrained(path, safe_serialization=True, **extra)
    policy.tokenizer.save_pretrained(path)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """A weight as a plain tensor: bitsandbytes 4-bit parameters are de-quantized."""
    quant_state = getattr(t, "quant_state", None)
    if quant_state is None:
        return t.detach()
    import bitsandbytes as bnb

    return bnb.functional.dequantize_4bit(t.data, quant_state)


def merged_model(model: Any) -> Any:
    """A plain transformers model (no peft, no quantization) holding ``base + LoRA deltas``, for saving.

    Built on the meta device and filled with the merged tensors (the LoRA layers' new weights; every
    other tensor is shared with ``model``), so it costs one copy of the adapted layers, not of the model.
    Meant for ``save_pretrained``: non-persistent buffers (rotary tables) stay on the meta device.
    """
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    base = model.get_base_model()
    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state: dict[str, torch.Tensor] = {}
    for key in plain.state_dict():
        owner, attr = key.rsplit(".", 1) if "." in key else ("", key)
        mod = base.get_submodule(owner)
        if hasattr(mod, "modules_to_save") and hasattr(mod, "active_adapter"):  # a fully trained copy (e.g. the head)
            active = mod.active_adapter[0] if isinstance(mod.active_adapter, (list, tuple)) else mod.active_adapter
            mod = mod.modules_to_save[active]
        if isinstance(mod, LoraLayer):
            layer = mod.get_base_layer()
            tensor = _dense(getattr(layer, attr))
            if attr == "weight" and not getattr(mod, "merged", False):
                tensor = tensor.float()
                for name in mod.active_adapters:
                    if name in mod.lora_A:
                        tensor = tensor + mod.get_delta_weight(name).float()  # type: ignore[attr-defined]
        else:
            tensor = _dense(getattr(mod, attr))
        state[key] = tensor.to(dtype)
    plain.load_state_dict(state, assign=True)
    plain.generation_config = copy.deepcopy(base.generation_config)
    return plain


def load_for_eval(cfg: Any, checkpoint: str = "") -> Policy:
    """The policy to evaluate: the configured model, or a checkpoint directory.

    ``cfg`` is a composed config (its ``model`` node). A checkpoint holding ``adapter_config.json``
    is a LoRA adapter, applied to the configured base model (loaded without LoRA / 4-bit); any other
    checkpoint directory is a full model loaded with the ``hf`` model plugin in ``model.dtype``.
    """
    from pathlib import Path

    from rlvr.core import registry
    from rlvr.core.config import plugin_params
    from rlvr.core.errors import PathNotFoundError

    params = plugin_params(cfg.model)
    if not checkpoint:
        return registry.create("model", cfg.model.name, **params)
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise PathNotFoundError(
            f"checkpoint={checkpoint!r}: no such directory (expected e.g. outputs/<date>/<time>/final)"
        )
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base = registry.create("model", cfg.model.name, **{**params, "lora": False, "load_in_4bit": False})
        return Policy(PeftModel.from_pretrained(base.model, str(path)), base.tokenizer, name=base.name, is_lora=True)
    dtype = {k: v for k, v in params.items() if k == "dtype"}
    return registry.create("model", "hf", name_or_path=str(path.resolve()), **dtype)
