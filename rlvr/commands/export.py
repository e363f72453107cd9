"""``rlvr export RUN_DIR --format gguf``: the trained model as one GGUF file for llama.cpp / Ollama.

Reads the run's ``final/`` directory (or its latest complete checkpoint, or a checkpoint directory
given directly); a LoRA adapter is merged into its base model first. Writes llama-architecture
GGUF with the ``gguf`` package: the weights (``f16``: matrices in float16, norms in float32;
``q8_0``: matrices in 8-bit blocks of 32, others as for f16), the model hyper-parameters, and the
tokenizer (vocabulary, merges, special tokens, chat template) so that llama.cpp, Ollama and
``transformers`` (``from_pretrained(dir, gguf_file=...)``) can run it without other files.

Supported: Llama-architecture models (SmolLM2, Llama 2/3 without rope scaling, TinyLlama, the
tiny test model) with a byte-level BPE tokenizer (GPT-2 style).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from rlvr.core.errors import PathNotFoundError, RlvrError

OUTTYPES = ("f16", "q8_0")
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5
# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) by a substring of the model's name
PRE_TOKENIZERS = (
    ("smollm", "smollm"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen2"),
    ("llama-3", "llama-bpe"),
    ("llama3", "llama-bpe"),
)


class ExportError(RlvrError, ValueError):
    """The model or tokenizer cannot be written as GGUF."""


def find_model_dir(path: str | Path) -> Path:
    """The directory holding the weights: PATH itself, PATH/final, or PATH's latest complete checkpoint."""
    from rlvr.core.checkpoint import latest_checkpoint

    p = Path(path).expanduser()
    if not p.is_dir():
        raise PathNotFoundError(
            f"{str(p)!r} does not exist; give a run directory (outputs/<date>/<time>) or a checkpoint directory"
        )
    if _has_weights(p):
        return p
    if _has_weights(p / "final"):
        return p / "final"
    latest = latest_checkpoint(p)
    if latest is not None:
        return latest
    raise PathNotFoundError(
        f"{str(p)!r} holds no model: expected model*.safetensors or adapter_model.safetensors "
        "in it, in its final/ directory, or in a complete checkpoint under checkpoints/"
    )


def _has_weights(p: Path) -> bool:
    return p.is_dir() and (
        any(p.glob("model*.safetensors"))
        or (p / "adapter_model.safetensors").is_file()
        or (p / "pytorch_model.bin").is_file()
    )


