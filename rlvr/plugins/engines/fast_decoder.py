"""The fast decode loop of ``engine=hf`` for Llama-family decoders (Llama, Mistral, Qwen2, Qwen3).

A preallocated (static) KV cache ``[layers, N, kv_heads, prompt + max_new_tokens, head_dim]`` written in
place, grouped-query attention without repeating the KV heads, the model's own norms / MLPs / rotary
embedding / projection modules, and none of the per-step work of transformers' generic path. On the CPU
the projections run through oneDNN with pre-packed weights, q/k/v and gate/up fused into one matrix
each; LoRA adapters are folded into the packed copy. docs/performance.md has the measurements.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from rlvr.modeling.causal_lm import base_model, decoder_of, lm_head_params, lora_head_weight

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


# ---------------------------------------------------------------------------------------------
# projections for the fast decoder: oneDNN pre-packed weights on the CPU, the module elsewhere
# ---------------------------------------------------------------------------------------------
def onednn_linear_available() -> bool:
    """Whether PyTorch's oneDNN packed-linear ops exist (CPU builds with MKL-DNN)."""
    try:
        return (
            bool(torch.backends.mkldnn.is_available())
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        )
    except (AttributeError, RuntimeError):
        return False


def effective_linear_weight(module: torch.nn.Module) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(weight [out, in], bias) that ``module(x)`` applies: a plain ``nn.Linear`` or a peft LoRA
    linear with its active adapters folded in. None for anything else (DoRA, quantised, custom)."""
    if type(module) is torch.nn.Linear:
        return module.weight, module.bias
    base = getattr(module, "base_layer", None)
    if type(base) is not torch.nn.Linear or any(getattr(module, "use_dora", {}).values()):
        return None
    if getattr(module, "fan_in_fan_out", False) or getattr(module, "lora_embedding_A", None):
        return None
    weight = lora_head_weight(module)
    return (weight if weight is not None else base.weight), base.bias


class Projection:
    """``y = x @ W.T + b`` for one or several fused linear modules (their outputs concatenated).

    ``packed`` (CPU, float32 / bfloat16): the weights are copied once into oneDNN's blocked layout,
    which runs batch-sized decode matmuls faster than the BLAS path (docs/performance.md has the figures).
    Otherwise the modules themselves are called (no copy; works for any linear layer type).
    """

    def __init__(self, modules: Sequence[torch.nn.Module], packed: bool, dtype: Optional[torch.dtype] = None) -> None:
        self.modules = list(modules)
        self.dtype = dtype  # packed copy in this dtype (bfloat16: AVX512-BF16 matmuls); None = the weights' own
        self.sizes: Optional[list[int]] = None
        self.weight: Optional[torch.Tensor] = None
        self.bias: Optional[torch.Tensor] = None
        self._parts = [effective_linear_weight(m) for m in self.modules] if packed else [None]
        self.packable = packed and all(p is not None for p in self._parts)

    def pack(self) -> "Projection":
        """Build the fused, oneDNN-packed copy (run by :func:`pack_all` on a thread pool)."""
        if self.packable:
            weights = [p[0].detach() for p in self._parts]  # type: ignore[index]
            biases = [p[1] for p in self._parts]  # type: ignore[index]
            w = torch.cat(weights) if len(weights) > 1 else weights[0].contiguous()
            if self.dtype is not None:
                w = w.to(self.dtype)
            self.weight = torch.ops.mkldnn._reorder_linear_weight(w, 16)
            if any(b is not None for b in biases):
                self.bias = torch.cat(
                    [b.detach() if b is not None else w.new_zeros(wt.shape[0]) for b, wt in zip(biases, weights)]
                ).to(w.dtype)
            self.sizes = [wt.shape[0] for wt in weights]
        self._parts = []
        return self

    def __call__(self, x: torch.Tensor) -> Any:
        if self.weight is not None:
            if x.dtype != self.weight.dtype:  # bfloat16 matmul, float32 residual stream
                return self._cast(
                    torch.ops.mkldnn._linear_pointwise(
                        x.to(self.weight.dtype), self.weight, self.bias, "none", [], ""
                    ).to(x.dtype)
                )
            y = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
            return y.split(self.sizes, dim=-1) if len(self.sizes) > 1 else y  # type: ignore[arg-type]
        outs = [m(x) for m in self.modules]
        return tuple(outs) if len(outs) > 1 else outs[0]

    def _cast(self, y: torch.Tensor) -> Any:
        return y.split(self.sizes, dim=-1) if len(self.sizes) > 1 else y  # type: ignore[arg-type]


def pack_all(projections: Sequence[Projection]) -> None:
    """Pack every projection, ``torch.get_num_threads()`` at a time: oneDNN's reorder and the page faults of
    the new buffers are single-threaded, and the ops release the GIL, so packing in threads overlaps them."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [p for p in projections if p.packable]
    workers = max(1, min(torch.get_num_threads(), len(todo)))
    if workers == 1:
        for p in todo:
            p.pack()
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(Projection.pack, todo))


