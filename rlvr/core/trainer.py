"""The GRPO loop.

One step is six phases, each a method taking the step's batch (:class:`rlvr.core.rollout.StepBatch`)::

    rollout → score → advantages → reference / old log-probs → optimise → metrics

rollout: B prompts → G completions each (engine); score: every reward, the weighted total;
advantages: the estimator plugin; reference: log-probs under the reference policy (beta > 0) and
the sampling policy (μ > 1); optimise: μ passes of log-probs (chunked kernel) → loss → backward →
optimizer; metrics. Distributed concerns (gathers, global sums) are marked ``DISTRIBUTED``.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from rlvr.core import checkpoint as ckpt_io
from rlvr.core import distributed, episodes, registry, resources, sampling
from rlvr.core.advantages import token_advantages, token_turns, zero_std_fraction
from rlvr.core.callbacks import logger_manager
from rlvr.core.config import TrainerConfig, plugin_name, plugin_params, trainer_config
from rlvr.core.contracts import AdvantageEstimator, Engine, Loss, TurnAdvantageEstimator
from rlvr.core.errors import ConfigError, RunError
from rlvr.core.importance import importance_metrics, importance_weights, scale_gradient
from rlvr.core.monitor import Monitor, json_row
from rlvr.core.optim import fused_adamw_supported
from rlvr.core.policy import Policy, save_policy
from rlvr.core.rewards import RewardFn, score_all, weighted_total, whole_batch_turn_scores
from rlvr.core.rollout import Rollouts, StepBatch, Update
from rlvr.core.task import RowSampler, Task
from rlvr.modeling.memory import enable_gradient_checkpointing, offload_activations
from rlvr.modeling.shared_prompt import grouped_completion_logprobs


class TrainingError(RunError):
    """The run cannot go on (e.g. too many non-finite losses in a row)."""


class ResumeConfigError(ConfigError):
    """Resuming with a config that differs from the checkpoint's in a key that cannot change mid-run."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run stopped after a finished step and saved a checkpoint."""

    def __init__(self, checkpoint: Path, step: int) -> None:
        super().__init__(
            f"interrupted after step {step}; checkpoint saved at {checkpoint}. "
            "Run the same command again to resume from it."
        )
        self.checkpoint, self.step = checkpoint, step


