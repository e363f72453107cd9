"""``task=hf``: any dataset the Hugging Face ``datasets`` library loads.

``task.path`` is one of:

- a Hub id (``openai/gsm8k``; ``task.config_name=main``). When the dataset is in the local
  ``datasets`` cache it is read from there without touching the network; otherwise it is
  downloaded (``HF_HUB_OFFLINE=1`` forbids that and fails with a clear message);
- a local data file: ``.parquet``, ``.csv``, ``.tsv``, ``.json`` / ``.jsonl``, ``.arrow`` (a glob works too);
- a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a folder of data files.

Rows become prompts through ``task.prompt_template`` (formatted with the row's columns, after
``task.columns`` renamed them) or through a chat ``task.messages_column`` (a list of
``{"role", "content"}``; trailing assistant turns, the reference reply, are not part of the prompt).
Every column of a row reaches the rewards as a keyword argument (``task.keep_columns`` narrows that).
``task.filter`` keeps rows whose columns hold the given values; ``task.shuffle`` shuffles with
``task.seed`` (the run's ``trainer.seed`` by default); ``task.streaming`` reads only the first
``task.max_train_rows`` rows of a large dataset instead of preparing all of it.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Any, List, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import DataError
from rlvr.core.hfdata import load_split
from rlvr.core.task import Task, TaskConfig, last_number, same_number


@dataclass
class HFTaskConfig(TaskConfig):
    path: str = ""  # Hub id, data file (parquet/csv/json/jsonl/arrow), save_to_disk directory, or data folder
    config_name: Optional[str] = None  # the dataset's configuration (load_dataset's second argument), e.g. main
    split: str = "train"
    eval_split: Optional[str] = None  # default: hold out eval_fraction of the training split
    eval_fraction: float = 0.1
    columns: Any = None  # a mapping, rename map {dataset column: name used by rlvr}
    messages_column: str = ""  # a chat column (list of {role, content}) used as the prompt instead of prompt_template
    keep_columns: List[str] = field(default_factory=list)  # columns passed to rewards (empty = all)
    filter: Any = None  # a mapping {column: value or [allowed values]}
    shuffle: bool = True
    seed: int = 0  # shuffling and the held-out split (hf.yaml sets it to trainer.seed)
    max_train_rows: int = 0  # 0 = all (streaming: required)
    max_eval_rows: int = 0
    streaming: bool = False
    shuffle_buffer: int = 10_000  # streaming: rows in the shuffle buffer
    cache_dir: Optional[str] = None  # the datasets cache (default: $HF_DATASETS_CACHE)
    revision: Optional[str] = None


def _matches(row: dict[str, Any], where: dict[str, Any]) -> bool:
    for col, want in where.items():
        allowed = list(want) if isinstance(want, (list, tuple)) else [want]
        if row.get(col) not in allowed:
            return False
    return True


def prepare_rows(rows: list[dict[str, Any]], cfg: HFTaskConfig, source: str) -> list[dict[str, Any]]:
    """Rename, filter, keep columns; checks every row and names the first bad one by its index."""
    out = []
    for i, raw in enumerate(rows):
        missing = [c for c in cfg.columns if c not in raw]
        if missing:
            raise DataError(
                f"{source}: row {i} has no column {missing[0]!r} named in task.columns (columns: {sorted(raw)})"
            )
        row = {cfg.columns.get(k, k): v for k, v in raw.items()}
        missing_f = [c for c in cfg.filter if c not in row]
        if missing_f:
            raise DataError(
                f"{source}: task.filter uses column {missing_f[0]!r}, which row {i} does not have "
                f"(columns: {sorted(row)})"
            )
        if not _matches(row, cfg.filter):
            continue
        if cfg.keep_columns:
            absent = [c for c in cfg.keep_columns if c not in row]
            if absent:
                raise DataError(
                    f"{source}: row {i} has no column {absent[0]!r} named in task.keep_columns "
                    f"(columns: {sorted(row)})"
                )
            keep = set(cfg.keep_columns) | {cfg.answer_column}
            keep |= {cfg.messages_column} if cfg.messages_column else set()
            keep |= set(template_fields(cfg.prompt_template)) if not cfg.messages_column else set()
            row = {k: v for k, v in row.items() if k in keep}
        check_row(row, cfg, source, i)
        out.append(row)
    return out


def template_fields(template: str) -> list[str]:
    """The column names a ``str.format`` template uses (``"{question} ({level})"`` -> ``["question", "level"]``)."""
    return [f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f]


def check_row(row: dict[str, Any], cfg: HFTaskConfig, source: str, i: int) -> None:
    """Raise on a row the task cannot use: missing answer / prompt columns, wrong types."""
    col = cfg.answer_column
    if col not in row:
        raise DataError(
            f"{source}: row {i} has no {col!r} column (columns: {sorted(row)}); set "
            "task.answer_column, or rename a column with task.columns={source_name: answer}"
        )
    if row[col] is None:
        raise DataError(f"{source}: row {i} has an empty (null) {col!r} column")
    if cfg.messages_column:
        msgs = row.get(cfg.messages_column)
        if cfg.messages_column not in row:
            raise DataError(
                f"{source}: row {i} has no messages column {cfg.messages_column!r} (columns: {sorted(row)})"
            )

        def ok(m: Any) -> bool:
            return isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)

        if not isinstance(msgs, list) or not msgs or not all(ok(m) for m in msgs):
            raise DataError(
                f"{source}: row {i}: column {cfg.messages_column!r} must be a non-empty list of "
                f"{{'role': str, 'content': str}} messages, got {str(msgs)[:200]}"
            )
        if not prompt_messages(msgs):
            raise DataError(
                f"{source}: row {i}: column {cfg.messages_column!r} has only assistant messages; "
                "a prompt needs at least one user message"
            )
        return
    for name in template_fields(cfg.prompt_template):
        if name not in row:
            raise DataError(
                f"{source}: row {i} has no column {name!r}, which task.prompt_template "
                f"{cfg.prompt_template!r} uses (columns: {sorted(row)}); set task.prompt_template or "
                "task.columns"
            )
        if row[name] is None or isinstance(row[name], (dict, list, bytes)):
            raise DataError(
                f"{source}: row {i}: column {name!r} used by task.prompt_template is "
                f"{'null' if row[name] is None else type(row[name]).__name__}, not text; a chat column "
                "goes in task.messages_column"
            )


def prompt_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation without its trailing assistant turns (the reference reply is not part of the prompt)."""
    end = len(messages)
    while end and messages[end - 1]["role"] == "assistant":
        end -= 1
    return [{"role": m["role"], "content": m["content"]} for m in messages[:end]]


