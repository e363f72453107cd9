"""``engine=hf``: sampling with transformers models and a KV cache, prompt prefilled once per group.

The B prompts are prefilled together (left-padded) by the model's own forward; their KV cache is
then repeated G times, so the G completions of a prompt share one prefill. Decoding samples the
whole batch per step and stops when every row has produced EOS or ``max_new_tokens`` is reached.
Each group draws its random numbers from its own generator seeded by (seed, group seed), so a
group's completions do not depend on which other groups are in the batch.

Two decode loops, picked by ``engine.decoder`` (the README's Speed section has the measurements):

* ``fast`` (``auto`` picks it for Llama, Mistral, Qwen2 and Qwen3 decoders): a preallocated
  (static) KV cache ``[layers, N, kv_heads, prompt + max_new_tokens, head_dim]`` written in place,
  grouped-query attention without repeating the KV heads, the model's own norms / MLPs / rotary
  embedding / projection modules, and none of the per-step work of transformers' generic path
  (growing caches and masks, mask construction, output dataclasses). On the CPU the projections
  run through oneDNN with pre-packed weights (``engine.packed_weights``), q/k/v and gate/up fused
  into one matrix each; LoRA adapters are folded into the packed copy, which is built at the start
  of each ``generate()`` (the weights change every optimizer step) and released at its end.
* ``transformers``: the model's forward with a ``DynamicCache``, for every other architecture.

Both give the same tokens and log-probs (tested), and ``sampling_logps`` equal the trainer's
teacher-forced log-probs of the same tokens within float tolerance.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from rlvr.core.errors import ConfigError
from rlvr import PluginSpec, hookimpl
from rlvr.core.importance import ImportanceSamplingConfig
from rlvr.core.policy import Policy, eos_token_ids
from rlvr.core.rollout import Rollouts
from rlvr.modeling.causal_lm import base_model, lora_head_weight, decoder_of, lm_head_params

DECODERS = ("auto", "fast", "transformers")
FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class SamplingConfig:
    """The sampling settings every engine shares (``engine.*``)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    max_prompt_length: int = 512


@dataclass
class HFEngineConfig(SamplingConfig):
    decoder: str = "auto"  # auto | fast (static KV cache, Llama-family) | transformers (model forward + DynamicCache)
    packed_weights: str = "auto"  # auto (CPU, float32/bfloat16) | on | off: oneDNN pre-packed projections in `fast`
    compact_finished: bool = True  # `fast`: finished rows leave the decode batch (see should_compact)
    decode_dtype: str = "float32"  # float32 | bfloat16: the packed decode matmuls' dtype (weights stay as they are)
    importance_sampling_cap: float = 3.0  # decode_dtype=bfloat16: cap of the token-level truncated IS ratio


def validate_sampling(cfg: SamplingConfig) -> None:
    if cfg.max_new_tokens <= 0:
        raise ConfigError(f"engine.max_new_tokens must be > 0, got {cfg.max_new_tokens}")
    if cfg.temperature <= 0:
        raise ConfigError(f"engine.temperature must be > 0, got {cfg.temperature} (use a small value for near-greedy)")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"engine.top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.top_k < 0 or not 0 <= cfg.min_p < 1:
        raise ConfigError(f"engine.top_k must be >= 0 and engine.min_p in [0, 1), got {cfg.top_k}, {cfg.min_p}")
    if cfg.max_prompt_length <= 0:
        raise ConfigError(f"engine.max_prompt_length must be > 0, got {cfg.max_prompt_length}")