@contextlib.contextmanager
def interrupt_after_step() -> Iterator[Any]:
    """While active, the first SIGINT only sets ``.requested`` (the loop stops after the step in progress);
    a second one raises KeyboardInterrupt at once. Outside the main thread it does nothing."""
    state = types.SimpleNamespace(requested=False)
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handle(signum: int, frame: Any) -> None:
        if state.requested:
            raise KeyboardInterrupt
        state.requested = True
        print(
            "\nrlvr: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


class ProgressBar:
    """tqdm bar with the step's reward, length and seconds per step (no tqdm rate: one speed figure)."""

    FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"

    def __init__(self, tc: TrainerConfig, start: int, reward_names: list[str], enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.tc, self.reward_names = tc, reward_names
        self.bar = tqdm(
            total=tc.max_steps,
            initial=start,
            disable=not enabled,
            desc="rlvr train",
            unit="step",
            dynamic_ncols=True,
            bar_format=self.FORMAT,
        )

    def update(self, step: int, metrics: dict[str, Optional[float]], verbose: bool) -> None:
        post = {
            "reward": _fmt(metrics["reward/mean"], ".2f"),
            "len": _fmt(metrics["completion_length/mean"], ".0f"),
            "s/step": _fmt(metrics["step_time"], ".3g"),
        }  # 0.024, 5.12, 123
        if len(self.reward_names) > 1:
            post.update({n: _fmt(metrics[f"rewards/{n}/mean"], ".2f") for n in self.reward_names})
        self.bar.set_postfix(post)
        self.bar.update(1)
        if verbose and self.tc.log_steps and step % self.tc.log_steps == 0:
            self.bar.write(
                f"step {step}/{self.tc.max_steps}  reward {_fmt(metrics['reward/mean'], '.3f')} ± "
                f"{_fmt(metrics['reward/std'], '.3f')}  len {_fmt(metrics['completion_length/mean'], '.1f')}"
                f"  zero-std groups {_fmt(metrics['frac_reward_zero_std'], '.2f')}  "
                f"{_fmt(metrics['step_time'], '.1f')} s/step"
            )

    def close(self) -> None:
        self.bar.close()


def _fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def resolve_update_dtype(choice: str, policy: Policy) -> str:
    """``trainer.update_dtype``: ``auto`` is bfloat16 where :func:`rlvr.core.resources.bfloat16_pays`, else float32."""
    if choice != "auto":
        return choice
    return "bfloat16" if resources.bfloat16_pays(next(policy.model.parameters())) else "float32"


def validate_trainer(tc: TrainerConfig) -> None:
    """Fail before any model loads on values that cannot work."""
    checks = [
        (
            tc.num_generations >= 2,
            f"trainer.num_generations must be >= 2 for group-relative advantages, got {tc.num_generations}",
        ),
        (tc.prompts_per_step >= 1, f"trainer.prompts_per_step must be >= 1, got {tc.prompts_per_step}"),
        (tc.max_steps >= 1, f"trainer.max_steps must be >= 1, got {tc.max_steps}"),
        (tc.num_iterations >= 1, f"trainer.num_iterations must be >= 1, got {tc.num_iterations}"),
        (tc.lr > 0, f"trainer.lr must be > 0, got {tc.lr}"),
        (tc.micro_batch_size >= 0, f"trainer.micro_batch_size must be >= 0, got {tc.micro_batch_size}"),
        (
            tc.advantage_scaling in (None, "group", "batch", "none"),
            f"trainer.advantage_scaling={tc.advantage_scaling!r}: choose group, batch or none",
        ),
        (
            tc.advantage_baseline in (None, "mean", "rloo"),
            f"trainer.advantage_baseline={tc.advantage_baseline!r}: choose mean or rloo",
        ),
        (
            tc.lr_schedule in ("constant", "linear", "cosine"),
            f"trainer.lr_schedule={tc.lr_schedule!r}: choose constant, linear or cosine",
        ),
        (tc.max_grad_norm >= 0, f"trainer.max_grad_norm must be >= 0 (0 = no clipping), got {tc.max_grad_norm}"),
        (tc.warmup_steps >= 0, f"trainer.warmup_steps must be >= 0, got {tc.warmup_steps}"),
        (tc.distributed in distributed.STRATEGIES, f"trainer.distributed={tc.distributed!r}: choose ddp or fsdp"),
        (
            tc.dist_backend in distributed.BACKENDS,
            f"trainer.dist_backend={tc.dist_backend!r}: choose auto, gloo or nccl",
        ),
        (tc.eval_num_samples >= 0, f"trainer.eval_num_samples must be >= 0, got {tc.eval_num_samples}"),
        (
            tc.update_dtype in ("auto", "float32", "bfloat16"),
            f"trainer.update_dtype={tc.update_dtype!r}: choose auto, float32 or bfloat16 (autocast)",
        ),
    ]
    sampling.validate(tc.dynamic_sampling, tc.dynamic_max_rounds)
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    n = tc.prompts_per_step * tc.num_generations
    if tc.micro_batch_size and n % tc.micro_batch_size:
        raise ConfigError(
            f"trainer.micro_batch_size={tc.micro_batch_size} does not divide the batch of "
            f"prompts_per_step×num_generations = {n} completions"
        )


def lr_lambda(tc: TrainerConfig, total_updates: int) -> Callable[[int], float]:
    def factor(update: int) -> float:
        if update < tc.warmup_steps:
            return (update + 1) / (tc.warmup_steps + 1)
        if tc.lr_schedule == "constant":
            return 1.0
        progress = (update - tc.warmup_steps) / max(1, total_updates - tc.warmup_steps)
        if tc.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _select(cfg: Any, kind: str) -> tuple[str, dict[str, Any]]:
    node = cfg[kind]
    name = node.get("name") if hasattr(node, "get") else None
    if not name:
        raise ConfigError(f"config node {kind!r} has no 'name'; pick a plugin with {kind}=<name>")
    return str(name), plugin_params(node)


def _to_dict(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)  # type: ignore[return-value]


class Trainer:
    """Builds every component from a composed config and runs the GRPO loop.

    ``rewards``: plain Python reward functions ``fn(completions, **columns) -> list[float | None]``
    to use instead of the config's ``reward`` list (for notebooks; no packaging needed).
    """

    def __init__(
        self,
        cfg: Any,
        rewards: Optional[Sequence[Callable[..., Any]]] = None,
        run_dir: Optional[str | Path] = None,
        policy: Optional[Policy] = None,
    ) -> None:
        self.cfg = cfg
        self.tc = trainer_config(cfg["trainer"])
        validate_trainer(self.tc)
        if self.tc.threads > 0:
            torch.set_num_threads(self.tc.threads)
        if self.tc.reuse_freed_memory:  # no page faults on memory the last step freed (rlvr/core/resources.py)
            resources.reuse_freed_memory()
        self.dist = distributed.setup(self.tc.dist_backend)  # torchrun: join the process group; else one process
        self._validate_parallel()
        # cheap components first: a bad name or value fails before the model loads
        task_name, task_params = _select(cfg, "task")
        self.task: Task = registry.create("task", task_name, **task_params)
        self.rewards = self._build_rewards(cfg, rewards)
        self.monitor = Monitor.from_config(self.tc, self.task.config.answer_column)  # reward-hacking signals (audit/)
        loss_name, loss_params = _select(cfg, "loss")
        self.loss: Loss = registry.create("loss", loss_name, **loss_params)
        self.advantage: AdvantageEstimator = self._build_advantage(cfg)
        engine_name, engine_params = _select(cfg, "engine")
        self.engine: Engine = registry.create("engine", engine_name, **engine_params)
        self.env = episodes.build_env(cfg, self.engine)  # env=<name>: multi-turn episodes; None: single-turn
        loggers = [
            (n, registry.create("logger", plugin_name(n, p), **plugin_params(p)))
            for n, p in (cfg.get("logger") or {}).items()
        ]
        self.callbacks = logger_manager(loggers if self.dist.is_main else []).hook  # rank 0 writes the logs
        self.run_dir = Path(self.dist.broadcast(str(run_dir or self._default_run_dir())))  # rank 0's, on every rank
        model_name, model_params = _select(cfg, "model")
        longest = int(self.engine.cfg.max_prompt_length) + int(self.engine.cfg.max_new_tokens)
        if policy is None and model_params.get("max_seq_length") and longest > int(model_params["max_seq_length"]):
            raise ConfigError(
                f"engine.max_prompt_length + engine.max_new_tokens = {longest} exceeds "
                f"model.max_seq_length={model_params['max_seq_length']}: raise model.max_seq_length "
                "(memory grows with it) or shorten the prompts / completions"
            )
        torch.manual_seed(self.tc.seed)  # LoRA adapters are initialised from the global RNG: same seed, same init
        self.policy = policy or registry.create("model", model_name, **model_params)
        if self.dist.device is not None and self.dist.device.type == "cuda" and self.policy.device.type == "cpu":
            self.policy.model.to(
                self.dist.device
            )  # the GPU (cuda:LOCAL_RANK under torchrun); device_map'd models stay
        self.temperature = float(self.engine.cfg.temperature)
        self.update_dtype = resolve_update_dtype(self.tc.update_dtype, self.policy)
        self.step = 0
        self.sampler = sampling.make_sampler(
            len(self.task.train_rows),
            self.tc.seed,
            self.tc.curriculum,
            self.tc.curriculum_decay,
            self.tc.curriculum_min_weight,
            default=RowSampler(len(self.task.train_rows), self.tc.seed),
        )
        self.sampling_state = sampling.SamplingState()  # dynamic sampling's counters (checkpointed)
        if self.tc.prompts_per_step > len(self.task.train_rows) and self.dist.is_main:
            warnings.warn(
                f"trainer.prompts_per_step={self.tc.prompts_per_step} is larger than the task's "
                f"{len(self.task.train_rows)} training rows: a step holds the same prompt more than once "
                "(sampled without replacement within an epoch, epochs follow each other)",
                stacklevel=2,
            )
        self.bad_steps_in_row = 0
        self.skipped_steps = 0
        self.resume_changes: dict[str, tuple[Any, Any]] = {}  # settings a resume changed (key: (old, new))
        if self.dist.enabled and self.tc.distributed == "fsdp" and not self.policy.is_lora and self.loss.beta > 0:
            raise ConfigError(
                "trainer.distributed=fsdp with full fine-tuning and loss.beta > 0 is not supported (the KL "
                "reference would be a second, unsharded copy of the model): use LoRA (the reference is "
                "the base with the adapters off) or trainer.distributed=ddp"
            )
        # DDP / FSDP2 wrapper for the training forward-backward (None in one process); Policy.model stays unwrapped
        self.parallel = distributed.wrap(self.policy.model, self.dist, self.tc.distributed)
        self._setup_optimizer()

    # ----- construction -------------------------------------------------------------------
    def _validate_parallel(self) -> None:
        tc, world = self.tc, self.dist.world_size
        if world == 1:
            return
        if tc.prompts_per_step < world:
            raise ConfigError(
                f"trainer.prompts_per_step={tc.prompts_per_step} < {world} processes: each process "
                "generates whole groups, so give every process at least one prompt"
            )
        if tc.distributed == "fsdp" and tc.prompts_per_step % world:
            raise ConfigError(
                f"trainer.distributed=fsdp needs trainer.prompts_per_step ({tc.prompts_per_step}) to be a "
                f"multiple of the {world} processes (every rank must run the same number of passes)"
            )
        if tc.distributed == "fsdp" and tc.dynamic_sampling != "off":
            raise ConfigError(
                "trainer.dynamic_sampling with trainer.distributed=fsdp is not supported (a step's "
                "informative groups need not split evenly over the ranks): use trainer.distributed=ddp"
            )
        if tc.distributed == "fsdp" and tc.save_merged:
            raise ConfigError(
                "trainer.save_merged=true is not supported with trainer.distributed=fsdp: merge the saved "
                "adapter afterwards (rlvr.core.policy.save_policy(policy, path, merged=True))"
            )

    def _build_rewards(self, cfg: Any, fns: Optional[Sequence[Callable[..., Any]]]) -> list[RewardFn]:
        if fns is not None:
            return [RewardFn(getattr(f, "__name__", f"reward_{i}"), f) for i, f in enumerate(fns)]
        out = []
        for name, node in (cfg.get("reward") or {}).items():
            params = plugin_params(node)
            fn = registry.create("reward", plugin_name(name, node), **params)
            out.append(RewardFn(name, fn, float(params.get("weight", 1.0)), str(params.get("on_error", "raise"))))
        if not out:
            raise ConfigError("no reward configured: pick at least one, e.g. reward=[arithmetic] (see `rlvr plugins`)")
        return out

    def _build_advantage(self, cfg: Any) -> AdvantageEstimator:
        """``advantage=<name>`` (default grpo); ``trainer.advantage_scaling`` / ``advantage_baseline`` are shortcuts
        for ``advantage.scaling`` / ``advantage.baseline``."""
        name, params = _select(cfg, "advantage") if cfg.get("advantage") is not None else ("grpo", {})
        for field_name in ("scaling", "baseline"):
            value = getattr(self.tc, f"advantage_{field_name}")
            if value is not None:
                params[field_name] = value
        return registry.create("advantage", name, **params)

    def _default_run_dir(self) -> Path:
        if self.tc.output_dir:
            return Path(self.tc.output_dir)
        try:
            from hydra.core.hydra_config import HydraConfig

            return Path(HydraConfig.get().runtime.output_dir)
        except (ImportError, ValueError):
            return Path("rlvr-runs") / time.strftime("%Y-%m-%d_%H-%M-%S")

    def _setup_optimizer(self) -> None:
        tc = self.tc
        torch.manual_seed(tc.seed)
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            params,
            lr=tc.lr,
            betas=(tc.adam_beta1, tc.adam_beta2),
            weight_decay=tc.weight_decay,
            fused=fused_adamw_supported(params),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(tc, tc.max_steps * tc.num_iterations)
        )
        if tc.gradient_checkpointing:
            enable_gradient_checkpointing(self.policy.model)

    # ----- one step: rollout → score → advantages → reference / old log-probs → optimise → metrics ------
    def group_seeds(self, step: int, num_groups: int, first: int = 0) -> list[int]:
        """Sampling seed of each group: a function of (seed, step, group index within the step) only."""
        return [(self.tc.seed * 1_000_003 + step * 10_007 + g) % (2**63) for g in range(first, first + num_groups)]

    def train_step(self) -> dict[str, Optional[float]]:
        """One GRPO step; each phase takes the step's batch and fills in its part."""
        batch = self.rollout(self.step + 1)
        self.score(batch)
        batch = self.select_groups(batch)  # dynamic sampling (refill / skip); the batch as it is when off
        if batch.has_scores and batch.trainable:
            self.compute_advantages(batch)
            self.reference_logprobs(batch)
            update = self.optimise(batch)
        elif batch.has_scores:  # dynamic sampling: no group with a learning signal, no forward/backward
            batch.advantages, update = torch.zeros(batch.rollouts.num), Update(skipped=True)
        else:  # every reward returned None for every completion: nothing to learn from
            update = self.skip_unscored(batch)
        self.step = batch.step
        return self.step_metrics(batch, update)

    def rollout(self, step: int, num_prompts: int = 0, first_group: int = 0) -> StepBatch:
        """Phase 1: B prompts (or ``num_prompts``: a dynamic-sampling refill whose groups are numbered from
        ``first_group`` within the step) → G completions each (this rank's groups)."""
        t0 = time.perf_counter()
        self.policy.model.eval()
        idx = self.sampler.take(num_prompts or self.tc.prompts_per_step)  # the same prompts on every rank
        mine = self.dist.groups(len(idx))  # DISTRIBUTED: this rank's groups (all of them in one process)
        rows = [self.task.train_rows[i] for i in idx[mine]]
        seeds = self.group_seeds(step, len(idx), first_group)[mine]  # seeded by the group index within the step
        with distributed.unsharded(self.parallel):
            if self.env is not None:  # multi-turn episodes (rlvr/core/episodes.py)
                ep_stats = episodes.EpisodeStats()
                run_episodes = self.engine.generate_episodes  # type: ignore[attr-defined]
                rollouts = run_episodes(self.policy, self.env, rows, self.tc.num_generations, seeds, stats=ep_stats)
            else:
                prompts = [self.task.render(r, self.policy.tokenizer) for r in rows]
                rollouts = self.engine.generate(self.policy, prompts, self.tc.num_generations, seeds)
        self.engine.release(self.policy)  # e.g. vLLM's sleep mode: its GPU memory goes to the update
        rollouts.rows = [r for r in rows for _ in range(self.tc.num_generations)]
        # the rollout's time (this rank's): the engine generating vs the environment, tools included
        timing = (
            {"env/generation_seconds": ep_stats.generation, "env/env_seconds": ep_stats.env}
            if self.env is not None
            else {}
        )
        return StepBatch(
            step=step,
            rollouts=rollouts,
            groups=mine,
            started=t0,
            generation_time=time.perf_counter() - t0,
            prompt_index=list(idx),
            metrics=timing,
        )

    def score(self, batch: StepBatch) -> None:
        """Phase 2: every reward on this rank's completions, then the whole batch's table on every rank."""
        ro = batch.rollouts
        turns = [int(e["turns"]) for e in ro.episodes] if ro.episodes else None
        scores = score_all(self.rewards, ro.completions, ro.prompts, ro.columns(), turns)
        table = batch.local_rewards = scores.table
        # DISTRIBUTED: gather the whole batch (one process: its own) for batch-wide advantages and metrics
        parts = self.dist.gather(
            {
                "rewards": table,
                "lengths": ro.completion_mask.sum(1).float(),
                "truncated": ro.truncated,
                "generation_time": batch.generation_time,
                "turns": turns,
                "episodes": [episodes.counts(e) for e in ro.episodes],  # what the env/ metrics need
                "turn_scores": scores.turn_scores,
            }
        )
        batch.episodes = [e for p in parts for e in p["episodes"]]
        if any(p["turn_scores"] is not None for p in parts):  # per-turn rewards (multi-turn episodes)
            batch.turn_scores = whole_batch_turn_scores(parts, [r.weight for r in self.rewards])
        batch.rewards = torch.cat([p["rewards"] for p in parts])
        batch.lengths = torch.cat([p["lengths"] for p in parts])
        batch.all_truncated = torch.cat([p["truncated"] for p in parts])
        batch.generation_time = max(p["generation_time"] for p in parts)
        batch.total = weighted_total(batch.rewards, [r.weight for r in self.rewards])
        batch.scored = (~torch.isnan(batch.rewards)).any(dim=1)

    def select_groups(self, batch: StepBatch) -> StepBatch:
        """Phase 2b: dynamic sampling keeps the informative groups and refills the step with fresh prompts
        (rlvr/core/sampling.py); the curriculum hears each group's outcome. The batch as it is when off."""

        def more(k: int, first_group: int) -> StepBatch:
            part = self.rollout(batch.step, k, first_group)
            self.score(part)
            return part

        pad_id = self.policy.tokenizer.pad_token_id
        tc = self.tc
        selected = sampling.select_groups(
            batch,
            more,
            mode=tc.dynamic_sampling,
            max_rounds=tc.dynamic_max_rounds,
            batch_size=tc.prompts_per_step,
            group_size=tc.num_generations,
            dist=self.dist,
            pad_id=0 if pad_id is None else int(pad_id),
            state=self.sampling_state,
            sampler=self.sampler,
        )
        if selected.episodes:  # env/ metrics of the whole batch's episodes (those trained on)
            selected.metrics.update(episodes.episode_metrics(selected.episodes, prefix="env/"))
        return selected

    def compute_advantages(self, batch: StepBatch) -> None:
        """Phase 3: the advantage estimator on the whole batch; this rank keeps its groups' share. Per-turn
        rewards (episodes): each turn's tokens get the advantage of the rewards from that turn on."""
        G = self.tc.num_generations
        mine = slice(batch.groups.start * G, batch.groups.stop * G)
        batch.advantages = self.advantage(batch.total, G)[mine]
        if batch.turn_scores.numel():
            if not isinstance(self.advantage, TurnAdvantageEstimator):
                raise ConfigError(
                    f"a reward returned per-turn scores, but advantage={self.advantage!r} has no turn_advantages: "
                    "use advantage=grpo, dr_grpo, rloo or reinforce_pp, or return one score per episode"
                )
            per_turn = self.advantage.turn_advantages(batch.turn_scores, G)[mine]
            batch.token_advantages = token_advantages(per_turn, token_turns(batch.rollouts.completion_mask))

    def reference_logprobs(self, batch: StepBatch) -> None:
        """Phase 4: reference log-probs (beta > 0), old log-probs (μ > 1), the step's loss normalisers."""
        ro, tc = batch.rollouts, self.tc
        batch.mask = ro.completion_mask.float().to(self.policy.device)
        batch.truncated = ro.truncated.to(self.policy.device)
        batch.slices = self.micro_slices(ro.num)
        with torch.no_grad():
            if self.loss.beta > 0:
                with self.policy.reference() as ref_model:
                    batch.ref_logps = torch.cat([self.logprobs(ref_model, ro, sl) for sl in batch.slices])
            if tc.num_iterations > 1:  # μ = 1: old log-probs are the detached current ones (no extra pass)
                batch.old_logps = torch.cat([self.logprobs(self.policy.model, ro, sl) for sl in batch.slices])
        tokens = sum(int(self.loss.active_tokens(batch.mask[sl], batch.truncated[sl])) for sl in batch.slices)
        batch.num_tokens = int(self.dist.sum(tokens))  # DISTRIBUTED: loss normalisers are whole-batch totals
        batch.num_sequences = batch.total.numel()

    def optimise(self, batch: StepBatch) -> Update:
        """Phase 5: μ passes over the batch in micro-batches; an update with a non-finite loss or gradient
        (on any rank) is skipped."""
        tc, update = self.tc, Update()
        self.policy.model.train()
        for _ in range(tc.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            for sl in batch.slices:
                # DDP decides at forward time whether a backward reduces: forward and backward both go inside. Each
                # rank reduces once per pass, so ranks may hold different numbers of micro-batches (uneven splits)
                with distributed.grad_sync(self.parallel, sync=sl is batch.slices[-1]):
                    value, metrics = self.micro_batch_loss(batch, sl)
                    (value * self.dist.world_size).backward()  # DDP / FSDP2 average gradients over the ranks
                update.loss_sum += float(value.detach())
                share = (min(sl.stop, batch.rollouts.num) - sl.start) / batch.num_sequences
                for k, v in metrics.items():
                    update.sums[k] = update.sums.get(k, 0.0) + float(v) * share / tc.num_iterations
            params = [p for p in self.policy.model.parameters() if p.requires_grad]
            norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm if tc.max_grad_norm > 0 else float("inf"))
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
            bad = not torch.isfinite(norm) or not math.isfinite(update.loss_sum)
            if self.dist.sum(float(bad)) > 0:  # DISTRIBUTED: skip on every rank if any rank saw a bad value
                update.skipped = True
                self.optimizer.zero_grad(set_to_none=True)
                break
            update.grad_norm = float(norm)
            self.optimizer.step()
            self.scheduler.step()
        self._count_bad_step(
            batch.step,
            update.skipped,
            "non-finite loss or gradient",
            "had a non-finite loss or gradient; lower trainer.lr, check the rewards, or raise trainer.max_bad_steps",
        )
        return update

    def micro_batch_loss(self, batch: StepBatch, sl: slice) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss plugin on one micro-batch (with the engine/trainer importance-sampling correction)."""
        out = self.logprobs(self.policy.model, batch.rollouts, sl, with_entropy=self.loss.needs_entropy)
        logps, entropies = out if self.loss.needs_entropy else (out, None)
        old = batch.old_logps[sl] if batch.old_logps is not None else None
        metrics: dict[str, float] = {}
        is_cfg = self.engine.importance_sampling
        sampling = batch.rollouts.sampling_logps
        if is_cfg is not None and is_cfg.enabled and sampling is not None:  # × a capped ratio trainer/engine
            w = importance_weights(
                old if old is not None else logps.detach(), sampling[sl].to(logps.device), batch.mask[sl], is_cfg
            )
            logps, metrics = scale_gradient(logps, w), importance_metrics(w, batch.mask[sl])
        value, loss_metrics = self.loss(
            logps,
            old,
            batch.ref_logps[sl] if batch.ref_logps is not None else None,
            (batch.token_advantages if batch.token_advantages.numel() else batch.advantages)[sl].to(
                self.policy.device
            ),
            batch.mask[sl],
            batch.truncated[sl],
            num_sequences=batch.num_sequences,
            num_tokens=batch.num_tokens,
            entropies=entropies,
        )
        return value, {**loss_metrics, **metrics}

    def skip_unscored(self, batch: StepBatch) -> Update:
        """No update for a step in which no completion was scored (every reward returned None)."""
        batch.advantages = torch.zeros(batch.rollouts.num)
        names = ", ".join(r.name for r in self.rewards)
        self._count_bad_step(
            batch.step,
            True,
            f"no completion was scored (every reward returned None: {names})",
            f"had no scored completion: every reward ({names}) returned None for every completion; "
            f"check that {names} can score this task's completions (`rlvr show RUN_DIR` shows what "
            "the model writes), or raise trainer.max_bad_steps",
        )
        return Update(skipped=True)

    def _count_bad_step(self, step: int, bad: bool, what: str, in_a_row: str) -> None:
        """Count a skipped update; stop the run after ``trainer.max_bad_steps`` in a row."""
        if not bad:
            self.bad_steps_in_row = 0
            return
        self.bad_steps_in_row += 1
        self.skipped_steps += 1
        warnings.warn(
            f"step {step}: {what}; the update was skipped ({self.bad_steps_in_row} in a row, "
            f"{self.skipped_steps} in total)",
            stacklevel=2,
        )
        if self.bad_steps_in_row >= self.tc.max_bad_steps:
            raise TrainingError(f"{self.bad_steps_in_row} steps in a row {in_a_row}")

    def step_metrics(self, batch: StepBatch, update: Update) -> dict[str, Optional[float]]:
        """Phase 6: the step's metrics (whole batch, every rank) and the completions kept for the logs."""
        tc, total = self.tc, batch.total
        loss_sum = self.dist.sum(update.loss_sum)  # DISTRIBUTED: sums over the ranks
        sums = {k: self.dist.sum(v) for k, v in sorted(update.sums.items())}
        scored = batch.has_scores
        metrics: dict[str, Optional[float]] = {
            "reward/mean": float(total.mean()) if scored else None,
            "reward/std": (float(total.std()) if total.numel() > 1 else 0.0) if scored else None,
            "frac_reward_zero_std": zero_std_fraction(total, tc.num_generations),
            "frac_scored": float(batch.scored.float().mean()),
            "loss": loss_sum / tc.num_iterations,
            "grad_norm": update.grad_norm,
            "lr": float(self.scheduler.get_last_lr()[0]),
            "completion_length/mean": float(batch.lengths.mean()),
            "completion_length/max": float(batch.lengths.max()),
            "completion_length/clipped_ratio": float(batch.all_truncated.float().mean()),
            "step_time": time.perf_counter() - batch.started,
            "generation_time": batch.generation_time,
            "tokens_per_s": float(batch.lengths.sum()) / max(batch.generation_time, 1e-9),
            "skipped_steps": float(self.skipped_steps),
        }
        for j, r in enumerate(self.rewards):
            col = batch.rewards[:, j]
            ok = col[~torch.isnan(col)]
            metrics[f"rewards/{r.name}/mean"] = float(ok.mean()) if ok.numel() else None  # None: nothing scored
            metrics[f"rewards/{r.name}/std"] = float(ok.std()) if ok.numel() > 1 else (0.0 if ok.numel() else None)
        metrics.update(sums)
        metrics.update(batch.metrics)
        ro = batch.rollouts  # the reward-hacking monitor (audit/...): every rank's share gathered, rank 0 warns
        # episodes: the checks read the final answer, not the trajectory (a tool's output is not the model's answer)
        said = [episodes.final_answer(e) or "" for e in ro.episodes] if ro.episodes else ro.completions
        metrics.update(
            self.monitor(
                batch.step,
                said,
                batch.local_rewards,
                self.rewards,
                ro.rows,
                ro.prompts,
                gather=self.dist.gather,
                warn=self.dist.is_main,
            )
        )
        metrics.update(resources.peak_memory())  # memory/peak_rss_mib (+ GPU): rlvr report's peak memory
        metrics = {k: v if v is None or math.isfinite(v) else None for k, v in metrics.items()}  # JSON: null
        samples = self.dist.gather(self._samples(batch.rollouts, batch.local_rewards, batch.advantages))
        self._last_samples = [s for part in samples for s in part][: tc.log_completions]
        return metrics

    def logprobs(self, model: Any, ro: Rollouts, sl: slice, with_entropy: bool = False) -> Any:
        ids = torch.cat([ro.prompt_ids[sl], ro.completion_ids[sl]], dim=1).to(self.policy.device)
        comp_attn = ro.completion_mask if ro.attention_mask is None else ro.attention_mask  # env tokens: attended
        attn = torch.cat([ro.prompt_mask[sl], comp_attn[sl]], dim=1).to(self.policy.device)
        ctx = offload_activations(self.policy.model, enabled=self.tc.offload_activations and torch.is_grad_enabled())
        kw: dict[str, Any] = {
            "temperature": self.temperature,
            "chunk_tokens": self.tc.logprob_chunk_tokens,
            "return_entropy": with_entropy,
            "pack": self.tc.pack_completions,
        }
        # trainer.update_dtype=bfloat16: matmuls in bfloat16 under autocast, weights and gradients stay float32
        cast = torch.autocast(self.policy.device.type, dtype=torch.bfloat16, enabled=self.update_dtype == "bfloat16")
        with ctx, cast:
            if self.parallel is not None and model is self.policy.model:  # DDP / FSDP2 act through the wrapper
                return self.parallel(ids, attn, ro.prompt_ids.shape[1], group_size=self.tc.num_generations, **kw)
            # each group's prompt once when the rows allow it (rlvr/modeling/shared_prompt.py)
            return grouped_completion_logprobs(model, ids, attn, ro.prompt_ids.shape[1], self.tc.num_generations, **kw)

    def micro_slices(self, n: int) -> list[slice]:
        mb = self.tc.micro_batch_size or n
        return [slice(i, i + mb) for i in range(0, n, mb)]

    def _samples(self, ro: Rollouts, table: torch.Tensor, adv: torch.Tensor) -> list[dict[str, Any]]:
        k = min(self.tc.log_completions, ro.num)
        out = []
        for i in range(k):
            out.append(
                {
                    "prompt": ro.prompts[i],
                    "completion": ro.completions[i],
                    "answer": str(ro.rows[i].get(self.task.config.answer_column, "")),
                    "row": json_row(ro.rows[i]),  # the task columns, so that `rlvr audit` can re-score
                    "rewards": {
                        r.name: (None if math.isnan(float(table[i, j])) else float(table[i, j]))
                        for j, r in enumerate(self.rewards)
                    },
                    "advantage": float(adv[i]),
                    "truncated": bool(ro.truncated[i]),
                }
            )
            if ro.episodes:  # multi-turn: the whole trajectory (messages, tool calls and results, stop reason)
                out[-1]["episode"] = ro.episodes[i]
        return out

    # ----- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "sampling": self.sampling_state.state_dict(),
            "bad_steps_in_row": self.bad_steps_in_row,
            "skipped_steps": self.skipped_steps,
            "config": _to_dict(self.cfg),
        }

    def save(self) -> Path:
        """Checkpoint: rank 0 writes it (DDP: every rank holds the same weights); with FSDP2 every rank writes
        its shard of weights and optimizer state (torch.distributed.checkpoint)."""
        keep = max(1, self.tc.keep_checkpoints)
        if self.parallel is not None and distributed.is_fsdp(self.parallel):
            state = {k: v for k, v in self.state_dict().items() if k != "optimizer"}
            return distributed.save_sharded_checkpoint(
                self.dist, self.run_dir, self.step, self.parallel, self.optimizer, state, keep
            )
        path = Path(self.run_dir) / "checkpoints" / f"{ckpt_io.PREFIX}{self.step}"
        if self.dist.is_main:
            path = ckpt_io.save_checkpoint(self.run_dir, self.step, self.policy, self.state_dict(), keep=keep)
        self.dist.barrier()
        return path

    def save_final(self, path: Path) -> None:
        """The trained model, loadable by transformers / peft (LoRA: the adapter; ``trainer.save_merged``: also
        ``merged/``). With FSDP2 the shards are gathered to rank 0 first."""
        parallel = self.parallel
        state = (
            distributed.full_state_dict(parallel) if parallel is not None and distributed.is_fsdp(parallel) else None
        )
        if self.dist.is_main:
            save_policy(self.policy, str(path), state_dict=state)
            if self.tc.save_merged and self.policy.is_lora:
                save_policy(self.policy, str(path / "merged"), merged=True)
        self.dist.barrier()

    def resume_from(self, path: Path) -> None:
        """Load a checkpoint's weights, optimizer, scheduler, sampler, counters and RNG states."""
        state = torch.load(path / ckpt_io.STATE_FILE, weights_only=False)
        self._check_resume_config(path, state.get("config"), int(state["step"]))
        if self.loss.beta > 0 and not self.policy.is_lora:
            self.policy.freeze_reference()  # full fine-tune: the KL reference is the base weights, not the resumed
        if (path / distributed.SHARDED_DIR).is_dir():  # FSDP2's checkpoint: each rank reads what it holds
            module = self.parallel if self.parallel is not None else distributed.LogprobModule(self.policy.model)
            distributed.load_sharded(path / distributed.SHARDED_DIR, module, self.optimizer)
        else:
            ckpt_io.load_trainable_weights(self.policy, path)
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.sampling_state.load_state_dict(state.get("sampling", {}))
        self.bad_steps_in_row, self.skipped_steps = state["bad_steps_in_row"], state["skipped_steps"]
        ckpt_io.set_rng_state(state["rng"])
        self.step = int(state["step"])

    def _check_resume_config(self, path: Path, saved: Optional[dict[str, Any]], step: int) -> None:
        """Resuming with a changed config: keys that may change are applied and listed; any other change stops."""
        if saved is None:  # a checkpoint written before checkpoints held their config
            return
        changes = ckpt_io.config_changes(saved, _to_dict(self.cfg))
        refused = {k: v for k, v in changes.items() if not ckpt_io.may_change_on_resume(k)}
        if refused:
            listed = "; ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in refused.items())
            raise ResumeConfigError(
                f"cannot resume from {path}: the config differs from the checkpoint's in keys that a resumed run "
                f"cannot change ({listed}). Run the same command as before to resume, or start a new run: "
                "trainer.resume=none (overwrites this run directory's checkpoints) or a new hydra.run.dir"
            )
        self.resume_changes = changes
        if changes and self.dist.is_main:
            listed = "; ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in changes.items())
            print(f"rlvr: resuming at step {step} with changed settings: {listed}")

    def _maybe_resume(self) -> None:
        resume = str(self.tc.resume or "")
        if not resume or resume in ("none", "false", "False"):
            return
        if resume == "auto":
            path = ckpt_io.latest_checkpoint(self.run_dir)
            if path is None:
                return
        else:
            path = ckpt_io.resolve_resume(resume)  # a checkpoint, or a run directory's latest one
        self.resume_from(path)
        if self.dist.is_main:
            print(f"rlvr: resumed from {path} at step {self.step}")

    def _write_config(self, config: dict[str, Any]) -> None:
        """config.json: the run's original config (never overwritten); each resume that changed settings adds
        resume-<step>.json with the changes (key: [old, new])."""
        if not self.dist.is_main:
            return
        first = self.run_dir / "config.json"
        if not first.exists() or self.step == 0:
            first.write_text(json.dumps(config, indent=2, default=str))
        elif self.resume_changes:
            record = {"step": self.step, "changes": {k: list(v) for k, v in self.resume_changes.items()}}
            (self.run_dir / f"resume-{self.step}.json").write_text(json.dumps(record, indent=2, default=str))

    # ----- the loop -----------------------------------------------------------------------
    def train(self) -> dict[str, Optional[float]]:
        """Run to ``trainer.max_steps``; returns the last step's metrics. Writes into ``run_dir``.

        Ctrl-C (SIGINT) once: the step in progress finishes, a checkpoint is saved and
        :class:`TrainingInterrupted` is raised (running the same command again resumes); twice: stop at once.
        """
        tc = self.tc
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._maybe_resume()
        config_dict = _to_dict(self.cfg)
        self._write_config(config_dict)
        metrics: dict[str, Optional[float]] = {}
        try:
            self.callbacks.on_train_start(run_dir=self.run_dir, config=config_dict, start_step=self.step)
            bar = ProgressBar(tc, self.step, [r.name for r in self.rewards], enabled=tc.progress and self.dist.is_main)
            with interrupt_after_step() as interrupt:
                first = True
                while self.step < tc.max_steps:
                    metrics = self.train_step()
                    if first and self.dist.is_main and (notice := self.precision_notice()):
                        print(notice, flush=True)
                    first = False
                    if tc.eval_steps and (self.step % tc.eval_steps == 0 or self.step == tc.max_steps):
                        metrics.update(self.evaluate(limit=tc.eval_samples))
                    self.callbacks.on_step_end(step=self.step, metrics=metrics, samples=self._last_samples)
                    bar.update(self.step, metrics, verbose=self.dist.is_main)
                    if interrupt.requested:
                        bar.close()
                        raise TrainingInterrupted(self.save(), self.step)
                    if tc.save_steps and self.step % tc.save_steps == 0 and self.step < tc.max_steps:
                        self.save()
            bar.close()
            self.save()
            self.save_final(self.run_dir / "final")
        finally:
            self.callbacks.on_train_end(metrics=metrics)
            self.dist.close()  # leave the process group this trainer joined (torchrun)
        return metrics

    def precision_notice(self) -> Optional[str]:
        """What the ``auto`` dtypes chose, when they chose bfloat16 (after the first step, once decoding ran)."""
        parts = []
        if (
            getattr(self.engine.cfg, "decode_dtype", "") == "auto"
            and getattr(self.engine, "last_decode_dtype", "") == "bfloat16"
        ):
            parts.append("decodes")
        if self.tc.update_dtype == "auto" and self.update_dtype == "bfloat16":
            parts.append("updates")
        if not parts:
            return None
        return (
            f"rlvr: this CPU multiplies bfloat16 in hardware, so this run {' and '.join(parts)} in bfloat16 with float32 "
            "master weights (the `auto` default); engine.decode_dtype=float32 trainer.update_dtype=float32 for float32"
        )

    def evaluate(self, limit: int = 0, num_samples: int = 0) -> dict[str, float]:
        from rlvr.core.evaluate import evaluate

        was = self.policy.model.training
        self.policy.model.eval()
        with distributed.unsharded(self.parallel):  # every rank evaluates the same rows
            if self.env is not None:
                out = episodes.evaluate_env(
                    self.policy, self.task, self.env, self.engine, limit=limit, seed=self.tc.seed
                )
            else:
                out = evaluate(
                    self.policy,
                    self.task,
                    self.engine,
                    num_samples=num_samples or self.tc.eval_num_samples,
                    limit=limit,
                    seed=self.tc.seed,
                )
        if was:
            self.policy.model.train()
        return out


def train(
    cfg: Any, rewards: Optional[Sequence[Callable[..., Any]]] = None, run_dir: Optional[str | Path] = None
) -> Trainer:
    """Build a Trainer from a config and run it; returns the trainer (its ``run_dir`` holds the outputs)."""
    trainer = Trainer(cfg, rewards=rewards, run_dir=run_dir)
    trainer.train()
    return trainer
