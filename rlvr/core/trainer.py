"""The GRPO loop.

One step: sample B prompts → G completions each (engine) → score (rewards) → group-relative
advantages → μ optimisation passes (log-probs from the chunked kernel → loss → backward →
optimizer) → metrics and checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from rlvr.core import checkpoint as ckpt_io
from rlvr.core import distributed, registry
from rlvr.core.advantages import group_advantages, zero_std_fraction
from rlvr.core.config import TrainerConfig, plugin_params, trainer_config
from rlvr.core.importance import importance_metrics, importance_weights, scale_gradient
from rlvr.core.monitor import Monitor, json_row
from rlvr.core.policy import Policy, save_policy
from rlvr.core.rewards import RewardFn, score, weighted_total
from rlvr.core.rollout import Rollouts
from rlvr.core.task import RowSampler, Task
from rlvr.kernels.memory import enable_gradient_checkpointing, offload_activations
from rlvr.kernels.shared_prompt import grouped_completion_logprobs


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite losses in a row)."""


def validate_trainer(tc: TrainerConfig) -> None:
    """Fail before any model loads on values that cannot work."""
    checks = [
        (tc.num_generations >= 2, f"trainer.num_generations must be >= 2 for group-relative advantages, got {tc.num_generations}"),
        (tc.prompts_per_step >= 1, f"trainer.prompts_per_step must be >= 1, got {tc.prompts_per_step}"),
        (tc.max_steps >= 1, f"trainer.max_steps must be >= 1, got {tc.max_steps}"),
        (tc.num_iterations >= 1, f"trainer.num_iterations must be >= 1, got {tc.num_iterations}"),
        (tc.lr > 0, f"trainer.lr must be > 0, got {tc.lr}"),
        (tc.micro_batch_size >= 0, f"trainer.micro_batch_size must be >= 0, got {tc.micro_batch_size}"),
        (tc.advantage_scaling in ("group", "batch", "none"), f"trainer.advantage_scaling={tc.advantage_scaling!r}: choose group, batch or none"),
        (tc.advantage_baseline in ("mean", "rloo"), f"trainer.advantage_baseline={tc.advantage_baseline!r}: choose mean or rloo"),
        (tc.lr_schedule in ("constant", "linear", "cosine"), f"trainer.lr_schedule={tc.lr_schedule!r}: choose constant, linear or cosine"),
        (tc.max_grad_norm >= 0, f"trainer.max_grad_norm must be >= 0 (0 = no clipping), got {tc.max_grad_norm}"),
        (tc.warmup_steps >= 0, f"trainer.warmup_steps must be >= 0, got {tc.warmup_steps}"),
        (tc.distributed in distributed.STRATEGIES, f"trainer.distributed={tc.distributed!r}: choose ddp or fsdp"),
        (tc.dist_backend in distributed.BACKENDS, f"trainer.dist_backend={tc.dist_backend!r}: choose auto, gloo or nccl"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    n = tc.prompts_per_step * tc.num_generations
    if tc.micro_batch_size and n % tc.micro_batch_size:
        raise ValueError(f"trainer.micro_batch_size={tc.micro_batch_size} does not divide the batch of "
                         f"prompts_per_step×num_generations = {n} completions")


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
        raise ValueError(f"config node {kind!r} has no 'name'; pick a plugin with {kind}=<name>")
    return str(name), plugin_params(node)


def _to_dict(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)  # type: ignore[return-value]


class Trainer:
    """Builds every component from a composed config and runs the GRPO loop.

    ``rewards``: plain Python reward functions ``fn(completions, **columns) -> list[float | None]``
    to use instead of the config's ``reward`` list (for notebooks; no packaging needed).
    """

    def __init__(self, cfg: Any, rewards: Optional[Sequence[Callable[..., Any]]] = None,
                 run_dir: Optional[str | Path] = None, policy: Optional[Policy] = None) -> None:
        self.cfg = cfg
        self.tc = trainer_config(cfg["trainer"])
        validate_trainer(self.tc)
        if self.tc.threads > 0:
            torch.set_num_threads(self.tc.threads)
        self.dist = distributed.setup(self.tc.dist_backend)  # torchrun: join the process group; else one process
        self._validate_parallel()
        # cheap components first: a bad name or value fails before the model loads
        task_name, task_params = _select(cfg, "task")
        self.task: Task = registry.create("task", task_name, **task_params)
        self.rewards = self._build_rewards(cfg, rewards)
        self.monitor = Monitor.from_config(self.tc, self.task.config.answer_column)  # reward-hacking signals (audit/)
        loss_name, loss_params = _select(cfg, "loss")
        self.loss = registry.create("loss", loss_name, **loss_params)
        engine_name, engine_params = _select(cfg, "engine")
        self.engine = registry.create("engine", engine_name, **engine_params)
        loggers = [registry.create("logger", n, **plugin_params(p)) for n, p in (cfg.get("logger") or {}).items()]
        self.loggers = loggers if self.dist.is_main else []  # rank 0 writes the logs
        self.run_dir = Path(self.dist.broadcast(str(run_dir or self._default_run_dir())))  # rank 0's, on every rank
        model_name, model_params = _select(cfg, "model")
        ecfg = getattr(self.engine, "cfg", None)
        longest = int(getattr(ecfg, "max_prompt_length", 0) or 0) + int(getattr(ecfg, "max_new_tokens", 0) or 0)
        if policy is None and model_params.get("max_seq_length") and longest > int(model_params["max_seq_length"]):
            raise ValueError(f"engine.max_prompt_length + engine.max_new_tokens = {longest} exceeds "
                             f"model.max_seq_length={model_params['max_seq_length']}: raise model.max_seq_length "
                             "(memory grows with it) or shorten the prompts / completions")
        torch.manual_seed(self.tc.seed)  # LoRA adapters are initialised from the global RNG: same seed, same init
        self.policy = policy or registry.create("model", model_name, **model_params)
        if self.dist.device is not None and self.dist.device.type == "cuda" and self.policy.device.type == "cpu":
            self.policy.model.to(self.dist.device)  # the GPU (cuda:LOCAL_RANK under torchrun); device_map'd models stay
        self.temperature = float(getattr(getattr(self.engine, "cfg", None), "temperature", 1.0))
        self.step = 0
        self.sampler = RowSampler(len(self.task.train_rows), self.tc.seed)
        self.bad_steps_in_row = 0
        self.skipped_steps = 0
        if (self.dist.enabled and self.tc.distributed == "fsdp" and not self.policy.is_lora
                and float(getattr(self.loss, "beta", 0.0)) > 0):
            raise ValueError("trainer.distributed=fsdp with full fine-tuning and loss.beta > 0 is not supported (the KL "
                             "reference would be a second, unsharded copy of the model): use LoRA (the reference is "
                             "the base with the adapters off) or trainer.distributed=ddp")
        # DDP / FSDP2 wrapper for the training forward-backward (None in one process); Policy.model stays unwrapped
        self.parallel = distributed.wrap(self.policy.model, self.dist, self.tc.distributed)
        self._setup_optimizer()

    # ----- construction -------------------------------------------------------------------
    def _validate_parallel(self) -> None:
        tc, world = self.tc, self.dist.world_size
        if world == 1:
            return
        if tc.prompts_per_step < world:
            raise ValueError(f"trainer.prompts_per_step={tc.prompts_per_step} < {world} processes: each process "
                             "generates whole groups, so give every process at least one prompt")
        if tc.distributed == "fsdp" and tc.prompts_per_step % world:
            raise ValueError(f"trainer.distributed=fsdp needs trainer.prompts_per_step ({tc.prompts_per_step}) to be a "
                             f"multiple of the {world} processes (every rank must run the same number of passes)")
        if tc.distributed == "fsdp" and tc.save_merged:
            raise ValueError("trainer.save_merged=true is not supported with trainer.distributed=fsdp: merge the saved "
                             "adapter afterwards (rlvr.core.policy.save_policy(policy, path, merged=True))")

    def _build_rewards(self, cfg: Any, fns: Optional[Sequence[Callable[..., Any]]]) -> list[RewardFn]:
        if fns is not None:
            return [RewardFn(getattr(f, "__name__", f"reward_{i}"), f) for i, f in enumerate(fns)]
        out = []
        for name, node in (cfg.get("reward") or {}).items():
            params = plugin_params(node)
            fn = registry.create("reward", name, **params)
            out.append(RewardFn(name, fn, float(params.get("weight", 1.0)), str(params.get("on_error", "raise"))))
        if not out:
            raise ValueError("no reward configured: pick at least one, e.g. reward=[arithmetic] (see `rlvr plugins`)")
        return out

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
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                           weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(tc, tc.max_steps * tc.num_iterations))
        if tc.gradient_checkpointing:
            enable_gradient_checkpointing(self.policy.model)

    # ----- one step -----------------------------------------------------------------------
    def group_seeds(self, step: int, num_groups: int) -> list[int]:
        """Sampling seed of each group: a function of (seed, step, group index) only."""
        return [(self.tc.seed * 1_000_003 + step * 10_007 + g) % (2**63) for g in range(num_groups)]

    def generate(self, step: int) -> Rollouts:
        idx = self.sampler.take(self.tc.prompts_per_step)  # the same B prompts on every rank
        mine = self.dist.groups(len(idx))  # this rank's groups (all of them in one process)
        rows = [self.task.train_rows[i] for i in idx[mine]]
        prompts = [self.task.render(r, self.policy.tokenizer) for r in rows]
        seeds = self.group_seeds(step, len(idx))[mine]  # seeded by the global group index
        with distributed.unsharded(self.parallel):
            rollouts = self.engine.generate(self.policy, prompts, self.tc.num_generations, seeds)
        rollouts.rows = [r for r in rows for _ in range(self.tc.num_generations)]
        return rollouts

    def logprobs(self, model: Any, ro: Rollouts, sl: slice, with_entropy: bool = False) -> Any:
        ids = torch.cat([ro.prompt_ids[sl], ro.completion_ids[sl]], dim=1).to(self.policy.device)
        attn = torch.cat([ro.prompt_mask[sl], ro.completion_mask[sl]], dim=1).to(self.policy.device)
        ctx = offload_activations(self.policy.model, enabled=self.tc.offload_activations and torch.is_grad_enabled())
        kw = {"temperature": self.temperature, "chunk_tokens": self.tc.logprob_chunk_tokens, "return_entropy": with_entropy}
        with ctx:
            if self.parallel is not None and model is self.policy.model:  # DDP / FSDP2 act through the wrapper
                return self.parallel(ids, attn, ro.prompt_ids.shape[1], group_size=self.tc.num_generations, **kw)
            # each group's prompt once when the rows allow it (rlvr/kernels/shared_prompt.py)
            return grouped_completion_logprobs(model, ids, attn, ro.prompt_ids.shape[1], self.tc.num_generations, **kw)

    def micro_slices(self, n: int) -> list[slice]:
        mb = self.tc.micro_batch_size or n
        return [slice(i, i + mb) for i in range(0, n, mb)]

    def train_step(self) -> dict[str, float]:
        tc, step = self.tc, self.step + 1
        t0 = time.perf_counter()
        self.policy.model.eval()
        ro = self.generate(step)
        t_gen = time.perf_counter() - t0
        table = score(self.rewards, ro.completions, ro.prompts, ro.columns())
        # the whole batch on every rank (one process: its own): advantages (batch scaling) and metrics use it
        parts = self.dist.gather({"rewards": table, "lengths": ro.completion_mask.sum(1).float(),
                                  "truncated": ro.truncated, "generation_time": t_gen})
        total = weighted_total(torch.cat([p["rewards"] for p in parts]), [r.weight for r in self.rewards])
        mine = self.dist.groups(tc.prompts_per_step)
        adv = group_advantages(total, tc.num_generations, tc.advantage_scaling, tc.advantage_baseline)[
            mine.start * tc.num_generations:mine.stop * tc.num_generations]
        num_sequences = total.numel()
        mask = ro.completion_mask.float().to(self.policy.device)
        truncated = ro.truncated.to(self.policy.device)
        adv_d = adv.to(self.policy.device)
        slices = self.micro_slices(ro.num)
        beta = float(getattr(self.loss, "beta", 0.0))
        ref_logps = old_logps = None
        with torch.no_grad():
            if beta > 0:
                with self.policy.reference() as ref_model:
                    ref_logps = torch.cat([self.logprobs(ref_model, ro, sl) for sl in slices])
            if tc.num_iterations > 1:  # μ = 1: old log-probs are the detached current ones (no extra pass)
                old_logps = torch.cat([self.logprobs(self.policy.model, ro, sl) for sl in slices])
        active = getattr(self.loss, "active_tokens", None)
        num_tokens = sum(int(active(mask[sl], truncated[sl])) for sl in slices) if active else int(mask.sum())
        num_tokens = int(self.dist.sum(num_tokens))  # loss normalisers are whole-batch totals
        needs_entropy = bool(getattr(self.loss, "needs_entropy", False))
        is_cfg = getattr(self.engine, "importance_sampling", None)  # engine/trainer mismatch correction (engine=vllm)
        use_is = bool(is_cfg is not None and is_cfg.enabled and ro.sampling_logps is not None)
        self.policy.model.train()
        loss_sum, sums, grad_norm, skipped = 0.0, {}, 0.0, False
        for _ in range(tc.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            for sl in slices:
                out = self.logprobs(self.policy.model, ro, sl, with_entropy=needs_entropy)
                logps, ent = out if needs_entropy else (out, None)
                is_metrics: dict[str, float] = {}
                if use_is:  # each token's loss times a capped ratio trainer/engine (a constant)
                    old = old_logps[sl] if old_logps is not None else logps.detach()
                    w = importance_weights(old, ro.sampling_logps[sl].to(logps.device), mask[sl], is_cfg)
                    logps, is_metrics = scale_gradient(logps, w), importance_metrics(w, mask[sl])
                kwargs = {"entropies": ent} if needs_entropy else {}
                value, m = self.loss(logps, old_logps[sl] if old_logps is not None else None,
                                     ref_logps[sl] if ref_logps is not None else None, adv_d[sl], mask[sl], truncated[sl],
                                     num_sequences=num_sequences, num_tokens=num_tokens, **kwargs)
                with distributed.grad_sync(self.parallel, sync=sl is slices[-1]):
                    (value * self.dist.world_size).backward()  # DDP / FSDP2 average gradients over the ranks
                loss_sum += float(value.detach())
                share = (sl.stop - sl.start if sl.stop <= ro.num else ro.num - sl.start) / num_sequences
                for k, v in {**m, **is_metrics}.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * share / tc.num_iterations
            params = [p for p in self.policy.model.parameters() if p.requires_grad]
            norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm if tc.max_grad_norm > 0 else float("inf"))
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
            if self.dist.sum(float(not torch.isfinite(norm) or not math.isfinite(loss_sum))) > 0:  # any rank
                skipped = True
                self.optimizer.zero_grad(set_to_none=True)
                break
            grad_norm = float(norm)
            self.optimizer.step()
            self.scheduler.step()
        if skipped:
            self.bad_steps_in_row += 1
            self.skipped_steps += 1
            warnings.warn(f"step {step}: non-finite loss or gradient; the update was skipped "
                          f"({self.bad_steps_in_row} in a row, {self.skipped_steps} in total)")
            if self.bad_steps_in_row >= tc.max_bad_steps:
                raise TrainingError(f"{self.bad_steps_in_row} steps in a row had a non-finite loss or gradient; "
                                    "lower trainer.lr, check the rewards, or raise trainer.max_bad_steps")
        else:
            self.bad_steps_in_row = 0
        self.step = step
        dt = time.perf_counter() - t0
        lengths = torch.cat([p["lengths"] for p in parts])
        clipped = torch.cat([p["truncated"] for p in parts]).float()
        t_gen = max(p["generation_time"] for p in parts)
        loss_sum = self.dist.sum(loss_sum)
        sums = {k: self.dist.sum(v) for k, v in sorted(sums.items())}
        metrics: dict[str, float] = {
            "reward/mean": float(total.mean()), "reward/std": float(total.std()) if total.numel() > 1 else 0.0,
            "frac_reward_zero_std": zero_std_fraction(total, tc.num_generations),
            "loss": loss_sum / tc.num_iterations, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0],
            "completion_length/mean": float(lengths.mean()), "completion_length/max": float(lengths.max()),
            "completion_length/clipped_ratio": float(clipped.mean()),
            "step_time": dt, "generation_time": t_gen, "tokens_per_s": float(lengths.sum()) / max(t_gen, 1e-9),
            "skipped_steps": float(self.skipped_steps),
        }
        batch_table = torch.cat([p["rewards"] for p in parts])
        for j, r in enumerate(self.rewards):
            col = batch_table[:, j]
            ok = col[~torch.isnan(col)]
            metrics[f"rewards/{r.name}/mean"] = float(ok.mean()) if ok.numel() else float("nan")
            metrics[f"rewards/{r.name}/std"] = float(ok.std()) if ok.numel() > 1 else 0.0
        metrics.update(sums)
        metrics.update(self.monitor(step, ro.completions, table, self.rewards, ro.rows, ro.prompts,  # reward hacking
                                    gather=self.dist.gather, warn=self.dist.is_main))
        samples = self.dist.gather(self._samples(ro, table, adv))  # the batch's first log_completions, as in one process
        self._last_samples = [s for part in samples for s in part][:tc.log_completions]
        return metrics

    def _samples(self, ro: Rollouts, table: torch.Tensor, adv: torch.Tensor) -> list[dict[str, Any]]:
        k = min(self.tc.log_completions, ro.num)
        out = []
        for i in range(k):
            out.append({"prompt": ro.prompts[i], "completion": ro.completions[i],
                        "answer": str(ro.rows[i].get(self.task.config.answer_column, "")),
                        "row": json_row(ro.rows[i]),  # the task columns, so that `rlvr audit` can re-score
                        "rewards": {r.name: (None if math.isnan(float(table[i, j])) else float(table[i, j]))
                                    for j, r in enumerate(self.rewards)},
                        "advantage": float(adv[i]), "truncated": bool(ro.truncated[i])})
        return out

    # ----- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(), "bad_steps_in_row": self.bad_steps_in_row,
                "skipped_steps": self.skipped_steps}

    def save(self) -> Path:
        """Checkpoint: rank 0 writes it (DDP: every rank holds the same weights); with FSDP2 every rank writes
        its shard of weights and optimizer state (torch.distributed.checkpoint)."""
        keep = max(1, int(self.cfg["trainer"].get("keep_checkpoints", 2)))
        if distributed.is_fsdp(self.parallel):
            state = {k: v for k, v in self.state_dict().items() if k != "optimizer"}
            return distributed.save_sharded_checkpoint(self.dist, self.run_dir, self.step, self.parallel,
                                                       self.optimizer, state, keep)
        path = Path(self.run_dir) / "checkpoints" / f"{ckpt_io.PREFIX}{self.step}"
        if self.dist.is_main:
            path = ckpt_io.save_checkpoint(self.run_dir, self.step, self.policy, self.state_dict(), keep=keep)
        self.dist.barrier()
        return path

    def save_final(self, path: Path) -> None:
        """The trained model, loadable by transformers / peft (LoRA: the adapter; ``trainer.save_merged``: also
        ``merged/``). With FSDP2 the shards are gathered to rank 0 first."""
        state = distributed.full_state_dict(self.parallel) if distributed.is_fsdp(self.parallel) else None
        if self.dist.is_main:
            save_policy(self.policy, str(path), state_dict=state)
            if self.tc.save_merged and self.policy.is_lora:
                save_policy(self.policy, str(path / "merged"), merged=True)
        self.dist.barrier()

    def resume_from(self, path: Path) -> None:
        if float(getattr(self.loss, "beta", 0.0)) > 0 and not self.policy.is_lora:
            self.policy.reference()  # full fine-tune: snapshot the base weights as the KL reference first
        if (path / distributed.SHARDED_DIR).is_dir():  # FSDP2's checkpoint: each rank reads what it holds
            module = self.parallel if self.parallel is not None else distributed.LogprobModule(self.policy.model)
            distributed.load_sharded(path / distributed.SHARDED_DIR, module, self.optimizer)
        else:
            ckpt_io.load_trainable_weights(self.policy, path)
        state = torch.load(path / "trainer_state.pt", weights_only=False)
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.bad_steps_in_row, self.skipped_steps = state["bad_steps_in_row"], state["skipped_steps"]
        ckpt_io.set_rng_state(state["rng"])
        self.step = int(state["step"])

    def _maybe_resume(self) -> None:
        resume = str(self.cfg["trainer"].get("resume", "auto") or "")
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

    # ----- the loop -----------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        """Run to ``trainer.max_steps``; returns the last step's metrics. Writes into ``run_dir``."""
        from tqdm.auto import tqdm

        tc = self.tc
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._maybe_resume()
        config_dict = _to_dict(self.cfg)
        if self.dist.is_main:
            (self.run_dir / "config.json").write_text(json.dumps(config_dict, indent=2, default=str))
        for lg in self.loggers:
            if hasattr(lg, "on_train_start"):
                lg.on_train_start(self.run_dir, config_dict, self.step)
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not (tc.progress and self.dist.is_main),
                   desc="rlvr train", unit="step", dynamic_ncols=True)
        metrics: dict[str, float] = {}
        while self.step < tc.max_steps:
            metrics = self.train_step()
            if tc.eval_steps and (self.step % tc.eval_steps == 0 or self.step == tc.max_steps):
                metrics.update(self.evaluate(limit=tc.eval_samples))
            for lg in self.loggers:
                if hasattr(lg, "on_step_end"):
                    lg.on_step_end(self.step, metrics, self._last_samples)
            post = {"reward": f"{metrics['reward/mean']:.2f}", "len": f"{metrics['completion_length/mean']:.0f}",
                    "s/step": f"{metrics['step_time']:.1f}"}
            if len(self.rewards) > 1:
                post.update({r.name: f"{metrics[f'rewards/{r.name}/mean']:.2f}" for r in self.rewards})
            bar.set_postfix(post)
            bar.update(1)
            if tc.log_steps and self.step % tc.log_steps == 0 and self.dist.is_main:
                bar.write(f"step {self.step}/{tc.max_steps}  reward {metrics['reward/mean']:.3f} ± {metrics['reward/std']:.3f}  "
                          f"len {metrics['completion_length/mean']:.1f}  zero-std groups {metrics['frac_reward_zero_std']:.2f}  "
                          f"{metrics['step_time']:.1f} s/step")
            if tc.save_steps and self.step % tc.save_steps == 0 and self.step < tc.max_steps:
                self.save()
        bar.close()
        self.save()
        self.save_final(self.run_dir / "final")
        for lg in self.loggers:
            if hasattr(lg, "on_train_end"):
                lg.on_train_end(metrics)
        self.dist.close()  # leave the process group this trainer joined (torchrun)
        return metrics

    def evaluate(self, limit: int = 0, num_samples: int = 0) -> dict[str, float]:
        from rlvr.core.evaluate import evaluate

        was = self.policy.model.training
        self.policy.model.eval()
        with distributed.unsharded(self.parallel):  # every rank evaluates the same rows
            out = evaluate(self.policy, self.task, self.engine, num_samples=num_samples, limit=limit, seed=self.tc.seed)
        if was:
            self.policy.model.train()
        return out


def train(cfg: Any, rewards: Optional[Sequence[Callable[..., Any]]] = None, run_dir: Optional[str | Path] = None) -> Trainer:
    """Build a Trainer from a config and run it; returns the trainer (its ``run_dir`` holds the outputs)."""
    trainer = Trainer(cfg, rewards=rewards, run_dir=run_dir)
    trainer.train()
    return trainer
