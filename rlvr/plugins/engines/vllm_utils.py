"""The parts of ``engine=vllm`` that need no vLLM: weight names, sampling parameters, output conversion.

Kept pure (plain tensors, dicts and duck-typed output objects) so they are tested on the CPU.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from rlvr.core.errors import ConfigError
from rlvr.core.rollout import Rollouts

INT64_MAX = 2**63 - 1
PEFT_PREFIX = "base_model.model."
WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def vllm_weight_name(name: str) -> Optional[str]:
    """The name vLLM's ``load_weights`` expects for a (possibly peft-wrapped) transformers parameter name,
    or None for parameters vLLM does not have (LoRA factors, the frozen original of a ``modules_to_save``).

    ``base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight``
    -> ``model.layers.0.self_attn.q_proj.weight``
    """
    if ".lora_" in name or name.startswith("lora_") or ".original_module." in name:
        return None
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX) :]
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    name = name.replace(".base_layer.", ".")
    name = name.replace(".modules_to_save.default.", ".")
    return name


def _adapter_owner(name: str) -> str:
    """``...q_proj.base_layer.weight`` -> ``...q_proj`` (the peft module whose effective weight to send)."""
    return name.split(".base_layer.")[0]


def weights_for_vllm(
    model: Any, changed_only: bool = False, dtype: Optional[torch.dtype] = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(vllm_name, tensor)`` pairs to push into vLLM, one at a time (a generator: the caller streams them).

    Full fine-tuning: every parameter (``changed_only``: only the trainable ones). LoRA: each adapted
    layer's weight with its active adapters folded in (``W + scale * B @ A``, computed without touching
    the model, never written to disk); with ``changed_only`` only those layers, since the frozen base
    weights vLLM already holds do not change. ``dtype``: each tensor is cast to vLLM's dtype as it is
    yielded. Only the tensor being yielded is alive beyond the model's own parameters (a folded weight or
    a cast copy is built when asked for and dropped once the consumer lets go of it), so a push costs one
    layer's extra memory, not the model's.
    """
    from rlvr.plugins.engines.fast_decoder import effective_linear_weight

    modules = dict(model.named_modules())
    is_peft = hasattr(model, "peft_config")
    for name, param in model.named_parameters():
        target = vllm_weight_name(name)
        if target is None:
            continue
        if is_peft and ".base_layer." in name:
            owner = modules.get(_adapter_owner(name))
            folded = effective_linear_weight(owner) if owner is not None else None
            if folded is None:
                raise TypeError(
                    f"cannot fold the adapter of {_adapter_owner(name)} ({type(owner).__name__}) into "
                    "its weight for vLLM (DoRA and quantised layers are not supported)"
                )
            tensor = folded[0] if name.endswith(".weight") else folded[1]
            del folded  # the generator must not keep the previous layer's folded weight alive
        elif changed_only and not param.requires_grad:
            continue
        else:
            tensor = param
        out = tensor.detach() if dtype is None else tensor.detach().to(dtype)
        del tensor
        yield target, out
        del out  # from here on only the consumer holds it


