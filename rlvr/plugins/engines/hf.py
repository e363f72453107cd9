"""``engine=hf``: sampling with transformers models and a KV cache, prompt prefilled once per group.

The B prompts are prefilled together (left-padded); the KV cache is then repeated G times, so
the G completions of a prompt share one prefill. Decoding samples the whole batch per step and
stops when every row has produced EOS or ``max_new_tokens`` is reached. Each group draws its
random numbers from its own generator seeded by (seed, group seed), so a group's completions
do not depend on which other groups are in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from rlvr import PluginSpec, hookimpl
from rlvr.core.policy import Policy, eos_token_ids
from rlvr.core.rollout import Rollouts


@dataclass
class HFEngineConfig:
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    max_prompt_length: int = 512


def validate(cfg: HFEngineConfig) -> None:
    if cfg.max_new_tokens <= 0:
        raise ValueError(f"engine.max_new_tokens must be > 0, got {cfg.max_new_tokens}")
    if cfg.temperature <= 0:
        raise ValueError(f"engine.temperature must be > 0, got {cfg.temperature} (use a small value for near-greedy)")
    if not 0 < cfg.top_p <= 1:
        raise ValueError(f"engine.top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.top_k < 0 or not 0 <= cfg.min_p < 1:
        raise ValueError(f"engine.top_k must be >= 0 and engine.min_p in [0, 1), got {cfg.top_k}, {cfg.min_p}")


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


def sample_inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Draw one token per row by inverting the CDF: the first index whose cumulative probability exceeds u.

    probs: float [N, V] rows summing to 1; uniform: float [N] in [0, 1). Returns long [N]. One random
    number per row (instead of one per vocabulary entry), so per-group generators stay cheap.
    """
    cdf = probs.cumsum(-1)
    u = (uniform.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)  # scale by the total: robust to rounding
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


class HFEngine:
    def __init__(self, cfg: HFEngineConfig) -> None:
        validate(cfg)
        self.cfg = cfg

    def encode_prompts(self, policy: Policy, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = policy.tokenizer
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if ids.shape[1] > self.cfg.max_prompt_length:  # keep the end of over-long prompts (left truncation)
            ids, mask = ids[:, -self.cfg.max_prompt_length:], mask[:, -self.cfg.max_prompt_length:]
        return ids, mask

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
        ids, mask = self.encode_prompts(policy, prompts)
        ids, mask = ids.to(device), mask.to(device)
        B, P = ids.shape
        was_training = model.training
        model.eval()
        from transformers import DynamicCache

        cache = DynamicCache()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(G)  # share the prompt prefill across the group
        logits = out.logits[:, -1, :].float().repeat_interleave(G, dim=0)
        mask = mask.repeat_interleave(G, dim=0)
        next_pos = pos[:, -1:].repeat_interleave(G, dim=0) + 1
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        eos = torch.tensor(eos_token_ids(policy), device=device)
        pad_id = policy.tokenizer.pad_token_id
        N = B * G
        tokens = torch.full((N, max_new), pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((N, max_new), dtype=torch.float32, device=device)
        done = torch.zeros(N, dtype=torch.bool, device=device)
        lengths = torch.full((N,), max_new, dtype=torch.long, device=device)
        for t in range(max_new):
            scaled = logits / cfg.temperature
            logp_all = scaled.log_softmax(-1)
            if greedy:
                nxt = scaled.argmax(-1)
            else:
                probs = filter_logits(scaled, cfg.top_k, cfg.top_p, cfg.min_p).softmax(-1)
                nxt = sample_inverse_cdf(probs, torch.cat([torch.rand(G, generator=g) for g in gens]).to(device))
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            tokens[:, t] = nxt
            logps[:, t] = torch.where(done, 0.0, logp_all.gather(-1, nxt[:, None]).squeeze(-1))
            finished_now = ~done & torch.isin(nxt, eos)
            lengths = torch.where(finished_now, torch.full_like(lengths, t + 1), lengths)
            done = done | finished_now
            if bool(done.all()) or t == max_new - 1:
                break
            mask = torch.cat([mask, torch.ones((N, 1), dtype=mask.dtype, device=device)], dim=1)
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache,
                        use_cache=True)
            next_pos = next_pos + 1
            logits = out.logits[:, -1, :].float()
        T = int(lengths.max().item())
        tokens, logps = tokens[:, :T], logps[:, :T]
        comp_mask = (torch.arange(T, device=device)[None, :] < lengths[:, None]).long()
        truncated = ~done
        if was_training:
            model.train()
        texts = policy.tokenizer.batch_decode(tokens.masked_fill(comp_mask == 0, pad_id), skip_special_tokens=True)
        rep_ids, rep_mask = ids.repeat_interleave(G, dim=0), mask[:, :P]
        return Rollouts(prompt_ids=rep_ids, prompt_mask=rep_mask, completion_ids=tokens, completion_mask=comp_mask,
                        truncated=truncated.cpu(), group=torch.arange(B).repeat_interleave(G),
                        sampling_logps=logps * comp_mask, prompts=[p for p in prompts for _ in range(G)],
                        completions=texts)


@hookimpl
def rlvr_engines() -> list[PluginSpec]:
    return [PluginSpec("hf", HFEngine, HFEngineConfig, "transformers + KV cache, prompt prefilled once per group")]
