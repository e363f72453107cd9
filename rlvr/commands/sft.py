"""``rlvr sft``: supervised fine-tuning on worked answers, the usual priming before GRPO.

Each task row gives a prompt (rendered exactly as ``rlvr train`` renders it: the task's system
prompt, template and chat template) and a target completion: ``sft.completion_template``
formatted with the row's columns, or the column ``sft.completion_column``, or, for a task with a
chat ``messages_column``, its trailing assistant turns. The loss is the mean negative log-likelihood
of the completion tokens only (prompt tokens are masked), computed with the chunked log-prob
kernel (no ``[batch, length, vocabulary]`` logits).

Model plugins, LoRA, checkpoints (``checkpoints/checkpoint-<step>``, atomic, resumable with
``sft.resume=auto``) and logger plugins are those of ``rlvr train``. The result, ``<run>/final``, is a
plain transformers model directory (with LoRA: the adapter merged in; the adapter alone is in
``<run>/final-adapter``), so that ``rlvr train model=hf model.name_or_path=<run>/final`` starts from it.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from rlvr.core import checkpoint as ckpt_io
from rlvr.core import registry
from rlvr.core.callbacks import logger_manager
from rlvr.core.config import plugin_params
from rlvr.core.errors import ConfigError
from rlvr.core.policy import Policy, save_policy
from rlvr.core.task import RowSampler, Task

CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")


@dataclass
class SFTConfig:
    """``sft.*``: the supervised fine-tuning loop's settings."""

    completion_template: str = ""  # the target, formatted with the row's columns, e.g. "{solution}"
    completion_column: str = ""  # or: the column holding the target text
    reasoning_from: str = ""  # a GSM8K-style "steps #### answer" column; adds `reasoning` (steps, <<calc>> removed)
    append_eos: bool = True  # end the target with the tokenizer's EOS (the chat turn's end for chat models)
    max_steps: int = 30
    batch_size: int = 4  # examples per optimizer step
    micro_batch_size: int = 0  # examples per forward/backward; 0 = batch_size
    lr: float = 2e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | linear | cosine (after warmup)
    max_grad_norm: float = 1.0
    max_length: int = 1024  # prompt + completion tokens; longer targets are cut, longer prompts skipped
    logprob_chunk_tokens: int = 1024
    seed: int = 0
    save_steps: int = 0  # 0 = only the final checkpoint
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto = the run directory's latest checkpoint | none | a checkpoint or run directory
    output_dir: Optional[str] = None  # default: Hydra's run directory
    log_steps: int = 10
    threads: int = 0
    progress: bool = True


