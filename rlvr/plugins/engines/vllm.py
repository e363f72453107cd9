"""``engine=vllm``: a colocated vLLM ``LLM`` in the training process (GPU). UNTESTED ON LIVE vLLM.

Reviewed call by call against vLLM 0.33.0's source and TRL's colocate mode (2026-11-29); the pure parts
(weight names, seeds, sampling parameters, output conversion, importance weights) and the life cycle are
tested on the CPU against a stand-in ``vllm`` module that mirrors the behaviour described here; the live
tests skip when vLLM is not installed. User documentation: ``docs/vllm.md``.

* One request per prompt with ``n = G``. vLLM splits it into G requests (sample j seeded ``seed + j``) that
  share the prompt's KV blocks through the prefix cache; it does not prefill once and fork. The request
  seeds are spread by G (:func:`request_seeds`) so no two samples of a step share a seed.
* The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set for it), so the trainer
  reaches vLLM's ``nn.Module`` and pushes weights through its ``load_weights``, streamed one tensor at a
  time: every trainable parameter for full fine-tuning; for LoRA each adapted layer's weight with the
  adapter folded in (no merge/unmerge of the training model, no disk round trip; the frozen base stays in
  vLLM). Pushed before a generation when a parameter changed since the last push, cast to vLLM's dtype
  (bfloat16 on GPUs by default). ``tensor_parallel_size`` must be 1.
* Sleep mode (``enable_sleep_mode``): :meth:`VLLMEngine.release` (the trainer calls it once per step, after
  the rollout and before the log-prob / optimizer phases) frees the KV cache (level 1 offloads the weights to
  CPU memory, level 2 drops them and the next push restores them). Evaluation does not sleep.
* ``sampling_logps`` are vLLM's log-probs of the sampled tokens (``logprobs_mode = "processed_logprobs"``:
  after temperature, and renormalised over the top-k / top-p / min-p support when those are on). The trainer
  multiplies each token's loss by a capped ratio between its own log-probs and these
  (:mod:`rlvr.core.importance`); with a truncated support that ratio is biased low, and the engine warns.
* Multi-turn episodes (``env=...``, :meth:`VLLMEngine.generate_episodes`): token in, token out, one batched
  ``generate`` per turn whose requests are each episode's token ids so far (the prefix cache holds the history),
  ``n = 1`` and a seed per episode and turn (:func:`episode_request_seeds`); the turn rules are shared with
  ``engine=hf`` (:mod:`rlvr.core.token_episodes`).
* vLLM's side effects on the process: it seeds the global RNGs and sets the float32 matmul precision (both
  put back after every vLLM call), and it initialises a one-rank ``torch.distributed`` process group.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import torch

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ConfigError, MissingDependencyError, MissingValueError, PluginError
from rlvr.core.importance import ImportanceSamplingConfig
from rlvr.core.policy import Policy, eos_token_ids
from rlvr.core.rollout import Rollouts
from rlvr.plugins.engines.sampling import SamplingConfig, validate_sampling
from rlvr.plugins.engines.vllm_utils import (
    engine_dtype,
    episode_request_seeds,
    preserved_global_state,
    request_seeds,
    rollouts_from_outputs,
    sampling_kwargs,
    truncates_support,
    turn_output,
    weights_for_vllm,
)

INSTALL_HINT = "pip install 'rlvr[vllm]'"
MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
DTYPES = ("auto", "bfloat16", "float16", "float32")
# where vLLM's nn.Module sits in an in-process engine: the worker wrapper's worker (vLLM 0.33, V1 and V2 model
# runners); TRL's shorter path relies on the wrapper forwarding attribute look-ups to its worker
MODEL_PATHS = (
    "model_executor.driver_worker.worker.model_runner.model",
    "model_executor.driver_worker.model_runner.model",
)


@dataclass
class VLLMEngineConfig(SamplingConfig):
    model_path: str = ""  # what vLLM loads at start-up; "" = the policy's name_or_path (a Hub id or a local directory)
    dtype: str = "auto"  # auto = bfloat16 on a GPU (float16 without bf16 support) unless training is 16-bit already
    gpu_memory_utilization: float = 0.3  # share of GPU memory vLLM may take (weights + KV cache) while awake
    max_model_len: int = 0  # 0 = max_prompt_length + max_new_tokens
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 4096  # tokens per scheduler step (as TRL); 0 = vLLM's default
    enable_sleep_mode: bool = True  # release vLLM's GPU memory for the optimizer step
    sleep_level: int = 0  # 0 = auto: 2 for full fine-tuning (weights re-pushed anyway), 1 for LoRA (base weights kept)
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # True skips CUDA-graph capture (less start-up time and memory)
    tensor_parallel_size: int = 1  # only 1: one vLLM per GPU (under torchrun, one per process)
    seed: int = 0
    # off | token_truncate | token_mask | sequence_truncate | sequence_mask
    importance_sampling: str = "token_truncate"
    importance_sampling_cap: Optional[float] = 3.0
    importance_sampling_floor: Optional[float] = None


def validate(cfg: VLLMEngineConfig) -> None:
    validate_sampling(cfg)
    if not 0.0 < cfg.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"engine.gpu_memory_utilization must be in (0, 1], got {cfg.gpu_memory_utilization}")
    if cfg.sleep_level not in (0, 1, 2):
        raise ConfigError(f"engine.sleep_level must be 0 (auto), 1 or 2, got {cfg.sleep_level}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"engine.dtype={cfg.dtype!r}: choose one of {', '.join(DTYPES)}")
    if cfg.max_num_seqs < 1 or cfg.max_model_len < 0 or cfg.max_num_batched_tokens < 0:
        raise ConfigError(
            "engine.max_num_seqs must be >= 1, engine.max_model_len and engine.max_num_batched_tokens "
            f">= 0, got {cfg.max_num_seqs}, {cfg.max_model_len}, {cfg.max_num_batched_tokens}"
        )
    if 0 < cfg.max_num_batched_tokens < cfg.max_num_seqs:
        raise ConfigError(
            f"engine.max_num_batched_tokens={cfg.max_num_batched_tokens} is below engine.max_num_seqs="
            f"{cfg.max_num_seqs} (vLLM rejects it): raise the first or lower the second"
        )
    if cfg.tensor_parallel_size != 1:
        raise ConfigError(
            f"engine.tensor_parallel_size={cfg.tensor_parallel_size} is not supported: engine=vllm runs one vLLM per "
            "GPU inside the training process (under torchrun, one per rank) and pushes weights into its model "
            "directly; with tensor parallelism vLLM's workers hold the shards in other processes (or, under "
            "torchrun, the ranks sharing an engine would have to send it the same prompts). Use "
            "engine.tensor_parallel_size=1 with a model that fits one GPU (LoRA / a smaller engine.dtype help), "
            "or engine=hf"
        )
    importance_config(cfg)  # validates mode, cap and floor


def importance_config(cfg: VLLMEngineConfig) -> ImportanceSamplingConfig:
    """The trainer-side IS correction this engine asks for (``engine.importance_sampling*``)."""
    return ImportanceSamplingConfig(
        mode=cfg.importance_sampling, cap=cfg.importance_sampling_cap, floor=cfg.importance_sampling_floor
    )


def require_vllm() -> Any:
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            f"engine=vllm needs vLLM on a CUDA machine: {INSTALL_HINT} (or use engine=hf)"
        ) from err
    return vllm


def parameters_version(model: Any) -> tuple[int, ...]:
    """Changes whenever a trainable parameter is modified in place (an optimizer step, a checkpoint load)."""
    return tuple(p._version for p in model.parameters() if p.requires_grad)


def in_process_engine_env() -> None:
    """Keep vLLM's engine core in this process (the weight push needs its model object): set
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` before the ``LLM`` is built, overriding an inherited value."""
    inherited = os.environ.get(MULTIPROCESSING_ENV)
    if inherited not in (None, "0"):
        warnings.warn(
            f"engine=vllm: {MULTIPROCESSING_ENV}={inherited} from the environment is overridden with 0 "
            "(the trainer pushes weights into vLLM's model, which must live in this process)",
            stacklevel=3,
        )
    os.environ[MULTIPROCESSING_ENV] = "0"


class VLLMEngine:
    def __init__(self, cfg: VLLMEngineConfig) -> None:
        validate(cfg)
        self.cfg = cfg
        self.importance_sampling = importance_config(cfg)  # read by the trainer for the IS correction
        if self.importance_sampling.enabled and truncates_support(cfg):
            warnings.warn(
                f"engine=vllm with engine.top_p={cfg.top_p}, engine.top_k={cfg.top_k}, engine.min_p={cfg.min_p} and "
                f"engine.importance_sampling={cfg.importance_sampling}: vLLM's log-probs are renormalised over the "
                "kept tokens while the trainer's are the full softmax of logits / temperature, so the importance "
                "ratio is biased low by the probability mass the truncation drops (and clipping sees the biased "
                "ratio). Sample with top_p=1, top_k=0, min_p=0, or set engine.importance_sampling=off",
                stacklevel=2,
            )
        self.llm: Any = None
        self.dtype: Optional[str] = None  # vLLM's dtype, once started
        self._model: Any = None  # vLLM's nn.Module (in-process engine)
        self._pushed_version: Optional[tuple[int, ...]] = None
        self._weights_resident = False  # False after sleep level 2: the next push must send every weight
        self._awake = {"weights": True, "kv_cache": True}
        self.last_decoder = "vllm"
        self.min_model_len = 0  # raised by generate_episodes before start-up: prompt + env.max_tokens must fit
        self.model_len = 0  # vLLM's max_model_len, once started

    # ----- vLLM life cycle ----------------------------------------------------------------
    def sleep_level(self, policy: Policy) -> int:
        return self.cfg.sleep_level or (1 if policy.is_lora else 2)

    def llm_kwargs(self, policy: Policy) -> dict[str, Any]:
        """The ``vllm.LLM`` keyword arguments for this config and policy."""
        cfg, model = self.cfg, policy.model
        path = cfg.model_path or getattr(getattr(model, "config", None), "_name_or_path", "") or policy.name
        if not path:
            raise MissingValueError("engine=vllm: set engine.model_path to the model's directory or Hub id")
        on_cuda = torch.cuda.is_available()
        dtype = engine_dtype(
            cfg.dtype, next(model.parameters()).dtype, on_cuda, on_cuda and torch.cuda.is_bf16_supported()
        )
        kwargs: dict[str, Any] = dict(
            model=path,
            dtype=dtype,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len or max(cfg.max_prompt_length + cfg.max_new_tokens, self.min_model_len),
            max_num_seqs=cfg.max_num_seqs,
            enable_sleep_mode=cfg.enable_sleep_mode,
            enable_prefix_caching=cfg.enable_prefix_caching,
            enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=1,
            seed=cfg.seed,
            logprobs_mode="processed_logprobs",
        )
        if cfg.max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"  # one vLLM per training process
        return kwargs

    def start(self, policy: Policy) -> Any:
        """Create the colocated ``vllm.LLM`` (once), with its engine core in this process."""
        if self.llm is not None:
            return self.llm
        vllm = require_vllm()
        kwargs = self.llm_kwargs(policy)
        in_process_engine_env()
        with preserved_global_state():  # vLLM reseeds the global RNGs and sets the float32 matmul precision
            llm = vllm.LLM(**kwargs)
        model = self._find_model(llm)
        if model is None:
            raise PluginError(
                f"engine=vllm: vLLM {getattr(vllm, '__version__', '?')} did not expose its model in this process "
                f"(looked for llm.llm_engine.{' and llm.llm_engine.'.join(MODEL_PATHS)}; "
                f"{MULTIPROCESSING_ENV}={os.environ.get(MULTIPROCESSING_ENV)}), so weights cannot be pushed into it. "
                "This engine needs vLLM's in-process engine core with one GPU per engine (vllm>=0.33 as pinned by "
                f"{INSTALL_HINT}); use engine=hf otherwise"
            )
        self.llm, self._model, self.dtype = llm, model, str(kwargs["dtype"])
        self.model_len = int(kwargs["max_model_len"])
        # vLLM loaded `path`, which may not be the policy's current weights: the first sync pushes all of them
        self._weights_resident, self._pushed_version = True, None
        self._awake = {"weights": True, "kv_cache": True}
        return self.llm

    @staticmethod
    def _find_model(llm: Any) -> Any:
        """The ``nn.Module`` vLLM runs when its engine core is in this process, else None."""
        for path in MODEL_PATHS:
            obj: Any = getattr(llm, "llm_engine", None)
            try:
                for attr in path.split("."):
                    obj = getattr(obj, attr)
            except AttributeError:
                continue
            if obj is not None and hasattr(obj, "load_weights"):
                return obj
        return None

    def _load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream ``(name, tensor)`` pairs into vLLM's model (it consumes them one by one)."""
        model = self._find_model(self.llm) or self._model  # looked up again: the handle vLLM holds now
        model.load_weights(weights)

    def wake(self, what: str) -> None:
        """Give vLLM back its ``weights`` or its ``kv_cache`` after a sleep."""
        if not self.cfg.enable_sleep_mode or self._awake[what]:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the training step's cached blocks back to the driver first
        with preserved_global_state():
            self.llm.wake_up(tags=[what])
        self._awake[what] = True

    def release(self, policy: Policy) -> None:
        """Give the GPU memory vLLM holds back for the rest of the step (sleep mode): frees the KV cache, and
        offloads (level 1) or drops (level 2) the weights. The trainer calls it once per step, after the rollout;
        the next :meth:`generate` wakes vLLM up. Evaluation never sleeps. A no-op without sleep mode."""
        if not self.cfg.enable_sleep_mode or self.llm is None or not any(self._awake.values()):
            return
        level = self.sleep_level(policy)
        with preserved_global_state():
            self.llm.sleep(level=level)
        self._awake = {"weights": False, "kv_cache": False}
        if level >= 2:
            self._weights_resident = False

    def sync_weights(self, policy: Policy, force: bool = False) -> bool:
        """Push the policy's weights into vLLM if they changed since the last push; True when it pushed.

        ``generate`` calls it first, so the weights vLLM samples with are those after the last optimizer step."""
        self.start(policy)
        version = parameters_version(policy.model)
        if not force and self._weights_resident and version == self._pushed_version:
            return False
        self.wake("weights")
        changed_only = self._weights_resident and self._pushed_version is not None
        dtype = getattr(torch, self.dtype) if self.dtype else None
        with preserved_global_state():
            self._load_weights(weights_for_vllm(policy.model, changed_only=changed_only, dtype=dtype))
            self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self._pushed_version, self._weights_resident = version, True
        return True

    # ----- generation -----------------------------------------------------------------------
    def encode_prompts(self, policy: Policy, prompts: Sequence[str]) -> list[list[int]]:
        tok = policy.tokenizer
        ids = tok(list(prompts), add_special_tokens=False)["input_ids"]
        return [list(x)[-self.cfg.max_prompt_length :] for x in ids]

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
        """Same contract as ``engine=hf``; ``seeds[b]`` seeds prompt b's group (spread by
        :func:`request_seeds` so that no two samples of the call share vLLM's per-sample seed)."""
        self.sync_weights(policy)  # starts vLLM on first use
        from vllm import SamplingParams

        self.wake("weights")
        self.wake("kv_cache")
        G, max_new = num_generations, max_new_tokens or self.cfg.max_new_tokens
        eos = eos_token_ids(policy)
        prompt_ids = self.encode_prompts(policy, prompts)
        params = [
            SamplingParams(**sampling_kwargs(self.cfg, G, max_new, s, greedy, eos)) for s in request_seeds(seeds, G)
        ]
        with preserved_global_state():
            outputs = self.llm.generate(
                [{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=params, use_tqdm=False
            )
        tok = policy.tokenizer
        ro = rollouts_from_outputs(
            prompt_ids,
            [o.outputs for o in outputs],
            prompts,
            tok.pad_token_id,
            eos,
            decode=lambda t: tok.batch_decode(t, skip_special_tokens=True),
        )
        device = policy.device
        for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "sampling_logps"):
            setattr(ro, name, getattr(ro, name).to(device))
        return ro

    def _fit_episodes(self, env: Any) -> None:
        """Make room in vLLM's ``max_model_len`` for a whole episode (first prompt + ``env.max_tokens``), or say
        which option to raise when it was set (or vLLM started) smaller."""
        need = self.cfg.max_prompt_length + int(env.cfg.max_tokens)
        have = self.model_len if self.llm is not None else self.cfg.max_model_len
        if have and have < need:
            raise ConfigError(
                f"engine=vllm: an episode needs up to engine.max_prompt_length + env.max_tokens = {need} tokens, but "
                f"vLLM's max_model_len is {have}: set engine.max_model_len={need} (or 0 to size it automatically)"
            )
        self.min_model_len = max(self.min_model_len, need)

    @torch.no_grad()
    def generate_episodes(
        self,
        policy: Policy,
        env: Any,
        rows: Sequence[dict[str, Any]],
        num_generations: int,
        seeds: Sequence[int],
        greedy: bool = False,
        stats: Any = None,
    ) -> Rollouts:
        """Multi-turn episodes (``env=<name>``), the contract of ``engine=hf``'s: Rollouts in group order with
        ``completion_mask`` 1 on sampled tokens and 0 on inserted env tokens, ``attention_mask``, vLLM's
        ``sampling_logps`` and ``episodes``. UNTESTED ON LIVE vLLM (tested against a stand-in).

        Token in, token out: every turn is one ``generate`` call over the active episodes, each a
        ``TokensPrompt`` of the episode's token ids so far (vLLM's prefix cache holds the history, so only new
        tokens are prefilled) with ``n = 1``, ``max_tokens`` = what the turn may still sample, and its own seed
        (:func:`episode_request_seeds`). See :mod:`rlvr.core.token_episodes` for the turn rules."""
        from rlvr.core.token_episodes import TurnRequest, run_token_episodes

        self._fit_episodes(env)
        self.sync_weights(policy)  # starts vLLM on first use
        from vllm import SamplingParams

        self.wake("weights")
        self.wake("kv_cache")
        eos = eos_token_ids(policy)
        turn_seeds = episode_request_seeds(seeds, num_generations, int(env.cfg.max_turns))

        def generate_turn(requests: list[TurnRequest]) -> list[tuple[list[int], list[float]]]:
            params = [
                SamplingParams(
                    **sampling_kwargs(self.cfg, 1, r.max_tokens, turn_seeds[r.episode][r.turn], greedy, eos)
                )
                for r in requests
            ]
            prompts = [{"prompt_token_ids": r.token_ids} for r in requests]  # vllm.inputs.TokensPrompt (a dict)
            with preserved_global_state():
                outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
            return [turn_output(o.outputs[0]) for o in outputs]

        ro = run_token_episodes(
            policy,
            env,
            rows,
            num_generations,
            generate_turn,
            self.cfg.max_new_tokens,
            self.cfg.max_prompt_length,
            stats=stats,
        )
        device = policy.device
        for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "sampling_logps"):
            setattr(ro, name, getattr(ro, name).to(device))
        if ro.attention_mask is not None:
            ro.attention_mask = ro.attention_mask.to(device)
        return ro


@hookimpl
def rlvr_engines() -> list[PluginSpec]:
    return [
        PluginSpec(
            "vllm",
            VLLMEngine,
            VLLMEngineConfig,
            "colocated vLLM (GPU, rlvr[vllm]): weights synced each step, sleep mode, IS correction",
        )
    ]
