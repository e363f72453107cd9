"""``engine=hf``: sampling with transformers models and a KV cache, prompt prefilled once per group.

The B prompts are prefilled together (left-padded) by the model's own forward; their KV cache is
then repeated G times, so the G completions of a prompt share one prefill. Decoding samples the
whole batch per step and stops when every row has produced EOS or ``max_new_tokens`` is reached.
Each group draws its random numbers from its own generator seeded by (seed, group seed), so a
group's completions do not depend on which other groups are in the batch.

Two decode loops, picked by ``engine.decoder`` (docs/performance.md has the measurements):

* ``fast`` (``auto`` picks it for Llama, Mistral, Qwen2 and Qwen3 decoders): the static-KV decoder of
  :mod:`rlvr.plugins.engines.fast_decoder`; its packed weights (``engine.packed_weights``) are built at
  the start of each ``generate()`` (the weights change every optimizer step) and released at its end.
* ``transformers``: the model's forward with a ``DynamicCache``, for every other architecture.

Both give the same tokens and log-probs (tested), and ``sampling_logps`` equal the trainer's
teacher-forced log-probs of the same tokens within float tolerance.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from rlvr import PluginSpec, hookimpl
from rlvr.core import resources
from rlvr.core.errors import ConfigError
from rlvr.core.importance import ImportanceSamplingConfig
from rlvr.core.policy import Policy, eos_token_ids
from rlvr.core.rollout import Rollouts
from rlvr.plugins.engines.fast_decoder import FastDecoder, fast_decoder_reason, onednn_linear_available, should_compact
from rlvr.plugins.engines.sampling import SamplingConfig, filter_logits, sample_inverse_cdf, validate_sampling

DECODERS = ("auto", "fast", "transformers")


@dataclass
class HFEngineConfig(SamplingConfig):
    decoder: str = "auto"  # auto | fast (static KV cache, Llama-family) | transformers (model forward + DynamicCache)
    packed_weights: str = "auto"  # auto (CPU, float32/bfloat16) | on | off: oneDNN pre-packed projections in `fast`
    compact_finished: bool = True  # `fast`: finished rows leave the decode batch (see should_compact)
    # auto (bfloat16 where the fast decoder packs float32 weights on a CPU with AVX512-BF16/AMX) | float32 | bfloat16:
    # the packed decode matmuls' dtype (weights stay as they are)
    decode_dtype: str = "auto"
    importance_sampling_cap: float = 3.0  # decode_dtype=bfloat16: cap of the token-level truncated IS ratio
    min_new_tokens: int = 0  # no end-of-sequence token before this many new tokens (transformers' min_new_tokens)


def validate(cfg: HFEngineConfig) -> None:
    validate_sampling(cfg)
    if cfg.decoder not in DECODERS:
        raise ConfigError(f"engine.decoder={cfg.decoder!r}: choose one of {', '.join(DECODERS)}")
    if str(cfg.packed_weights) not in ("auto", "on", "off", "True", "False"):
        raise ConfigError(f"engine.packed_weights={cfg.packed_weights!r}: choose auto, on or off")
    if cfg.decode_dtype not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"engine.decode_dtype={cfg.decode_dtype!r}: choose auto, float32 or bfloat16")
    if cfg.min_new_tokens < 0 or cfg.min_new_tokens > cfg.max_new_tokens:
        raise ConfigError(
            f"engine.min_new_tokens={cfg.min_new_tokens}: must be in [0, engine.max_new_tokens={cfg.max_new_tokens}]"
        )
    if cfg.decode_dtype == "bfloat16" and cfg.decoder == "transformers":
        raise ConfigError(
            "engine.decode_dtype=bfloat16 runs in the fast decoder only; use engine.decoder=auto or fast"
        )


def cache_argument(model: Any) -> str:
    """Name of the forward() argument that takes the KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class HFEngine:
    def __init__(self, cfg: HFEngineConfig) -> None:
        validate(cfg)
        self.cfg = cfg
        # float32 decode samples from the trainer's own distribution: no correction; bfloat16 matmuls sample from a
        # slightly different one, which the trainer reweights (token-level truncated importance sampling). Set by
        # each generate() to what its decode ran in (``auto`` is decided there, once the model is known).
        self.importance_sampling: Optional[ImportanceSamplingConfig] = None
        self.last_decode_dtype = ""  # what the last generate() decoded in: "float32" or "bfloat16"
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
            ids, mask = ids[:, -self.cfg.max_prompt_length :], mask[:, -self.cfg.max_prompt_length :]
        return ids, mask

    def use_packed(self, policy: Policy) -> bool:
        choice = str(self.cfg.packed_weights)
        dtype = next(policy.model.parameters()).dtype
        ok = policy.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and onednn_linear_available()
        if choice in ("on", "True"):
            if not ok:
                raise ConfigError(
                    "engine.packed_weights=on needs float32/bfloat16 weights on the CPU and a PyTorch "
                    "with oneDNN (torch.backends.mkldnn); use packed_weights=auto"
                )
            return True
        return ok and choice == "auto"

    def decoder_for(self, policy: Policy, total_length: int) -> Optional[FastDecoder]:
        """The fast decoder when it applies (rebuilt after any parameter changed), else None. Sets
        ``importance_sampling`` and ``last_decode_dtype`` to match the decode about to run."""
        self.importance_sampling, self.last_decode_dtype = None, "float32"
        if self.cfg.decoder == "transformers":
            return None
        reason = fast_decoder_reason(policy.model, total_length)
        if reason is not None:
            if self.cfg.decoder == "fast":
                raise ConfigError(f"engine.decoder=fast cannot run this model: {reason}; use engine.decoder=auto")
            return None
        packed = self.use_packed(policy)
        dtype = self.decode_dtype_for(policy, packed)
        if dtype is not None:
            self.last_decode_dtype = "bfloat16"
            self.importance_sampling = ImportanceSamplingConfig(
                mode="token_truncate", cap=self.cfg.importance_sampling_cap
            )
        self._fast = FastDecoder(policy.model, packed=packed, dtype=dtype)
        return self._fast

    def decode_dtype_for(self, policy: Policy, packed: bool) -> Optional[torch.dtype]:
        """``engine.decode_dtype`` for this model: None (the weights' own dtype) or bfloat16. ``auto`` is bfloat16
        when the packed weights are float32 on a CPU that multiplies bfloat16 in hardware."""
        choice = self.cfg.decode_dtype
        if choice == "bfloat16" and not packed:
            raise ValueError(
                "engine.decode_dtype=bfloat16 needs the packed decode weights (CPU, a PyTorch with "
                "oneDNN, engine.packed_weights=auto/on); use engine.decode_dtype=float32 or auto here"
            )
        if choice == "auto":
            return torch.bfloat16 if packed and resources.bfloat16_pays(next(policy.model.parameters())) else None
        return torch.bfloat16 if choice == "bfloat16" else None

    @torch.no_grad()
    def generate(
        self,
        policy: Policy,
        prompts: Sequence[str],
        num_generations: int,
        seeds: Sequence[int],
        greedy: bool = False,
        max_new_tokens: Optional[int] = None,
    ) -> Rollouts:
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
            out = model(
                input_ids=ids,
                attention_mask=prompt_mask,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=1,
                **cache_kw,
            )
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
                    o = model(
                        input_ids=tokens[:, None],
                        attention_mask=full_mask[:, : P + t + 1],
                        position_ids=positions[:, None],
                        use_cache=True,
                        **cache_kw,
                    )
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
        texts = policy.tokenizer.batch_decode(
            tokens.masked_fill(comp_mask == 0, pad_id).cpu(), skip_special_tokens=True
        )
        return Rollouts(
            prompt_ids=ids.repeat_interleave(G, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(G, dim=0),
            completion_ids=tokens,
            completion_mask=comp_mask,
            truncated=(~done).cpu(),
            group=torch.arange(B).repeat_interleave(G),
            sampling_logps=logps * comp_mask,
            prompts=[p for p in prompts for _ in range(G)],
            completions=texts,
        )

    def sample(
        self, logits: torch.Tensor, gens: Sequence[torch.Generator], greedy: bool
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

    def generate_episodes(
        self,
        policy: Policy,
        env: Any,
        rows: Sequence[dict[str, Any]],
        num_generations: int,
        seeds: Sequence[int],
        greedy: bool = False,
        session: str = "kv",
        stats: Any = None,
    ) -> Rollouts:
        """Multi-turn episodes (``env=<name>``): every active episode decodes together, each episode's KV cache
        is extended with the environment's tokens (``session="reprefill"``: the naive re-prefill, for
        comparison). ``engine.max_new_tokens`` limits each assistant turn. See :mod:`rlvr.core.episodes`."""
        from rlvr.core.episodes import run_episodes

        self.importance_sampling, self.last_decode_dtype = None, "float32"  # episodes decode in the model's dtype
        if self.cfg.min_new_tokens:
            raise ConfigError(
                f"engine.min_new_tokens={self.cfg.min_new_tokens} applies to single-turn generation only; with "
                "env=... a turn ends at the end-of-turn token the environment waits for: set engine.min_new_tokens=0"
            )
        return run_episodes(
            policy,
            env,
            rows,
            num_generations,
            seeds,
            self.sample,
            self.cfg.max_new_tokens,
            self.cfg.max_prompt_length,
            greedy=greedy,
            session=session,
            stats=stats,
        )

    def _decode(
        self,
        policy: Policy,
        logits: torch.Tensor,
        next_pos: torch.Tensor,
        forward: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
        seeds: Sequence[int],
        G: int,
        max_new: int,
        greedy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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
            logp_all = scaled.log_softmax(-1)  # log-probs of the unfiltered distribution (the trainer's)
            early = t < cfg.min_new_tokens  # no end of sequence yet: sample from the distribution without it
            if early:
                scaled = scaled.index_fill(-1, eos, float("-inf"))
            if greedy:
                nxt = scaled.argmax(-1)
            else:
                if filtering:
                    probs = filter_logits(scaled, cfg.top_k, cfg.top_p, cfg.min_p).softmax(-1)
                else:
                    probs = scaled.softmax(-1) if early else logp_all.exp()
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


@hookimpl
def rlvr_engines() -> list[PluginSpec]:
    return [PluginSpec("hf", HFEngine, HFEngineConfig, "transformers + KV cache, prompt prefilled once per group")]
