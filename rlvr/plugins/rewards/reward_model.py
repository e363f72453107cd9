"""``reward=[reward_model]``: a learned reward model (``AutoModelForSequenceClassification``) scores each completion.

The reward model's own chat template renders ``[system?, user: prompt, assistant: completion]``; the
score is the model's logit ``label`` (0: the single output of a reward model such as Skywork-Reward or
Nemotron) read at the last token. The user turn is ``prompt_template`` formatted with the task row's
columns (the shipped config takes the task's own ``prompt_template`` and ``system_prompt``, so the reward
model sees the question the policy saw, without the policy's chat markup).

- Batched (``batch_size`` conversations per forward), on ``device`` (``auto``: the first GPU when there is
  one, else the CPU; or ``cpu``, ``cuda:1``, ...), in ``dtype``.
- Loaded once per process: every reward_model reward with the same model, revision, dtype and device
  shares one copy of the weights.
- ``normalize``: ``none``; ``running`` (``(s - mean) / std`` over every score seen so far in this process,
  updated with each batch before it is scored); ``fixed`` (``(s - shift) * scale``).
- Completions cannot forge the conversation: the reward model tokenizer's special tokens (e.g.
  ``<|im_end|>``) are removed from a completion before it is rendered, and a conversation longer than
  ``max_length`` tokens is cut from the left, so the score is always read at the real end of the reply.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ColumnError, ConfigError, LoadError
from rlvr.core.rewards import RewardConfig

NORMALIZE = ("none", "running", "fixed")
_MODELS: dict[tuple, tuple[Any, Any]] = {}
_LOCK = threading.Lock()


@dataclass
class RewardModelConfig(RewardConfig):
    model: str = ""  # local directory or Hub id of an AutoModelForSequenceClassification checkpoint
    revision: Optional[str] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 8
    max_length: int = 2048  # tokens per conversation; longer ones are cut from the left
    prompt_template: str = "{question}"  # the user turn, formatted with the task row's columns
    system_prompt: Optional[str] = None
    label: int = 0  # which output logit is the score
    normalize: str = "none"  # none | running | fixed
    shift: float = 0.0  # fixed: (score - shift) * scale
    scale: float = 1.0
    trust_remote_code: bool = False


def load_reward_model(
    name: str, revision: Optional[str], dtype: str, device: str, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer), loaded once per process per (name, revision, dtype, device)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlvr.core.policy import torch_dtype

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    key = (name, revision, dtype, device)
    with _LOCK:
        if key not in _MODELS:
            try:
                tok = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
                model = AutoModelForSequenceClassification.from_pretrained(
                    name, revision=revision, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
                )
            except OSError as exc:
                raise LoadError(
                    f"reward.reward_model.model={name!r}: could not load it ({exc}). Give a local directory "
                    "or a Hub id of a sequence-classification reward model."
                ) from exc
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tok.pad_token_id
            tok.padding_side = "right"
            tok.truncation_side = "left"
            model.to(device).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            _MODELS[key] = (model, tok)
        return _MODELS[key]


def strip_special_tokens(text: str, tokenizer: Any) -> str:
    """``text`` without the tokenizer's special-token strings (a completion must not forge a turn boundary)."""
    for token in sorted(set(getattr(tokenizer, "all_special_tokens", []) or []), key=len, reverse=True):
        if token:
            text = text.replace(token, "")
    return text


def render(tokenizer: Any, user: str, completion: str, system: Optional[str] = None) -> str:
    """The conversation as the reward model reads it: its chat template, or plain text without one."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": completion},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return (system + "\n\n" if system else "") + user + "\n\n" + completion


class RunningStats:
    """Welford's running mean and variance of every score seen."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: list[float]) -> None:
        for v in values:
            self.n += 1
            d = v - self.mean
            self.mean += d / self.n
            self.m2 += d * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 1.0


class RewardModelReward:
    """``fn(completions, prompts=..., **columns) -> list[float]``."""

    def __init__(self, cfg: RewardModelConfig) -> None:
        if not cfg.model:
            raise ConfigError(
                "reward=reward_model needs reward.reward_model.model=<directory or Hub id of a "
                "sequence-classification reward model>"
            )
        if cfg.normalize not in NORMALIZE:
            raise ConfigError(f"reward.reward_model.normalize={cfg.normalize!r}: choose one of {NORMALIZE}")
        if cfg.batch_size < 1 or cfg.max_length < 2:
            raise ConfigError("reward.reward_model.batch_size must be >= 1 and max_length >= 2")
        self.cfg = cfg
        self.model, self.tokenizer = load_reward_model(
            cfg.model, cfg.revision, cfg.dtype, cfg.device, cfg.trust_remote_code
        )
        n_labels = int(getattr(self.model.config, "num_labels", 1))
        if not 0 <= cfg.label < n_labels:
            raise ConfigError(f"reward.reward_model.label={cfg.label} but {cfg.model} has {n_labels} output(s)")
        self.stats = RunningStats()
        self.__name__ = "reward_model"

    def texts(self, completions: list[str], prompts: list[str], columns: dict[str, list[Any]]) -> list[str]:
        """The conversations to score, one per completion."""
        out = []
        for i, completion in enumerate(completions):
            row = {k: v[i] for k, v in columns.items()}
            try:
                user = self.cfg.prompt_template.format(**row) if self.cfg.prompt_template else prompts[i]
            except KeyError as exc:
                raise ColumnError(
                    f"reward.reward_model.prompt_template {self.cfg.prompt_template!r} uses column {exc}, "
                    f"which the task row does not have (columns: {sorted(row)})"
                ) from None
            out.append(
                render(
                    self.tokenizer,
                    user,
                    strip_special_tokens(completion or "", self.tokenizer),
                    self.cfg.system_prompt,
                )
            )
        return out

    def raw_scores(self, texts: list[str]) -> list[float]:
        """The model's logit ``label`` for each text, ``batch_size`` texts per forward pass."""
        import torch

        device = next(self.model.parameters()).device
        scores: list[float] = []
        for i in range(0, len(texts), self.cfg.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.cfg.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.cfg.max_length,
                add_special_tokens=False,
            )
            with torch.no_grad():
                logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits
            scores.extend(float(x) for x in logits[:, self.cfg.label].float().cpu())
        return scores

    def __call__(self, completions: list[str], prompts: Optional[list[str]] = None, **columns: Any) -> list[float]:
        raw = self.raw_scores(self.texts(completions, prompts or [""] * len(completions), columns))
        if self.cfg.normalize == "fixed":
            return [(s - self.cfg.shift) * self.cfg.scale for s in raw]
        if self.cfg.normalize == "running":
            self.stats.update(raw)
            return [(s - self.stats.mean) / max(self.stats.std, 1e-6) for s in raw]
        return raw


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "reward_model",
            RewardModelReward,
            RewardModelConfig,
            "a sequence-classification reward model (e.g. Skywork-Reward) scores prompt + completion",
        )
    ]