def validate(cfg: HFEngineConfig) -> None:
    validate_sampling(cfg)
    if cfg.decoder not in DECODERS:
        raise ConfigError(f"engine.decoder={cfg.decoder!r}: choose one of {', '.join(DECODERS)}")
    if str(cfg.packed_weights) not in ("auto", "on", "off", "True", "False"):
        raise ConfigError(f"engine.packed_weights={cfg.packed_weights!r}: choose auto, on or off")
    if cfg.decode_dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"engine.decode_dtype={cfg.decode_dtype!r}: choose float32 or bfloat16")
    if cfg.decode_dtype == "bfloat16" and cfg.decoder == "transformers":
        raise ConfigError("engine.decode_dtype=bfloat16 runs in the fast decoder only; use engine.decoder=auto or fast")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Mask (set to -inf) the logits that top-k, top-p (nucleus) and min-p sampling exclude.

    logits: float [B, V] already divided by the temperature; returns a new tensor [B, V].
    top_k keeps the k largest; top_p keeps the smallest set whose probability reaches top_p (the
    most likely token always stays); min_p keeps tokens with p >= min_p · max p.
    """
    out = logits.clone()
    if top_k > 0 and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if min_p > 0:
        probs = out.softmax(-1)
        out = out.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop[..., 0] = False
        out = out.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return out


def cache_argument(model: Any) -> str:
    """Name of the forward() argument that takes the KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def sample_inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Draw one token per row by inverting the CDF: the first index whose cumulative probability exceeds u.

    probs: float [N, V] rows summing to 1; uniform: float [N] in [0, 1). Returns long [N]. One random
    number per row (instead of one per vocabulary entry), so per-group generators stay cheap.
    """
    cdf = probs.cumsum(-1)
    u = (uniform.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)  # scale by the total: robust to rounding
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


# ---------------------------------------------------------------------------------------------
# projections for the fast decoder: oneDNN pre-packed weights on the CPU, the module elsewhere
# ---------------------------------------------------------------------------------------------
def onednn_linear_available() -> bool:
    """Whether PyTorch's oneDNN packed-linear ops exist (CPU builds with MKL-DNN)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
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
    which on this project's CPUs runs batch-16 decode matmuls ~1.5x faster than the BLAS path.
    Otherwise the modules themselves are called (no copy; works for any linear layer type).
    """

    def __init__(self, modules: Sequence[torch.nn.Module], packed: bool,
                 dtype: Optional[torch.dtype] = None) -> None:
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
                self.bias = torch.cat([b.detach() if b is not None else w.new_zeros(wt.shape[0])
                                       for b, wt in zip(biases, weights)]).to(w.dtype)
            self.sizes = [wt.shape[0] for wt in weights]
        self._parts = []
        return self

    def __call__(self, x: torch.Tensor) -> Any:
        if self.weight is not None:
            if x.dtype != self.weight.dtype:  # bfloat16 matmul, float32 residual stream
                return self._cast(torch.ops.mkldnn._linear_pointwise(x.to(self.weight.dtype), self.weight, self.bias,
                                                                     "none", [], "").to(x.dtype))
            y = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
            return y.split(self.sizes, dim=-1) if len(self.sizes) > 1 else y  # type: ignore[arg-type]
        outs = [m(x) for m in self.modules]
        return tuple(outs) if len(outs) > 1 else outs[0]


    def _cast(self, y: torch.Tensor) -> Any:
        return y.split(self.sizes, dim=-1) if len(self.sizes) > 1 else y  # type: ignore[arg-type]


def pack_all(projections: Sequence[Projection]) -> None:
    """Pack every projection, ``torch.get_num_threads()`` at a time: oneDNN's reorder and the page faults of
    the new buffers are single-threaded, and the ops release the GIL (2.7x faster on 2 cores here)."""
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
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])) and \
            getattr(cfg, "use_sliding_window", False):
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


class _Layer:
    def __init__(self, layer: Any, packed: bool, dtype: Optional[torch.dtype] = None) -> None:
        attn = layer.self_attn
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.qkv = Projection([attn.q_proj, attn.k_proj, attn.v_proj], packed, dtype)
        self.o = Projection([attn.o_proj], packed, dtype)
        self.scaling = float(attn.scaling)
        mlp = layer.mlp
        self.mlp: Optional[Callable] = None
        if all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            self.gate_up, self.down, self.act = Projection([mlp.gate_proj, mlp.up_proj], packed, dtype), \
                Projection([mlp.down_proj], packed, dtype), mlp.act_fn
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
        self.embed, self.norm, self.rotary = inner.embed_tokens, inner.norm, inner.rotary_emb
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
        cos, sin = cos[:, None], sin[:, None]  # [N, 1, 1, D]: broadcast over heads
        bias = self.bias[..., : t + 1]
        half = D // 2
        for i, lay in enumerate(self.layers):
            x = lay.input_norm(h)
            q, k, v = lay.qkv(x)
            q, k, v = q.view(N, 1, Hq, D), k.view(N, 1, Hk, D), v.view(N, 1, Hk, D)
            if lay.q_norm is not None:
                q, k = lay.q_norm(q), lay.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # [N, heads, 1, D]
            q = q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin
            k = k * cos + torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin
            keys, values = self.keys[i], self.values[i]
            keys[:, :, t].copy_(k[:, :, 0])
            values[:, :, t].copy_(v[:, 0])
            qg = q.reshape(N, Hk, g, D)  # query heads grouped by their KV head: no repeat of K/V
            scores = torch.matmul(qg, keys[:, :, : t + 1].transpose(-1, -2)) * lay.scaling + bias
            attn = torch.matmul(scores.softmax(-1, dtype=torch.float32).to(qg.dtype), values[:, :, : t + 1])
            h = h + lay.o(attn.reshape(N, 1, Hq * D))
            x = lay.post_norm(h)
            if lay.mlp is not None:
                h = h + lay.mlp(x)
            else:
                gate, up = lay.gate_up(x)
                h = h + lay.down(lay.act(gate) * up)
        return self.logits(self.norm(h)[:, 0])

class HFEngine:
    def __init__(self, cfg: HFEngineConfig) -> None:
        validate(cfg)
        self.cfg = cfg
        # float32 decode samples from the trainer's own distribution: no correction; bfloat16 matmuls sample from a
        # slightly different one, which the trainer reweights (token-level truncated importance sampling)
        self.importance_sampling = None if cfg.decode_dtype == "float32" else ImportanceSamplingConfig(
            mode="token_truncate", cap=cfg.importance_sampling_cap)
        self._fast: Optional[FastDecoder] = None
        self.last_decoder = ""  # which loop the last generate() used: "fast" or "transformers"
        self.decode_rows = 0  # rows × decode steps the last generate() ran (fewer with compact_finished)

    def release(self, policy: Policy) -> None:
        """Nothing to give back: generation runs on the policy's own weights, and the KV cache of a generate
        call is freed when it returns."""

    def encode_prompts(self, policy: Policy, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = policy.tokenizer
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if ids.shape[1] > self.cfg.max_prompt_length:  # keep the end of over-long prompts (left truncation)
            ids, mask = ids[:, -self.cfg.max_prompt_length:], mask[:, -self.cfg.max_prompt_length:]
        return ids, mask

    def use_packed(self, policy: Policy) -> bool:
        choice = str(self.cfg.packed_weights)
        dtype = next(policy.model.parameters()).dtype
        ok = policy.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and onednn_linear_available()
        if choice in ("on", "True"):
            if not ok:
                raise ConfigError("engine.packed_weights=on needs float32/bfloat16 weights on the CPU and a PyTorch "
                                  "with oneDNN (torch.backends.mkldnn); use packed_weights=auto")
            return True
        return ok and choice == "auto"

    def decoder_for(self, policy: Policy, total_length: int) -> Optional[FastDecoder]:
        """The fast decoder when it applies (rebuilt after any parameter changed), else None."""
        if self.cfg.decoder == "transformers":
            return None
        reason = fast_decoder_reason(policy.model, total_length)
        if reason is not None:
            if self.cfg.decoder == "fast":
                raise ConfigError(f"engine.decoder=fast cannot run this model: {reason}; use engine.decoder=auto")
            return None
        packed = self.use_packed(policy)
        dtype = None if self.cfg.decode_dtype == "float32" else torch.bfloat16
        if dtype is not None and not packed:
            raise ValueError("engine.decode_dtype=bfloat16 needs the packed decode weights (CPU, a PyTorch with "
                             "oneDNN, engine.packed_weights=auto/on); use engine.decode_dtype=float32 here")
        self._fast = FastDecoder(policy.model, packed=packed, dtype=dtype)
        return self._fast

    @torch.no_grad()
    def generate(self, policy: Policy, prompts: Sequence[str], num_generations: int, seeds: Sequence[int],
                 greedy: bool = False, max_new_tokens: Optional[int] = None) -> Rollouts:
        """Sample ``num_generations`` completions for each prompt.

        ``seeds[b]`` seeds prompt b's group. Returns Rollouts with N = len(prompts) · num_generations
        rows in group order; ``sampling_logps`` are log-probs of the sampled tokens under
        ``softmax(logits / temperature)`` (before top-k/top-p/min-p filtering, i.e. the
        distribution the trainer's log-probs use).
        """
        cfg, model, G = self.cfg, policy.model, num_generations
        max_new = max_new_tokens or cfg.max_new_tokens
        device = policy.device
        ids, prompt_mask = self.encode_prompts(policy, prompts)
        ids, prompt_mask = ids.to(device), prompt_mask.to(device)
        B, P = ids.shape
        N = B * G
        was_training = model.training
        model.eval()
        try:
            from transformers import DynamicCache

            cache = DynamicCache()
            cache_kw = {cache_argument(model): cache}
            pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids, attention_mask=prompt_mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                        **cache_kw)
            logits = out.logits[:, -1, :].float().repeat_interleave(G, dim=0)
            del out
            next_pos = pos[:, -1].repeat_interleave(G, dim=0) + 1  # [N]
            fast = self.decoder_for(policy, P + max_new)
            self.last_decoder = "fast" if fast is not None else "transformers"
            if fast is not None:
                fast.load_prompt_cache(cache, prompt_mask, G, P + max_new)
                del cache, cache_kw

                def forward(tokens: torch.Tensor, positions: torch.Tensor, t: int) -> torch.Tensor:
                    return fast.step(tokens, positions, P + t)
            else:
                cache.batch_repeat_interleave(G)  # share the prompt prefill across the group
                full_mask = torch.ones((N, P + max_new), dtype=prompt_mask.dtype, device=device)
                full_mask[:, :P] = prompt_mask.repeat_interleave(G, dim=0)

                def forward(tokens: torch.Tensor, positions: torch.Tensor, t: int) -> torch.Tensor:
                    o = model(input_ids=tokens[:, None], attention_mask=full_mask[:, : P + t + 1],
                              position_ids=positions[:, None], use_cache=True, **cache_kw)
                    return o.logits[:, -1, :].float()

            tokens, logps, lengths, done = self._decode(policy, logits, next_pos, forward, seeds, G, max_new, greedy)
        finally:
            self._fast = None  # the packed copy and the KV buffers go: training gets the memory back
            if was_training:
                model.train()
        T = int(lengths.max().item())
        tokens, logps = tokens[:, :T], logps[:, :T]
        comp_mask = (torch.arange(T, device=device)[None, :] < lengths[:, None]).long()
        pad_id = policy.tokenizer.pad_token_id
        texts = policy.tokenizer.batch_decode(tokens.masked_fill(comp_mask == 0, pad_id).cpu(), skip_special_tokens=True)
        return Rollouts(prompt_ids=ids.repeat_interleave(G, dim=0), prompt_mask=prompt_mask.repeat_interleave(G, dim=0),
                        completion_ids=tokens, completion_mask=comp_mask, truncated=(~done).cpu(),
                        group=torch.arange(B).repeat_interleave(G), sampling_logps=logps * comp_mask,
                        prompts=[p for p in prompts for _ in range(G)], completions=texts)

    def sample(self, logits: torch.Tensor, gens: Sequence[torch.Generator], greedy: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row (one generator per row): (tokens long [n], log-probs float32 [n] under
        ``softmax(logits / temperature)``, before filtering, as in :meth:`generate`)."""
        cfg = self.cfg
        scaled = logits / cfg.temperature if cfg.temperature != 1.0 else logits
        logp_all = scaled.log_softmax(-1)
        if greedy:
            nxt = scaled.argmax(-1)
        else:
            filtering = cfg.top_k > 0 or cfg.top_p < 1.0 or cfg.min_p > 0
            probs = filter_logits(scaled, cfg.top_k, cfg.top_p, cfg.min_p).softmax(-1) if filtering else logp_all.exp()
            nxt = sample_inverse_cdf(probs, torch.cat([torch.rand(1, generator=g) for g in gens]).to(logits.device))
        return nxt, logp_all.gather(-1, nxt[:, None]).squeeze(-1)

    def generate_episodes(self, policy: Policy, env: Any, rows: Sequence[dict[str, Any]], num_generations: int,
                          seeds: Sequence[int], greedy: bool = False, session: str = "kv",
                          stats: Any = None) -> Rollouts:
        """Multi-turn episodes (``env=<name>``): every active episode decodes together, each episode's KV cache
        is extended with the environment's tokens (``session="reprefill"``: the naive re-prefill, for
        comparison). ``engine.max_new_tokens`` limits each assistant turn. See :mod:`rlvr.core.episodes`."""
        from rlvr.core.episodes import run_episodes

        return run_episodes(policy, env, rows, num_generations, seeds, self.sample, self.cfg.max_new_tokens,
                            self.cfg.max_prompt_length, greedy=greedy, session=session, stats=stats)

    def _decode(self, policy: Policy, logits: torch.Tensor, next_pos: torch.Tensor,
                forward: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], seeds: Sequence[int], G: int,
                max_new: int, greedy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sampling loop shared by both decoders; ``forward(tokens, positions, t)`` -> next logits.

        With the fast decoder, finished rows leave the decode batch (:func:`should_compact`): ``rows`` lists the
        rows still decoded, ``forward`` runs on those only. Every group still draws its G random numbers per
        step, so a row's tokens do not depend on when the others finished."""
        cfg, device = self.cfg, logits.device
        N = logits.shape[0]
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        eos = torch.tensor(eos_token_ids(policy), device=device)
        pad_id = policy.tokenizer.pad_token_id
        tokens = torch.full((N, max_new), pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((N, max_new), dtype=torch.float32, device=device)
        done = torch.zeros(N, dtype=torch.bool, device=device)
        lengths = torch.full((N,), max_new, dtype=torch.long, device=device)
        filtering = cfg.top_k > 0 or cfg.top_p < 1.0 or cfg.min_p > 0
        fast = self._fast if self.cfg.compact_finished and self.last_decoder == "fast" else None
        rows = torch.arange(N, device=device)  # the rows in the decode batch (logits has one line per row)
        self.decode_rows = 0  # rows × decode steps actually run (metrics / benchmarks)
        for t in range(max_new):
            scaled = logits / cfg.temperature if cfg.temperature != 1.0 else logits
            logp_all = scaled.log_softmax(-1)
            if greedy:
                nxt = scaled.argmax(-1)
            else:
                probs = (filter_logits(scaled, cfg.top_k, cfg.top_p, cfg.min_p).softmax(-1) if filtering
                         else logp_all.exp())
                uniform = torch.cat([torch.rand(G, generator=g) for g in gens]).to(device)
                nxt = sample_inverse_cdf(probs, uniform[rows] if rows.numel() < N else uniform)
            was_done = done[rows]
            nxt = nxt.masked_fill(was_done, pad_id)
            tokens[rows, t] = nxt
            logps[rows, t] = torch.where(was_done, 0.0, logp_all.gather(-1, nxt[:, None]).squeeze(-1))
            finished_now = ~was_done & torch.isin(nxt, eos)
            lengths[rows] = torch.where(finished_now, t + 1, lengths[rows])
            done[rows] = was_done | finished_now
            if t == max_new - 1 or bool(done.all()):
                break
            if fast is not None:
                keep = ~done[rows]
                if should_compact(rows.numel(), int(keep.sum())):
                    fast.keep(keep.nonzero().squeeze(-1), fast.prompt_length + t)
                    rows, nxt = rows[keep], nxt[keep]
            self.decode_rows += rows.numel()
            logits = forward(nxt, next_pos[rows] + t, t)
        return tokens, logps, lengths, done


def should_compact(rows: int, active: int) -> bool:
    """Whether to drop the finished rows from a decode batch of ``rows`` rows, ``active`` of them unfinished.

    Compaction copies the kept rows' KV cache once; it pays when the next steps get cheaper by more than
    that. A decode step's cost is a fixed part (reading every weight once) plus a part per row (attention,
    sampling over the vocabulary, the rows' share of the matmuls): on SmolLM2 (2 CPU threads) 54 ms at 16
    rows, 39 at 8, 30 at 4. So compact once at least a quarter of the batch (and at least 2 rows) has
    finished: below that the saving per step is within the noise of one step, while the copy is not.
    """
    finished = rows - active
    return active > 0 and finished >= max(2, rows // 4)


@hookimpl
def rlvr_engines() -> list[PluginSpec]:
    return [PluginSpec("hf", HFEngine, HFEngineConfig, "transformers + KV cache, prompt prefilled once per group")]