def read_rows(cfg: HFTaskConfig, split: str, limit: int) -> list[dict[str, Any]]:
    """``limit`` rows of ``split`` (0 = all) as plain dicts; shuffled with ``cfg.seed`` when ``cfg.shuffle``."""
    ds = load_split(cfg, split)
    source = f"task.path={cfg.path!r} split {split!r}"
    if cfg.streaming:
        if limit <= 0:
            raise DataError(
                "task.streaming=true reads the first task.max_train_rows rows (and task.max_eval_rows "
                "of task.eval_split); set them, e.g. task.max_train_rows=10000"
            )
        if cfg.shuffle:
            ds = ds.shuffle(seed=cfg.seed, buffer_size=cfg.shuffle_buffer)
        rows = []
        for row in ds:
            rows.append(dict(row))
            if len(rows) >= limit:
                break
    else:
        if cfg.shuffle:
            ds = ds.shuffle(seed=cfg.seed)
        if limit and len(ds) > limit:
            ds = ds.select(range(limit))
        rows = [dict(r) for r in ds]
    if not rows:
        raise DataError(f"{source} is empty")
    return rows


def make_rows(cfg: HFTaskConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out rows) after loading, renaming, filtering and checking."""
    source = f"task.path={cfg.path!r}"
    if not 0.0 < cfg.eval_fraction < 1.0 and not cfg.eval_split:
        raise DataError(f"task.eval_fraction must be in (0, 1), got {cfg.eval_fraction}")
    if cfg.eval_split:
        train = prepare_rows(read_rows(cfg, cfg.split, cfg.max_train_rows), cfg, f"{source} split {cfg.split!r}")
        held = prepare_rows(
            read_rows(cfg, cfg.eval_split, cfg.max_eval_rows), cfg, f"{source} split {cfg.eval_split!r}"
        )
    else:
        need = cfg.max_train_rows + max(cfg.max_eval_rows, 1) if cfg.max_train_rows else 0
        rows = prepare_rows(read_rows(cfg, cfg.split, need), cfg, f"{source} split {cfg.split!r}")
        if not cfg.shuffle:  # the held-out rows are a seeded sample either way
            rows = list(rows)
            random.Random(cfg.seed).shuffle(rows)
        n_eval = cfg.max_eval_rows or max(1, int(len(rows) * cfg.eval_fraction))
        n_eval = min(n_eval, len(rows) - 1)  # held out: max_eval_rows when set, else eval_fraction
        held, train = rows[:n_eval], rows[n_eval:]
        if cfg.max_train_rows:
            train = train[: cfg.max_train_rows]
    if not train:
        raise DataError(
            f"{source} split {cfg.split!r} has no rows left"
            + (f" after task.filter={dict(cfg.filter)}" if cfg.filter else "")
            + "; check task.filter / task.split"
        )
    return train, held


class HFTask(Task):
    """A task whose prompt is either the template or the row's chat messages column."""

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        col = getattr(self.config, "messages_column", "")
        if not col:
            return super().messages(row)
        msgs = prompt_messages(row[col])
        if self.config.system_prompt and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": self.config.system_prompt}, *msgs]
        return msgs

    def prompt_text(self, row: dict[str, Any]) -> str:
        col = getattr(self.config, "messages_column", "")
        if not col:
            return super().prompt_text(row)
        return "\n\n".join(m["content"] for m in prompt_messages(row[col]) if m["role"] != "system")

    def render(self, row: dict[str, Any], tokenizer: Any) -> str:
        if self.config.chat or not getattr(self.config, "messages_column", ""):
            return super().render(row, tokenizer)
        return "\n\n".join(m["content"] for m in self.messages(row))


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"task.{key} must be a mapping like task.{key}={{a:b}}, got {type(value).__name__} {value!r}")
    return {str(k): v for k, v in value.items()}


def make_hf(cfg: HFTaskConfig) -> Task:
    cfg.columns = {k: str(v) for k, v in _mapping(cfg.columns, "columns").items()}
    cfg.filter = _mapping(cfg.filter, "filter")
    train, held = make_rows(cfg)
    col = cfg.answer_column
    return HFTask(
        "hf",
        train,
        held,
        cfg,
        is_correct=lambda completion, row: (
            same_number(last_number(completion), row[col]) or completion.strip() == str(row[col]).strip()
        ),
    )


@hookimpl
def rlvr_tasks() -> list[PluginSpec]:
    return [
        PluginSpec(
            "hf",
            make_hf,
            HFTaskConfig,
            "any Hugging Face `datasets` dataset: Hub id (cache offline), parquet/csv/json/arrow, save_to_disk",
        )
    ]
