"""What a task plugin returns: training and held-out rows, how a row becomes a prompt, and which
verifier judges held-out accuracy (``correct``; see docs/answers.md)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from rlvr.core.answers import last_number, same_number  # noqa: F401 - re-exported for older imports
from rlvr.core.errors import ColumnError, ConfigError, DataError


@dataclass
class TaskConfig:
    """Fields every task config has."""

    system_prompt: Optional[str] = None
    prompt_template: str = "{question}"  # formatted with the row's columns
    answer_column: str = "answer"
    chat: bool = True  # apply the tokenizer's chat template
    # held-out accuracy: the verifier plugin that judges a completion (any `rlvr plugins` verifier), and its params;
    # "" = the task's own is_correct when it has one, else exact_match
    correct: str = ""
    correct_params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """Rows + prompt construction. Held-out correctness is the verifier named by ``config.correct``
    (:mod:`rlvr.core.correctness`); ``is_correct(completion, row)``, when given, is used only when the
    config names no verifier (``correct=""``)."""

    name: str
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    config: TaskConfig
    is_correct: Optional[Callable[[str, dict[str, Any]], bool]] = None

    def __post_init__(self) -> None:
        col = self.config.answer_column
        for split, rows in (("train", self.train_rows), ("eval", self.eval_rows)):
            for i, row in enumerate(rows):
                if col not in row:
                    raise ColumnError(
                        f"task {self.name!r}: {split} row {i} has no {col!r} column (columns: "
                        f"{sorted(row)}); set task.answer_column to the column holding the answer"
                    )
        if not self.train_rows:
            raise DataError(f"task {self.name!r} has no training rows")

    def prompt_text(self, row: dict[str, Any]) -> str:
        try:
            return self.config.prompt_template.format(**row)
        except KeyError as exc:
            raise ColumnError(
                f"task {self.name!r}: prompt_template {self.config.prompt_template!r} uses column {exc}, "
                f"which the row does not have (columns: {sorted(row)})"
            ) from None

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        msgs = []
        if self.config.system_prompt:
            msgs.append({"role": "system", "content": self.config.system_prompt})
        msgs.append({"role": "user", "content": self.prompt_text(row)})
        return msgs

    def render(self, row: dict[str, Any], tokenizer: Any) -> str:
        """The prompt string fed to the model (chat template applied when the task is conversational)."""
        if not self.config.chat:
            return (self.config.system_prompt + "\n\n" if self.config.system_prompt else "") + self.prompt_text(row)
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"task {self.name!r} is conversational but the tokenizer has no chat template. Use an "
                "instruct/chat model, or set task.chat=false to feed the raw prompt text."
            )
        return tokenizer.apply_chat_template(self.messages(row), tokenize=False, add_generation_prompt=True)


class RowSampler:
    """Seeded epoch-wise shuffling over the training rows; its position can be saved and restored."""

    def __init__(self, n_rows: int, seed: int) -> None:
        self.n_rows, self.seed = n_rows, seed
        self.epoch, self.position = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n_rows))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []  # type: ignore[var-annotated]
        while len(out) < k:
            if self.position == self.n_rows:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.position])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "n_rows": self.n_rows, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffle()
