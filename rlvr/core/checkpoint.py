"""Checkpoints: written atomically (a temporary directory renamed into place), the last K kept.

A checkpoint directory ``checkpoint-<step>`` holds the policy (adapter or full weights, loadable
by transformers/peft) and ``trainer_state.pt`` (optimizer, scheduler, RNG states, sampler
position, step). Only directories with the ``COMPLETE`` marker count: a crash while writing
leaves a ``.tmp-`` directory that is ignored and cleaned up.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from rlvr.core.policy import Policy, save_policy

PREFIX = "checkpoint-"
MARKER = "COMPLETE"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(run_dir: Path, step: int, policy: Policy, trainer_state: dict[str, Any], keep: int = 2) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step}"
    tmp = ckpt_root / f".tmp-{PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        save_policy(policy, str(tmp))
        torch.save({**trainer_state, "rng": rng_state(), "step": step}, tmp / "trainer_state.pt")
        (tmp / MARKER).write_text(str(step))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays the latest valid one
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


def load_trainable_weights(policy: Policy, ckpt: Path) -> None:
    """Load the checkpoint's weights into the policy in place."""
    from safetensors.torch import load_file

    if policy.is_lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(policy.model, load_file(str(ckpt / "adapter_model.safetensors")))
        return
    files = sorted(ckpt.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ckpt} has no model*.safetensors")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = policy.model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings are saved once
    if real_missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt} does not match the model: missing {real_missing[:5]}, unexpected {unexpected[:5]}")
