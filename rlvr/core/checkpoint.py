"""Checkpoints: written atomically (a temporary directory renamed into place), the last K kept.

A checkpoint directory ``checkpoint-<step>`` holds the policy (adapter or full weights, loadable
by transformers/peft), ``trainer_state.pt`` (optimizer, scheduler, every RNG state, sampler
position, step, skipped-step counters) and a copy of ``metrics.jsonl`` up to that step. Only
directories with the ``COMPLETE`` marker count: a crash while writing leaves a ``.tmp-`` directory
that is ignored and cleaned up, and the previous checkpoint stays the latest valid one.

Test hook: ``RLVR_TEST_CRASH_AT=checkpoint-write:<step>`` SIGKILLs the process in the middle of
writing checkpoint ``<step>`` (after the weights, before the trainer state);
``RLVR_TEST_CRASH_AT=checkpoint-write:<step>:enospc`` raises "no space left on device" there instead.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from rlvr.core.errors import CheckpointError, CheckpointMismatchError, PathNotFoundError
from rlvr.core.policy import Policy, save_policy

PREFIX = "checkpoint-"
MARKER = "COMPLETE"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
CRASH_ENV = "RLVR_TEST_CRASH_AT"


def rng_state() -> dict[str, Any]:
    """Every RNG the loop may draw from: torch CPU (and CUDA when present), Python, NumPy."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _test_fault(point: str, step: int) -> None:
    """The test-only fault injection named by ``$RLVR_TEST_CRASH_AT`` (``<point>:<step>[:enospc]``)."""
    spec = os.environ.get(CRASH_ENV, "")
    if not spec:
        return
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] != point or parts[1] != str(step):
        return
    if len(parts) > 2 and parts[2] == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), signal.SIGKILL)


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is still valid."""

    def __init__(self, target: Path, previous: Optional[Path], cause: BaseException) -> None:
        code = getattr(cause, "errno", None)
        text = str(cause)
        full = code == errno.ENOSPC or "No space left" in text or "write failed" in text or _disk_full(target.parent)
        reason = "no space left on device" if full else f"{type(cause).__name__}: {text}"
        fix = "free some space" if full else "fix the cause"
        message = (
            f"could not write checkpoint {target} ({reason}). "
            + (
                f"The previous checkpoint {previous} is intact: {fix} and run the same command again to "
                "resume from it."
                if previous
                else f"There is no earlier checkpoint; {fix} and run again."
            )
            + (
                " Checkpoints take less space with a smaller trainer.keep_checkpoints or a larger trainer.save_steps."
                if full
                else ""
            )
        )
        super().__init__(errno.ENOSPC if full else (code or errno.EIO), message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _disk_full(path: Path, margin: int = 16 << 20) -> bool:
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


def save_checkpoint(run_dir: Path, step: int, policy: Policy, trainer_state: dict[str, Any], keep: int = 2) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step}"
    tmp = ckpt_root / f".tmp-{PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        save_policy(policy, str(tmp))
        _test_fault("checkpoint-write", step)
        torch.save({**trainer_state, "rng": rng_state(), "step": step}, tmp / STATE_FILE)
        metrics = Path(run_dir) / METRICS_FILE
        if metrics.is_file():  # the metrics so far, so that a checkpoint is self-contained
            shutil.copyfile(metrics, tmp / METRICS_FILE)
        (tmp / MARKER).write_text(str(step))
        if final.exists():  # re-saving the same step: move the old one aside, never leave neither
            old = ckpt_root / f".tmp-old-{PREFIX}{step}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except Exception as exc:  # noqa: BLE001 - disk full shows up as OSError, RuntimeError (torch) or SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays the latest valid one
        raise CheckpointWriteError(final, latest_checkpoint(run_dir), exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first; removes leftovers of interrupted writes."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    for leftover in root.glob(".tmp-*"):
        m = re.fullmatch(rf"\.tmp-old-({PREFIX}\d+)-\d+", leftover.name)
        if m and (leftover / MARKER).is_file() and not (root / m.group(1)).exists():
            os.replace(leftover, root / m.group(1))  # interrupted while replacing a re-saved step: put it back
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    found = []
    for d in root.iterdir():
        m = re.fullmatch(rf"{PREFIX}(\d+)", d.name)
        if m and (d / MARKER).is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(resume: str) -> Path:
    """``trainer.resume=PATH``: a checkpoint directory, or a run directory (its latest complete checkpoint)."""
    path = Path(resume).expanduser()
    if (path / MARKER).is_file():
        return path
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is not None:
            return latest
        if re.fullmatch(rf"{PREFIX}\d+", path.name):
            raise PathNotFoundError(
                f"trainer.resume={resume!r} is an incomplete checkpoint (no {MARKER} marker: "
                "its writing was interrupted); pick an earlier one or trainer.resume=auto"
            )
        raise PathNotFoundError(
            f"trainer.resume={resume!r} is neither a checkpoint directory nor a run directory "
            f"with complete checkpoints under checkpoints/"
        )
    raise PathNotFoundError(f"trainer.resume={resume!r}: no such directory")


RESUMABLE = (
    "trainer.max_steps",
    "trainer.save_steps",
    "trainer.keep_checkpoints",
    "trainer.resume",
    "trainer.log_steps",
    "trainer.eval_steps",
    "trainer.eval_samples",
    "trainer.eval_num_samples",
    "trainer.log_completions",
    "trainer.progress",
    "trainer.output_dir",
    "trainer.threads",
    "trainer.reuse_freed_memory",
    "trainer.max_bad_steps",
    "trainer.gradient_checkpointing",
    "trainer.offload_activations",
    "trainer.save_merged",
    "trainer.distributed",
    "trainer.dist_backend",
    "trainer.pack_completions",
    "engine.compact_finished",
    "logger",
)
"""Config keys (and key prefixes) a resumed run may change: when, how long and what to log or save, and
memory, thread and process-layout knobs that do not change the numbers (1 and N processes train the same).
Any other change stops the resume."""


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists are values)."""
    if not isinstance(config, dict) or not config:
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs between two composed configs: ``key -> (saved, current)``.

    Only keys both configs have are compared: a setting added in a later rlvr version (absent from an older
    checkpoint's config) or one that no longer exists does not count as a change."""
    old, new = flatten(saved), flatten(current)
    return {k: (old[k], new[k]) for k in sorted(set(old) & set(new)) if old[k] != new[k]}


def may_change_on_resume(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE)


def load_trainable_weights(policy: Policy, ckpt: Path) -> None:
    """Load the checkpoint's weights into the policy in place."""
    from safetensors.torch import load_file

    if policy.is_lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(policy.model, load_file(str(ckpt / "adapter_model.safetensors")))
        return
    files = sorted(ckpt.glob("model*.safetensors"))
    if not files:
        raise CheckpointError(f"{ckpt} has no model*.safetensors")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = policy.model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings are saved once
    if real_missing or unexpected:
        raise CheckpointMismatchError(
            f"checkpoint {ckpt} does not match the model: missing {real_missing[:5]}, unexpected {unexpected[:5]}"
        )