def sampling_kwargs(
    cfg: Any,
    num_generations: int,
    max_new_tokens: int,
    seed: Optional[int],
    greedy: bool,
    stop_token_ids: Sequence[int],
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one prompt's group, from an engine config.

    ``logprobs=0`` returns the sampled token's log-prob (under ``logprobs_mode="processed_logprobs"``: after
    temperature and top-k/top-p/min-p, i.e. the distribution that actually sampled).
    """
    kw: dict[str, Any] = {
        "n": int(num_generations),
        "max_tokens": int(max_new_tokens),
        "temperature": 0.0 if greedy else float(cfg.temperature),
        "top_p": 1.0 if greedy else float(cfg.top_p),
        "top_k": 0 if greedy or not cfg.top_k else int(cfg.top_k),
        "min_p": 0.0 if greedy else float(cfg.min_p),
        "logprobs": 0,
        "stop_token_ids": sorted({int(t) for t in stop_token_ids}),
        "skip_special_tokens": True,
        "detokenize": False,
    }
    if seed is not None:
        kw["seed"] = int(seed) % (2**63)
    return kw


def request_seeds(group_seeds: Sequence[int], num_generations: int) -> list[int]:
    """``SamplingParams.seed`` of each prompt's ``n = G`` request, so that no two samples of a call share a seed.

    vLLM splits an ``n = G`` request into G requests seeded ``seed + j`` (``j < G``), and its sampling noise
    depends only on a request's seed and the token position. Passing the trainer's group seeds as they are
    (consecutive: ``base + g``) would give sample j of group g the seed of sample j-1 of group g+1. Instead
    group seed ``s`` gets the slot ``s mod K``, ``K = floor((2^63 - 1) / G)``, and the request seed
    ``slot * G``: group b's samples are seeded ``slot_b*G ... slot_b*G + G - 1``, blocks that are disjoint for
    distinct slots and lie inside ``[0, 2^63 - 1)`` (int64, as vLLM and torch's generators need). A slot
    already taken in this call (equal group seeds, or seeds equal modulo K) moves to the next free one, so the
    map is deterministic in (group seeds, G) and collision-free. Trainer seeds of one step are consecutive, so
    they never collide in practice and each group's seeds depend on its own group seed only.
    """
    n = max(1, int(num_generations))
    slots = INT64_MAX // n
    if len(group_seeds) > slots:
        raise ConfigError(f"request_seeds: {len(group_seeds)} prompts x {n} samples do not fit in int64 seeds")
    taken: set[int] = set()
    out = []
    for s in group_seeds:
        slot = int(s) % slots
        while slot in taken:
            slot = (slot + 1) % slots
        taken.add(slot)
        out.append(slot * n)
    return out


def episode_request_seeds(group_seeds: Sequence[int], num_generations: int, max_turns: int) -> list[list[int]]:
    """``SamplingParams.seed`` of each turn of each episode (group order): ``out[b*G + j][t]`` seeds turn t of
    episode j of group b.

    Each turn is its own ``n = 1`` request, and a seeded vLLM request draws its noise from a generator seeded with
    the request's seed, so reusing an episode's seed every turn would replay turn 1's noise in turn 2. Group b gets
    the block of ``G * max_turns`` seeds :func:`request_seeds` gives it for ``n = G * max_turns``, and episode j's
    turn t the seed ``block + j * max_turns + t``: no two turns of a call share a seed, all stay inside int64, and
    an episode's seeds depend on its group seed and its index only (not on which other episodes share the call).
    """
    G, T = max(1, int(num_generations)), max(1, int(max_turns))
    blocks = request_seeds(group_seeds, G * T)
    return [[blocks[b] + j * T + t for t in range(T)] for b in range(len(group_seeds)) for j in range(G)]


def truncates_support(cfg: Any) -> bool:
    """True when the sampling config samples from a truncated distribution (top-p < 1, top-k > 0 or min-p > 0).

    vLLM's processed log-probs are then renormalised over the kept tokens (``log p(t)/T - log Z_kept``), while
    the trainer's log-probs are the full softmax of ``logits / T``: the importance ratio trainer/engine is
    ``Z_kept <= 1`` times the true one, i.e. biased low by the probability mass the truncation dropped."""
    return float(cfg.top_p) < 1.0 or int(cfg.top_k or 0) > 0 or float(cfg.min_p) > 0.0


def engine_dtype(requested: str, train_dtype: torch.dtype, on_cuda: bool, bf16_supported: bool) -> str:
    """vLLM's ``dtype``: ``requested`` unless "auto"; auto = the training dtype when it is 16-bit or vLLM is not
    on a GPU, else bfloat16 (float16 on GPUs without bfloat16). vLLM's FlashAttention backends do not take
    float32, which would fall back to a slower attention with twice the KV-cache memory."""
    if requested != "auto":
        return requested
    name = str(train_dtype).removeprefix("torch.")
    if not on_cuda or train_dtype in (torch.bfloat16, torch.float16):
        return name
    return "bfloat16" if bf16_supported else "float16"


@contextlib.contextmanager
def preserved_global_state() -> Iterator[None]:
    """Put back, on exit, the process-wide state vLLM changes when its engine runs in this process.

    vLLM's worker seeds Python's, NumPy's and torch's global RNGs (CPU and CUDA) with its ``seed`` and sets
    torch's float32 matmul precision (``VLLM_FLOAT32_MATMUL_PRECISION``, default "highest"). rlvr depends on
    both: the RNG state is saved in checkpoints (a resumed run must draw what the uninterrupted one drew) and
    the matmul precision is the user's choice for training.
    """
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    precision = torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.set_float32_matmul_precision(precision)


@dataclass
class Completion:
    """One sampled completion as vLLM's ``CompletionOutput`` exposes it (the fields used here)."""

    token_ids: Sequence[int]
    logprobs: Optional[Sequence[dict]]  # per token: {token_id: Logprob(logprob=...)} or {token_id: float}
    finish_reason: Optional[str]  # "stop" (EOS / stop token) | "length" (max_tokens) | None


def _token_logprob(entry: Any, token: int) -> float:
    if entry is None:
        return float("nan")
    value = entry.get(token) if isinstance(entry, dict) else None
    if value is None:
        return float("nan")
    return float(getattr(value, "logprob", value))


def turn_output(completion: Any) -> tuple[list[int], list[float]]:
    """(token ids, log-probs) of one ``CompletionOutput`` (NaN where vLLM gave no log-prob for a token)."""
    ids = [int(t) for t in completion.token_ids]
    lp = completion.logprobs or [None] * len(ids)
    return ids, [_token_logprob(lp[j] if j < len(lp) else None, ids[j]) for j in range(len(ids))]


def rollouts_from_outputs(
    prompt_ids: Sequence[Sequence[int]],
    completions: Sequence[Sequence[Any]],
    prompts: Sequence[str],
    pad_id: int,
    eos_ids: Sequence[int],
    decode: Any = None,
) -> Rollouts:
    """Rollouts (group order) from B prompts' token ids and each prompt's G completions.

    ``completions[b]`` are the outputs of prompt b (``RequestOutput.outputs``). Prompts are left-padded,
    completions right-padded with ``pad_id``; ``truncated`` is True when a completion stopped for length
    (finish reason "length", or no reason and no EOS at its end); a token without a log-prob gets NaN
    (the importance weight of such a token is 1).
    """
    B = len(prompt_ids)
    groups = [len(c) for c in completions]
    if len(completions) != B or len(set(groups)) > 1:
        raise ValueError(
            f"rollouts_from_outputs: expected {B} prompts with the same number of completions, got {groups}"
        )
    G = groups[0] if groups else 0
    N = B * G
    P = max((len(p) for p in prompt_ids), default=0)
    rows = [c for group in completions for c in group]
    T = max([len(c.token_ids) for c in rows] + [1])
    prompt = torch.full((N, P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((N, P), dtype=torch.long)
    tokens = torch.full((N, T), pad_id, dtype=torch.long)
    mask = torch.zeros((N, T), dtype=torch.long)
    logps = torch.zeros((N, T), dtype=torch.float32)
    truncated = torch.zeros(N, dtype=torch.bool)
    eos = {int(e) for e in eos_ids}
    for i, c in enumerate(rows):
        p = list(prompt_ids[i // G])
        if p:
            prompt[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            prompt_mask[i, P - len(p) :] = 1
        ids = [int(t) for t in c.token_ids]
        n = len(ids)
        if n:
            tokens[i, :n] = torch.tensor(ids, dtype=torch.long)
            mask[i, :n] = 1
            lp = c.logprobs or [None] * n
            logps[i, :n] = torch.tensor([_token_logprob(lp[j] if j < len(lp) else None, ids[j]) for j in range(n)])
        reason = getattr(c, "finish_reason", None)
        truncated[i] = reason == "length" or (reason is None and (n == 0 or ids[-1] not in eos))
    texts = decode(tokens.masked_fill(mask == 0, pad_id)) if decode is not None else ["" for _ in range(N)]
    return Rollouts(
        prompt_ids=prompt,
        prompt_mask=prompt_mask,
        completion_ids=tokens,
        completion_mask=mask,
        truncated=truncated,
        group=torch.arange(B).repeat_interleave(G),
        sampling_logps=logps.masked_fill(mask == 0, 0.0),
        prompts=[p for p in prompts for _ in range(G)],
        completions=list(texts),
    )