def validate(cfg: SFTConfig) -> None:
    """Fail before any model loads on values that cannot work."""
    checks = [
        (cfg.max_steps >= 1, f"sft.max_steps must be >= 1, got {cfg.max_steps}"),
        (cfg.batch_size >= 1, f"sft.batch_size must be >= 1, got {cfg.batch_size}"),
        (
            cfg.micro_batch_size >= 0 and (not cfg.micro_batch_size or cfg.batch_size % cfg.micro_batch_size == 0),
            f"sft.micro_batch_size={cfg.micro_batch_size} must divide sft.batch_size={cfg.batch_size}",
        ),
        (cfg.lr > 0, f"sft.lr must be > 0, got {cfg.lr}"),
        (cfg.max_length >= 2, f"sft.max_length must be >= 2, got {cfg.max_length}"),
        (
            cfg.lr_schedule in ("constant", "linear", "cosine"),
            f"sft.lr_schedule={cfg.lr_schedule!r}: choose constant, linear or cosine",
        ),
        (
            not (cfg.completion_template and cfg.completion_column),
            "set one of sft.completion_template and sft.completion_column, not both",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def gsm8k_reasoning(solution: str) -> str:
    """The worked steps of a GSM8K solution: the text before ``####``, calculator notes ``<<48/2=24>>`` removed."""
    return CALCULATOR_NOTE.sub("", str(solution).split("####")[0]).strip()


def target_text(row: dict[str, Any], cfg: SFTConfig, task: Task, index: int) -> str:
    """The completion to learn for ``row`` (see the module docstring for where it comes from)."""
    if cfg.reasoning_from:
        if cfg.reasoning_from not in row:
            raise ConfigError(
                f"sft: row {index} has no column {cfg.reasoning_from!r} (sft.reasoning_from); columns: {sorted(row)}"
            )
        row = {**row, "reasoning": gsm8k_reasoning(row[cfg.reasoning_from])}
    if cfg.completion_template:
        try:
            return cfg.completion_template.format(**row)
        except KeyError as exc:
            raise ConfigError(
                f"sft: row {index} has no column {exc} used by sft.completion_template "
                f"{cfg.completion_template!r} (columns: {sorted(row)})"
            ) from None
    if cfg.completion_column:
        value = row.get(cfg.completion_column)
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"sft: row {index}: sft.completion_column {cfg.completion_column!r} is "
                f"{'missing' if cfg.completion_column not in row else repr(value)[:80]}; it must hold "
                f"the target text (columns: {sorted(row)})"
            )
        return value
    messages_col = getattr(task.config, "messages_column", "")
    if messages_col and isinstance(row.get(messages_col), list):
        tail = []
        for m in reversed(row[messages_col]):
            if m.get("role") != "assistant":
                break
            tail.append(str(m.get("content", "")))
        if tail:
            return "\n\n".join(reversed(tail))
        raise ConfigError(
            f"sft: row {index}: the {messages_col!r} conversation does not end with an assistant turn "
            "to learn; set sft.completion_column or sft.completion_template"
        )
    raise ConfigError(
        "sft needs the target text: set sft.completion_template (e.g. '{solution}') or "
        "sft.completion_column, or use a task with a chat messages column ending in the assistant reply"
    )


@dataclass
class Example:
    prompt_ids: list[int]
    completion_ids: list[int]


def encode(task: Task, tokenizer: Any, rows: list[dict[str, Any]], cfg: SFTConfig) -> list[Example]:
    """Token ids of each row's prompt and target; prompts that leave no room for the target are skipped."""
    out = []
    eos = tokenizer.eos_token if cfg.append_eos and tokenizer.eos_token else ""
    for i, row in enumerate(rows):
        prompt = task.render(row, tokenizer)
        target = target_text(row, cfg, task, i)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(target + eos, add_special_tokens=False)["input_ids"]
        if len(p) >= cfg.max_length:
            continue
        out.append(Example(p, c[: cfg.max_length - len(p)]))
    if not out:
        raise ConfigError(f"sft: every prompt is at least sft.max_length={cfg.max_length} tokens long; raise it")
    return out


def collate(batch: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(input_ids [N, P+T], attention_mask [N, P+T], completion_mask float32 [N, T], P)``: prompts left-padded
    to ``P`` columns, targets right-padded to ``T`` (the layout of :func:`rlvr.kernels.completion_logprobs`)."""
    P = max(len(e.prompt_ids) for e in batch)
    T = max(len(e.completion_ids) for e in batch)
    ids = torch.full((len(batch), P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), P + T), dtype=torch.long)
    cmask = torch.zeros((len(batch), T), dtype=torch.float32)
    for n, e in enumerate(batch):
        lp, lc = len(e.prompt_ids), len(e.completion_ids)
        ids[n, P - lp : P] = torch.tensor(e.prompt_ids)
        ids[n, P : P + lc] = torch.tensor(e.completion_ids)
        attn[n, P - lp : P + lc] = 1
        cmask[n, :lc] = 1.0
    return ids, attn, cmask, P


def completion_nll(
    model: Any, batch: list[Example], pad_id: int, chunk_tokens: int = 1024
) -> tuple[torch.Tensor, int]:
    """(Σ over completion tokens of −log p(token | prefix), number of completion tokens) for one micro-batch."""
    from rlvr.modeling import completion_logprobs

    ids, attn, cmask, P = collate(batch, pad_id)
    device = next(model.parameters()).device
    logps = completion_logprobs(model, ids.to(device), attn.to(device), P, chunk_tokens=chunk_tokens)
    cmask = cmask.to(logps.device)
    return -(logps * cmask).sum(), int(cmask.sum())


class SFTTrainer:
    """Builds the task, model and loggers from a composed ``rlvr sft`` config and runs the loop."""

    def __init__(self, cfg: Any, run_dir: Optional[str | Path] = None) -> None:
        from omegaconf import OmegaConf

        self.cfg = cfg
        self.sc: SFTConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SFTConfig), cfg["sft"]))
        validate(self.sc)
        if self.sc.threads > 0:
            torch.set_num_threads(self.sc.threads)
        self.task: Task = registry.create("task", str(cfg.task.name), **plugin_params(cfg.task))
        loggers = [(n, registry.create("logger", n, **plugin_params(p))) for n, p in (cfg.get("logger") or {}).items()]
        self.callbacks = logger_manager(loggers).hook  # each logger's on_train_start / on_step_end / on_train_end
        self.run_dir = Path(run_dir or self.sc.output_dir or _hydra_dir())
        torch.manual_seed(self.sc.seed)
        self.policy: Policy = registry.create("model", str(cfg.model.name), **plugin_params(cfg.model))
        tok = self.policy.tokenizer
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        self.examples = encode(self.task, tok, self.task.train_rows, self.sc)
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters")
        sc = self.sc
        self.optimizer = torch.optim.AdamW(
            params, lr=sc.lr, betas=(sc.adam_beta1, sc.adam_beta2), weight_decay=sc.weight_decay
        )
        from rlvr.core.trainer import lr_lambda

        factor = lr_lambda(sc, sc.max_steps)  # type: ignore[arg-type]  # reads warmup_steps and lr_schedule
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.sampler = RowSampler(len(self.examples), sc.seed)
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def resume(self) -> None:
        """Continue from ``sft.resume``: the run directory's latest checkpoint (auto) or a given one."""
        resume = str(self.sc.resume or "")
        if not resume or resume.lower() in ("none", "false"):
            return
        path = ckpt_io.latest_checkpoint(self.run_dir) if resume == "auto" else ckpt_io.resolve_resume(resume)
        if path is None:
            return
        ckpt_io.load_trainable_weights(self.policy, path)
        state = torch.load(path / ckpt_io.STATE_FILE, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        ckpt_io.set_rng_state(state["rng"])
        self.step = int(state["step"])
        print(f"rlvr sft: resumed from {path} at step {self.step}")

    def train_step(self) -> dict[str, float]:
        sc = self.sc
        t0 = time.perf_counter()
        batch = [self.examples[i] for i in self.sampler.take(sc.batch_size)]
        mb = sc.micro_batch_size or sc.batch_size
        n_tokens = sum(len(e.completion_ids) for e in batch)
        self.policy.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(0, len(batch), mb):
            nll, _ = completion_nll(self.policy.model, batch[i : i + mb], self.pad_id, sc.logprob_chunk_tokens)
            (nll / n_tokens).backward()  # token mean over the whole batch
            total += float(nll.detach())
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, sc.max_grad_norm if sc.max_grad_norm > 0 else float("inf"))
        if not torch.isfinite(norm) or not math.isfinite(total):
            raise FloatingPointError(f"sft step {self.step + 1}: non-finite loss or gradient; lower sft.lr")
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {
            "loss": total / n_tokens,
            "grad_norm": float(norm),
            "lr": self.scheduler.get_last_lr()[0],
            "completion_tokens": float(n_tokens),
            "step_time": time.perf_counter() - t0,
        }

    def save(self) -> Path:
        return ckpt_io.save_checkpoint(
            self.run_dir, self.step, self.policy, self.state_dict(), keep=max(1, self.sc.keep_checkpoints)
        )

    def save_final(self) -> Path:
        """``final/``: a plain transformers model (LoRA merged in); ``final-adapter/``: the LoRA adapter alone."""
        final = self.run_dir / "final"
        save_policy(self.policy, str(final), merged=self.policy.is_lora)
        if self.policy.is_lora:
            save_policy(self.policy, str(self.run_dir / "final-adapter"))
        return final

    def train(self) -> dict[str, float]:
        """Run to ``sft.max_steps``; returns the last step's metrics."""
        from omegaconf import OmegaConf
        from tqdm.auto import tqdm

        sc = self.sc
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        config = OmegaConf.to_container(self.cfg, resolve=True)
        (self.run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
        self.callbacks.on_train_start(run_dir=self.run_dir, config=config, start_step=self.step)
        metrics: dict[str, float] = {}
        bar = tqdm(total=sc.max_steps, initial=self.step, disable=not sc.progress, desc="rlvr sft", unit="step")
        while self.step < sc.max_steps:
            metrics = self.train_step()
            self.callbacks.on_step_end(step=self.step, metrics=metrics, samples=[])
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            bar.update(1)
            if sc.log_steps and self.step % sc.log_steps == 0:
                bar.write(
                    f"sft step {self.step}/{sc.max_steps}  loss {metrics['loss']:.4f}  "
                    f"{metrics['step_time']:.1f} s/step"
                )
            if sc.save_steps and self.step % sc.save_steps == 0 and self.step < sc.max_steps:
                self.save()
        bar.close()
        self.save()
        self.save_final()
        self.callbacks.on_train_end(metrics=metrics)
        return metrics


def _hydra_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return Path("rlvr-runs") / ("sft-" + time.strftime("%Y-%m-%d_%H-%M-%S"))


def store_sft_config() -> None:
    """Put :class:`SFTConfig` into Hydra's ConfigStore (``schema/sft/default``) next to the plugin configs."""
    from hydra.core.config_store import ConfigStore

    from rlvr.core.config import store_plugin_configs

    store_plugin_configs()
    ConfigStore.instance().store(group="schema/sft", name="default", node=SFTConfig)


def compose_sft(overrides: Optional[list[str]] = None) -> Any:
    """Compose the ``rlvr sft`` config (``rlvr/conf/sft.yaml``) with Hydra overrides, for notebooks and tests."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    store_sft_config()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="rlvr.conf", version_base="1.3"):
        return compose(config_name="sft", overrides=list(overrides or []))


def run_sft(cfg: Any, run_dir: Optional[str | Path] = None) -> SFTTrainer:
    """Build an :class:`SFTTrainer` from a composed config and run it; returns it (``run_dir/final`` is the model)."""
    trainer = SFTTrainer(cfg, run_dir=run_dir)
    trainer.train()
    return trainer