def fast_decoder_reason(model: Any, total_length: int) -> Optional[str]:
    """Why the fast decoder cannot run ``model`` (None when it can)."""
    base = base_model(model)
    cfg = getattr(base, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in FAST_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {FAST_MODEL_TYPES}"
    if getattr(cfg, "use_sliding_window", True) and (getattr(cfg, "sliding_window", None) or 1 << 30) < total_length:
        return "sliding-window attention shorter than prompt + completion"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])) and getattr(
        cfg, "use_sliding_window", False
    ):
        return "layers with sliding-window attention"
    try:
        inner = decoder_of(model)
    except TypeError as err:
        return str(err)
    for attr in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(inner, attr):
            return f"decoder has no {attr!r}"
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        if not hasattr(inner.layers[0].self_attn, name):
            return f"attention has no {name!r}"
    return None


def rms_norm_of(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The norm as one fused op (``F.rms_norm``) for transformers' Llama-style RMSNorm in float32: the module
    computes ``weight * x * rsqrt(mean(x²) + eps)`` in five ops. Any other norm (or dtype) runs as the module."""
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.Tensor) and isinstance(eps, float):
        if weight.dtype == torch.float32 and weight.dim() == 1:
            shape = (weight.shape[0],)

            def norm(x: torch.Tensor) -> torch.Tensor:
                return module(x) if x.dtype != torch.float32 else F.rms_norm(x, shape, weight, eps)

            return norm
    return module


class _Layer:
    def __init__(self, layer: Any, packed: bool, dtype: Optional[torch.dtype] = None) -> None:
        attn = layer.self_attn
        self.input_norm, self.post_norm = (
            rms_norm_of(layer.input_layernorm),
            rms_norm_of(layer.post_attention_layernorm),
        )
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.qkv = Projection([attn.q_proj, attn.k_proj, attn.v_proj], packed, dtype)
        self.o = Projection([attn.o_proj], packed, dtype)
        self.scaling = float(attn.scaling)
        mlp = layer.mlp
        self.mlp: Optional[Callable] = None
        if all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            self.gate_up, self.down, self.act = (
                Projection([mlp.gate_proj, mlp.up_proj], packed, dtype),
                Projection([mlp.down_proj], packed, dtype),
                mlp.act_fn,
            )
        else:
            self.mlp = mlp

    def projections(self) -> list[Projection]:
        return [self.qkv, self.o] + ([self.gate_up, self.down] if self.mlp is None else [])


class FastDecoder:
    """Static-KV-cache decode steps for a Llama-family causal LM (see the module docstring).

    ``step(tokens [N], positions [N], t)`` writes the new keys/values at cache column ``t`` and
    returns the float32 next-token logits ``[N, V]`` (before temperature).
    """

    def __init__(self, model: Any, packed: bool, dtype: Optional[torch.dtype] = None) -> None:
        cfg = base_model(model).config
        inner = decoder_of(model)
        self.embed, self.norm, self.rotary = inner.embed_tokens, rms_norm_of(inner.norm), inner.rotary_emb
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.layers = [_Layer(layer, packed, dtype) for layer in inner.layers[: cfg.num_hidden_layers]]
        weight, bias, self.softcap, self.scale = lm_head_params(model)
        self.head = Projection([], False, dtype)  # packed below when asked for; else F.linear on the live weight
        self.head._parts, self.head.packable = [(weight, bias)], packed
        self.head_weight, self.head_bias = weight.detach(), None if bias is None else bias.detach()
        if packed:
            pack_all([self.head] + [p for lay in self.layers for p in lay.projections()])
        self.keys: Optional[torch.Tensor] = None
        self.values: Optional[torch.Tensor] = None
        self.bias: Optional[torch.Tensor] = None
        self.prompt_length = 0

    def load_prompt_cache(self, cache: Any, prompt_mask: torch.Tensor, repeats: int, capacity: int) -> None:
        """Copy the prefilled cache of B prompts into static buffers, each prompt repeated ``repeats`` times.

        ``prompt_mask``: [B, P] (1 = token); left-padding columns get -inf attention bias."""
        layers = cache.layers
        k0 = layers[0].keys
        B, _, P, _ = k0.shape
        N, L = B * repeats, len(self.layers)
        shape = (L, N, self.kv_heads, capacity, self.head_dim)
        self.keys = k0.new_empty(shape)
        self.values = k0.new_empty(shape)
        for i in range(L):
            self.keys[i, :, :, :P].copy_(layers[i].keys.repeat_interleave(repeats, dim=0))
            self.values[i, :, :, :P].copy_(layers[i].values.repeat_interleave(repeats, dim=0))
        bias = torch.zeros((N, 1, 1, capacity), dtype=k0.dtype, device=k0.device)
        bias[:, 0, 0, :P].masked_fill_(prompt_mask.repeat_interleave(repeats, dim=0) == 0, float("-inf"))
        self.bias = bias
        self.prompt_length = P

    def keep(self, rows: torch.Tensor, used: int) -> None:
        """Compaction: keep only ``rows`` (long [n], indices into the current decode batch) of the KV cache.

        Copies the first ``used`` cache columns of the kept rows into new buffers of the same capacity, so
        later steps run on n rows instead of N (finished rows leave the batch)."""
        assert self.keys is not None and self.values is not None and self.bias is not None
        shape = (self.keys.shape[0], rows.numel(), *self.keys.shape[2:])
        keys, values = self.keys.new_empty(shape), self.values.new_empty(shape)
        keys[:, :, :, :used].copy_(self.keys[:, rows, :, :used])
        values[:, :, :, :used].copy_(self.values[:, rows, :, :used])
        self.keys, self.values, self.bias = keys, values, self.bias[rows]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head.weight is not None:
            out = self.head(hidden)
        else:
            out = F.linear(hidden, self.head_weight, self.head_bias)
        out = out.float()
        if self.scale != 1.0:
            out = out * self.scale
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, t: int) -> torch.Tensor:
        assert self.keys is not None and self.values is not None and self.bias is not None
        N, Hq, Hk, D = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        g = Hq // Hk
        h = self.embed(tokens[:, None])  # [N, 1, H]
        cos, sin = self.rotary(h, positions[:, None])  # [N, 1, D]
        half = D // 2
        # rotate_half(x) * sin == roll(x, half) * signed_sin, with signed_sin = (-sin[:half], sin[half:])
        cos, signed_sin = cos[:, 0, None], torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)[:, 0, None]

        def rotate(x: torch.Tensor) -> torch.Tensor:  # x: [N, heads, D]
            return x * cos + x.roll(half, -1) * signed_sin

        bias = self.bias[..., : t + 1]
        for i, lay in enumerate(self.layers):
            x = lay.input_norm(h)
            q, k, v = lay.qkv(x)
            if lay.q_norm is None and q.data_ptr() + Hq * D * q.element_size() == k.data_ptr():
                # q and k are adjacent columns of the fused projection: rotate both heads' sets in one pass
                qk = rotate(q.as_strided((N, Hq + Hk, D), (q.stride(0), D, 1)))  # [N, Hq + Hk, D]
                q, k = qk[:, :Hq], qk[:, Hq:]
            else:
                q, k = q.view(N, Hq, D), k.view(N, Hk, D)
                if lay.q_norm is not None:
                    q, k = lay.q_norm(q), lay.k_norm(k)
                q, k = rotate(q), rotate(k)
            keys, values = self.keys[i], self.values[i]
            keys[:, :, t].copy_(k)
            values[:, :, t].copy_(v.view(N, Hk, D))
            qg = q.reshape(N, Hk, g, D)  # query heads grouped by their KV head: no repeat of K/V
            scores = torch.matmul(qg, keys[:, :, : t + 1].transpose(-1, -2)).mul_(lay.scaling).add_(bias)
            attn = torch.matmul(scores.softmax(-1, dtype=torch.float32).to(qg.dtype), values[:, :, : t + 1])
            h = h + lay.o(attn.reshape(N, 1, Hq * D))
            x = lay.post_norm(h)
            if lay.mlp is not None:
                h = h + lay.mlp(x)
            else:
                gate, up = lay.gate_up(x)
                h = h + lay.down(lay.act(gate).mul_(up))
        return self.logits(self.norm(h)[:, 0])


def should_compact(rows: int, active: int) -> bool:
    """Whether to drop the finished rows from a decode batch of ``rows`` rows, ``active`` of them unfinished.

    Compaction copies the kept rows' KV cache once; it pays when the next steps get cheaper by more than
    that. A decode step's cost is a fixed part (reading every weight once) plus a part per row (attention,
    sampling over the vocabulary, the rows' share of the matmuls; docs/performance.md has a measured series).
    So compact once at least a quarter of the batch (and at least 2 rows) has finished: below that the saving
    per step is within the noise of one step, while the copy is not.
    """
    finished = rows - active
    return active > 0 and finished >= max(2, rows // 4)