def _run_config(model_dir: Path) -> dict[str, Any]:
    for cand in (model_dir / "config.json", model_dir.parent / "config.json", model_dir.parent.parent / "config.json"):
        if cand.is_file():
            try:
                data = json.loads(cand.read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and "trainer" in data and "model" in data:
                return data
    return {}


def load_model(model_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model in float32 with LoRA merged, tokenizer, the run's rlvr config or {})."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_cfg = _run_config(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        from rlvr.core import registry

        if not run_cfg:
            raise ExportError(
                f"{model_dir} holds a LoRA adapter but no run config.json was found next to it to "
                "rebuild the base model; merge it first (save with trainer.save_merged=true)"
            )
        params = {k: v for k, v in run_cfg["model"].items() if k != "name"}
        params.update(lora=False, load_in_4bit=False, dtype="float32")
        base = registry.create("model", run_cfg["model"]["name"], **params)
        model = PeftModel.from_pretrained(base.model, str(model_dir)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return model.eval(), tokenizer, run_cfg


def _permute(w: np.ndarray, n_head: int, n_head_kv: Optional[int] = None) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rotary halves), as convert_hf_to_gguf.py writes it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_tensors(model: Any) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight, in llama.cpp's naming and q/k layout."""
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    out = [("token_embd.weight", state["model.embed_tokens.weight"])]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out += [
            (f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"]),
            (f"blk.{i}.attn_q.weight", _permute(state[p + "self_attn.q_proj.weight"], n_head, n_head)),
            (f"blk.{i}.attn_k.weight", _permute(state[p + "self_attn.k_proj.weight"], n_head, n_kv)),
            (f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"]),
            (f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"]),
            (f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"]),
            (f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"]),
            (f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"]),
            (f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"]),
        ]
    out.append(("output_norm.weight", state["model.norm.weight"]))
    if not getattr(cfg, "tie_word_embeddings", False):
        out.append(("output.weight", state["lm_head.weight"]))
    return out


def _check_llama(model: Any) -> None:
    cfg = model.config
    if getattr(cfg, "model_type", "") != "llama":
        raise ExportError(
            f"GGUF export supports Llama-architecture models (SmolLM2, Llama, TinyLlama, model=tiny); "
            f"this model is {getattr(cfg, 'model_type', type(model).__name__)!r}"
        )
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ExportError("GGUF export: Llama models with attention or MLP biases are not supported")
    scaling = _rope(cfg)[1]
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise ExportError(f"GGUF export: rope scaling {scaling!r} is not supported yet (plain RoPE only)")


def _rope(cfg: Any) -> tuple[float, Optional[dict[str, Any]]]:
    """(rope theta, rope scaling dict or None) across transformers versions."""
    params = getattr(cfg, "rope_parameters", None)
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        scaling = params if params.get("rope_type", "default") != "default" else None
        return float(theta), scaling
    return float(getattr(cfg, "rope_theta", 10000.0)), getattr(cfg, "rope_scaling", None)


def tokenizer_fields(tokenizer: Any, vocab_size: int, pre: str) -> dict[str, Any]:
    """The tokenizer.ggml.* metadata of a byte-level BPE tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError("GGUF export needs a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    byte_level = any("ByteLevel" in json.dumps(spec.get(k) or {}) for k in ("pre_tokenizer", "decoder"))
    if model.get("type") != "BPE" or not byte_level:
        raise ExportError(
            f"GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2, Llama 3, Qwen2); "
            f"this one is {model.get('type')!r}{'' if byte_level else ' without byte-level encoding'}"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    n = len(tokenizer)
    if n > vocab_size:
        raise ExportError(f"the tokenizer has {n} tokens but the model's embedding only {vocab_size}")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    types = []
    for i, tok in enumerate(tokens):
        if tok is None:
            tokens[i], types = f"[PAD{i}]", types + [TOKEN_UNUSED]
        elif tok in added:
            types.append(TOKEN_CONTROL if added[tok].special else TOKEN_USER_DEFINED)
        else:
            types.append(TOKEN_NORMAL)
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]  # embedding rows past the vocabulary
    types += [TOKEN_UNUSED] * (vocab_size - n)
    probe = tokenizer("a")["input_ids"]
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "pre": pre,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
        "add_bos": bool(probe) and probe[0] == tokenizer.bos_token_id and len(probe) > 1,
        "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    }


def guess_pre(names: list[str]) -> str:
    """llama.cpp's pre-tokenizer name for the model, from its names; 'default' (GPT-2 split) if unknown."""
    text = " ".join(n.lower() for n in names if n)
    for needle, pre in PRE_TOKENIZERS:
        if needle in text:
            return pre
    return "default"


def write_gguf(
    model: Any, tokenizer: Any, path: Path, outtype: str = "f16", name: str = "rlvr model", pre: str = "default"
) -> Path:
    """Write ``model`` + ``tokenizer`` as a llama-architecture GGUF file (atomically: temp file, then rename)."""
    import gguf

    if outtype not in OUTTYPES:
        raise ExportError(f"--type {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    _check_llama(model)
    cfg = model.config
    tok = tokenizer_fields(tokenizer, cfg.vocab_size, pre)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    theta, _ = _rope(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(name)
        writer.add_context_length(int(cfg.max_position_embeddings))
        writer.add_embedding_length(int(cfg.hidden_size))
        writer.add_block_count(int(cfg.num_hidden_layers))
        writer.add_feed_forward_length(int(cfg.intermediate_size))
        writer.add_head_count(int(cfg.num_attention_heads))
        writer.add_head_count_kv(int(cfg.num_key_value_heads or cfg.num_attention_heads))
        writer.add_rope_dimension_count(int(head_dim))
        writer.add_rope_freq_base(theta)
        writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        writer.add_vocab_size(int(cfg.vocab_size))
        ftype = gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
        writer.add_file_type(ftype)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(tok["pre"])
        writer.add_token_list(tok["tokens"])
        writer.add_token_types(tok["types"])
        if tok["merges"]:
            writer.add_token_merges(tok["merges"])
        else:  # a vocabulary without merges (bytes only): scores let readers rebuild the (empty) merge list
            writer.add_token_scores([0.0] * len(tok["tokens"]))
        for key, fn in (
            ("bos", writer.add_bos_token_id),
            ("eos", writer.add_eos_token_id),
            ("unk", writer.add_unk_token_id),
            ("pad", writer.add_pad_token_id),
        ):
            if tok[key] is not None:
                fn(int(tok[key]))
        writer.add_add_bos_token(tok["add_bos"])
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
        if tok["chat_template"]:
            writer.add_chat_template(tok["chat_template"])
        for tname, data in llama_tensors(model):
            if data.ndim == 1:  # norms stay float32, as llama.cpp writes them
                writer.add_tensor(tname, data.astype(np.float32))
            elif outtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
                writer.add_tensor(
                    tname,
                    gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0),
                    raw_dtype=gguf.GGMLQuantizationType.Q8_0,
                )
            else:
                writer.add_tensor(tname, data.astype(np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def export(
    path: str | Path,
    fmt: str = "gguf",
    outtype: str = "f16",
    output: Optional[str | Path] = None,
    pre: Optional[str] = None,
) -> Path:
    """``rlvr export``: find the model of a run (or checkpoint) and write it as ``fmt``; returns the file.

    Default file: ``RUN_DIR/model-<type>.gguf`` for a run directory, ``<dir>-<type>.gguf`` beside a model or
    checkpoint directory given directly (transformers ignores a GGUF's chat template when the GGUF sits in a
    directory that also holds ``chat_template.jinja``).
    """
    if fmt != "gguf":
        raise ExportError(
            f"--format {fmt!r}: only gguf is supported (the run's final/ directory already is a "
            "transformers / safetensors checkpoint)"
        )
    if outtype not in OUTTYPES:
        raise ExportError(f"--type {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    model_dir = find_model_dir(path)
    model, tokenizer, run_cfg = load_model(model_dir)
    model_name = str((run_cfg.get("model") or {}).get("name", "")) if run_cfg else ""
    names = [
        model_name,
        str((run_cfg.get("model") or {}).get("name_or_path", "")) if run_cfg else "",
        str(getattr(model.config, "_name_or_path", "")),
        str(getattr(tokenizer, "name_or_path", "")),
    ]
    root = Path(path).expanduser()
    if output:
        target = Path(output).expanduser()
    elif model_dir == root:  # a model directory given directly: the file goes beside it, not into it
        target = model_dir.parent / f"{model_dir.name}-{outtype}.gguf"
    else:  # a run directory
        target = root / f"model-{outtype}.gguf"
    return write_gguf(
        model, tokenizer, target, outtype, name=f"rlvr {model_name or model_dir.name}", pre=pre or guess_pre(names)
    )
