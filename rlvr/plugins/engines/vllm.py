"""``engine=vllm``: a colocated vLLM ``LLM`` in the training process (GPU). UNTESTED ON LIVE vLLM.

Written against vLLM's documented offline API (``vllm.LLM``, ``SamplingParams``, ``LLM.sleep`` /
``LLM.wake_up``, ``LLM.reset_prefix_cache``, the model's ``load_weights``), the same calls TRL's
colocate mode makes; the pure parts (weight names, sampling parameters, output conversion,
importance weights) are tested on the CPU, the live tests skip when vLLM is not installed.

* One request per prompt with ``n = G``: vLLM prefills the prompt once and forks the G samples
  (and prefix caching is on), so the group shares its prefill as in ``engine=hf``.
* Weights: before a generation, if any parameter changed since the last push (an optimizer
  step), the weights go into vLLM in memory through ``load_weights``: every trainable parameter
  for full fine-tuning; for LoRA each adapted layer's weight with the adapter folded in (no
  merge/unmerge of the training model, no disk round trip; the frozen base weights stay in vLLM).
* Sleep mode (``enable_sleep_mode``): after each generation vLLM releases its KV cache (and at
  ``sleep_level`` 2 its weights, which the next push restores), so the optimizer step gets that
  GPU memory back; ``gpu_memory_utilization`` caps what vLLM takes while awake.
* ``sampling_logps`` are vLLM's log-probs of the sampled tokens (``logprobs_mode =
  "processed_logprobs"``: after temperature and top-k/top-p/min-p). The trainer multiplies each
  token's loss by a capped ratio between its own log-probs and these
  (:mod:`rlvr.core.importance`; ``importance_sampling`` / ``importance_sampling_cap``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from rlvr.core.errors import ConfigError, MissingDependencyError, MissingValueError
from rlvr import PluginSpec, hookimpl
from rlvr.core.importance import ImportanceSamplingConfig
from rlvr.core.policy import Policy, eos_token_ids
from rlvr.core.rollout import Rollouts
from rlvr.plugins.engines.hf import SamplingConfig, validate_sampling
from rlvr.plugins.engines.vllm_utils import rollouts_from_outputs, sampling_kwargs, weights_for_vllm

INSTALL_HINT = "pip install 'rlvr[vllm]'"


@dataclass
class VLLMEngineConfig(SamplingConfig):
    model_path: str = ""  # what vLLM loads at start-up; "" = the policy's name_or_path (a Hub id or a local directory)
    dtype: str = "auto"  # vLLM's dtype; auto = the training weights' dtype
    gpu_memory_utilization: float = 0.3  # share of GPU memory vLLM may take (weights + KV cache) while awake
    max_model_len: int = 0  # 0 = max_prompt_length + max_new_tokens
    max_num_seqs: int = 256
    enable_sleep_mode: bool = True  # release vLLM's GPU memory between generations
    sleep_level: int = 0  # 0 = auto: 2 for full fine-tuning (weights re-pushed anyway), 1 for LoRA (base weights kept)
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # True skips CUDA-graph capture (less start-up time and memory)
    tensor_parallel_size: int = 1
    seed: int = 0
    importance_sampling: str = "token_truncate"  # off | token_truncate | token_mask | sequence_truncate | sequence_mask
    importance_sampling_cap: Optional[float] = 3.0
    importance_sampling_floor: Optional[float] = None


def validate(cfg: VLLMEngineConfig) -> None:
    validate_sampling(cfg)
    if not 0.0 < cfg.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"engine.gpu_memory_utilization must be in (0, 1], got {cfg.gpu_memory_utilization}")
    if cfg.sleep_level not in (0, 1, 2):
        raise ConfigError(f"engine.sleep_level must be 0 (auto), 1 or 2, got {cfg.sleep_level}")
    if cfg.tensor_parallel_size < 1 or cfg.max_num_seqs < 1 or cfg.max_model_len < 0:
        raise ConfigError("engine.tensor_parallel_size and engine.max_num_seqs must be >= 1, engine.max_model_len >= 0")
    importance_config(cfg)  # validates mode, cap and floor


def importance_config(cfg: VLLMEngineConfig) -> ImportanceSamplingConfig:
    """The trainer-side IS correction this engine asks for (``engine.importance_sampling*``)."""
    return ImportanceSamplingConfig(mode=cfg.importance_sampling, cap=cfg.importance_sampling_cap,
                                    floor=cfg.importance_sampling_floor)


def require_vllm() -> Any:
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(f"engine=vllm needs vLLM on a CUDA machine: {INSTALL_HINT} (or use engine=hf)") from err
    return vllm


def parameters_version(model: Any) -> tuple[int, ...]:
    """Changes whenever a trainable parameter is modified in place (an optimizer step, a checkpoint load)."""
    return tuple(p._version for p in model.parameters() if p.requires_grad)


class VLLMEngine:
    def __init__(self, cfg: VLLMEngineConfig) -> None:
        validate(cfg)
        self.cfg = cfg
        self.importance_sampling = importance_config(cfg)  # read by the trainer for the IS correction
        self.llm: Any = None
        self._pushed_version: Optional[tuple[int, ...]] = None
        self._weights_resident = False  # False after sleep level 2: the next push must send every weight
        self._awake = {"weights": True, "kv_cache": True}
        self.last_decoder = "vllm"

    # ----- vLLM life cycle ----------------------------------------------------------------
    def sleep_level(self, policy: Policy) -> int:
        return self.cfg.sleep_level or (1 if policy.is_lora else 2)

    def start(self, policy: Policy) -> Any:
        """Create the colocated ``vllm.LLM`` (once)."""
        if self.llm is not None:
            return self.llm
        vllm = require_vllm()
        # the engine core in this process: the trainer pushes weights into the same model object
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        cfg, model = self.cfg, policy.model
        path = cfg.model_path or getattr(getattr(model, "config", None), "_name_or_path", "") or policy.name
        if not path:
            raise MissingValueError("engine=vllm: set engine.model_path to the model's directory or Hub id")
        dtype = cfg.dtype if cfg.dtype != "auto" else str(next(model.parameters()).dtype).removeprefix("torch.")
        kwargs: dict[str, Any] = dict(
            model=path, dtype=dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len or cfg.max_prompt_length + cfg.max_new_tokens, max_num_seqs=cfg.max_num_seqs,
            enable_sleep_mode=cfg.enable_sleep_mode, enable_prefix_caching=cfg.enable_prefix_caching,
            enforce_eager=cfg.enforce_eager, tensor_parallel_size=cfg.tensor_parallel_size, seed=cfg.seed,
            logprobs_mode="processed_logprobs",
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            kwargs["distributed_executor_backend"] = "external_launcher"  # one vLLM per training process
        self.llm = vllm.LLM(**kwargs)
        # vLLM loaded `path`, which may not be the policy's current weights: the first sync pushes all of them
        self._weights_resident, self._pushed_version = True, None
        self._awake = {"weights": True, "kv_cache": True}
        return self.llm

    def _vllm_model(self) -> Any:
        """The ``nn.Module`` vLLM runs (in-process engine), for ``load_weights``."""
        engine = self.llm.llm_engine
        for path in ("model_executor.driver_worker.worker.model_runner.model",
                     "model_executor.driver_worker.model_runner.model"):
            obj: Any = engine
            try:
                for attr in path.split("."):
                    obj = getattr(obj, attr)
                return obj
            except AttributeError:
                continue
        return None

    def _load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        model = self._vllm_model()
        if model is not None:
            model.load_weights(weights)
        else:  # a vLLM whose engine runs elsewhere: ship the call to its workers
            self.llm.apply_model(lambda m: m.load_weights(weights))

    def wake(self, what: str) -> None:
        """Give vLLM back its ``weights`` or its ``kv_cache`` after a sleep."""
        if not self.cfg.enable_sleep_mode or self._awake[what]:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the training step's cached blocks back to the driver first
        self.llm.wake_up(tags=[what])
        self._awake[what] = True

    def sleep(self, policy: Policy) -> None:
        """Release vLLM's KV cache (level 1 also offloads the weights to CPU memory, level 2 drops them)."""
        if not self.cfg.enable_sleep_mode:
            return
        level = self.sleep_level(policy)
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
        self._load_weights(list(weights_for_vllm(policy.model, changed_only=changed_only)))
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self._pushed_version, self._weights_resident = version, True
        return True

    # ----- generation -----------------------------------------------------------------------
    def encode_prompts(self, policy: Policy, prompts: Sequence[str]) -> list[list[int]]:
        tok = policy.tokenizer
        ids = tok(list(prompts), add_special_tokens=False)["input_ids"]
        return [list(x)[-self.cfg.max_prompt_length:] for x in ids]

    @torch.no_grad()
    def generate(self, policy: Policy, prompts: Sequence[str], num_generations: int, seeds: Sequence[int],
                 greedy: bool = False, max_new_tokens: Optional[int] = None) -> Rollouts:
        """Same contract as ``engine=hf``; ``seeds[b]`` seeds prompt b's group (vLLM's per-request seed)."""
        self.sync_weights(policy)  # starts vLLM on first use
        from vllm import SamplingParams

        self.wake("weights")
        self.wake("kv_cache")
        G, max_new = num_generations, max_new_tokens or self.cfg.max_new_tokens
        eos = eos_token_ids(policy)
        prompt_ids = self.encode_prompts(policy, prompts)
        params = [SamplingParams(**sampling_kwargs(self.cfg, G, max_new, s, greedy, eos)) for s in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=params,
                                    use_tqdm=False)
        self.sleep(policy)
        tok = policy.tokenizer
        ro = rollouts_from_outputs(prompt_ids, [o.outputs for o in outputs], prompts, tok.pad_token_id, eos,
                                   decode=lambda t: tok.batch_decode(t, skip_special_tokens=True))
        device = policy.device
        for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "sampling_logps"):
            setattr(ro, name, getattr(ro, name).to(device))
        return ro


@hookimpl
def rlvr_engines() -> list[PluginSpec]:
    return [PluginSpec("vllm", VLLMEngine, VLLMEngineConfig,
                       "colocated vLLM (GPU, rlvr[vllm]): weights synced each step, sleep mode, IS correction")]
