"""``rlvr show RUN_DIR``: the latest sampled completions of a run, as a table a person can read.

Reads ``completions.jsonl`` (written by the jsonl logger: per step, a sample of prompts with
their completion, answer, each reward and the advantage) and prints the samples of the last
step (``--last K`` for the last K steps, ``--step N`` for one step).
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any, Optional

from rlvr.core.errors import DataError, PathNotFoundError

SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>|</?s>|\[/?INST\]")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# bidirectional controls reorder the text around them on a terminal (U+202E turns "abc" into "cba"), so a
# completion could display as something it is not: each is shown as <U+XXXX>
BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
HIT_MAX_TOKENS = "[hit max_new_tokens]"  # the completion was cut by the engine's token limit, not by this display


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a jsonl file; blank lines and a line torn by a crash are skipped."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def check_run_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise PathNotFoundError(
            f"run directory {str(path)!r} does not exist (give the directory `rlvr train` "
            "wrote into, e.g. outputs/<date>/<time>)"
        )
    if not (path / "metrics.jsonl").is_file() and not (path / "completions.jsonl").is_file():
        raise PathNotFoundError(
            f"{str(path)!r} has neither metrics.jsonl nor completions.jsonl: is it an rlvr run "
            "directory (with logger=[jsonl])?"
        )
    return path


def prompt_question(prompt: str) -> str:
    """The user's part of a rendered chat prompt (the last user turn), without template markup."""
    text = prompt
    if "<|im_start|>" in text:  # ChatML: keep the last user message
        turns = [t for t in text.split("<|im_start|>") if t.strip()]
        users = [t for t in turns if t.startswith("user")]
        if users:
            text = users[-1][len("user") :]
    elif "<|start_header_id|>" in text:  # Llama 3
        parts = text.split("<|start_header_id|>user<|end_header_id|>")
        text = parts[-1] if len(parts) > 1 else text
    text = SPECIAL.sub(" ", text)
    return text.strip()


def clean(text: Any) -> str:
    """Printable text: control characters shown as '·', bidirectional controls as ``<U+202E>``, tabs as spaces."""
    text = BIDI.sub(lambda m: f"<U+{ord(m.group()):04X}>", str(text))
    return CONTROL.sub("·", text.replace("\t", "    ").replace("\r", ""))


def _wrap(text: str, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    for para in text.split("\n"):
        lines.extend(textwrap.wrap(para, width, replace_whitespace=False, drop_whitespace=True) or [""])
    while lines and not lines[-1].strip():
        lines.pop()
    lines = lines or [""]
    if max_lines and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        lines[-1] = (last[: max(0, width - 1)] + "…") if len(last) >= width else last + "…"
    return lines


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f"{v:+.2f}" if abs(v) < 1e4 else f"{v:+.2e}"
    return str(v)


def render_table(samples: list[dict[str, Any]], width: int = 120, max_lines: int = 6) -> str:
    """A boxed text table: one row per sample with prompt, completion, answer, each reward, advantage."""
    reward_names: list[str] = []
    for s in samples:
        reward_names.extend(k for k in (s.get("rewards") or {}) if k not in reward_names)
    num_cols = [("#", 3)] + [(n, max(6, len(n))) for n in reward_names] + [("adv", 6)]
    fixed = sum(w for _, w in num_cols) + 3 * (len(num_cols) + 3) + 1
    free = max(30, width - fixed)
    text_w = {"prompt": max(10, int(free * 0.34)), "completion": max(12, int(free * 0.48))}
    text_w["answer"] = max(6, free - text_w["prompt"] - text_w["completion"])
    cols = [
        num_cols[0],
        ("prompt", text_w["prompt"]),
        ("completion", text_w["completion"]),
        ("answer", text_w["answer"]),
    ] + num_cols[1:]
    sep = "+" + "+".join("-" * (w + 2) for _, w in cols) + "+"

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w)[:w] for c, (_, w) in zip(cells, cols)) + " |"

    out = [sep, line([name for name, _ in cols]), sep.replace("-", "=")]
    for i, s in enumerate(samples):
        rewards = s.get("rewards") or {}
        cells = [
            [str(i)],
            _wrap(clean(prompt_question(str(s.get("prompt", "")))), text_w["prompt"], max_lines),
            _wrap(
                clean(s.get("completion", "")) + (f" {HIT_MAX_TOKENS}" if s.get("truncated") else ""),
                text_w["completion"],
                max_lines,
            ),
            _wrap(clean(s.get("answer", "")), text_w["answer"], max_lines),
        ]
        cells += [[_fmt(rewards.get(n))] for n in reward_names] + [[_fmt(s.get("advantage"))]]
        for k in range(max(len(c) for c in cells)):
            out.append(line([c[k] if k < len(c) else "" for c in cells]))
        out.append(sep)
    return "\n".join(out)


def show(run_dir: str | Path, step: Optional[int] = None, last: int = 1, width: int = 0, max_lines: int = 6) -> str:
    """The text ``rlvr show`` prints."""
    path = check_run_dir(run_dir)
    records = read_records(path / "completions.jsonl")
    if not records:
        return f"{path}: no completions logged yet (completions.jsonl is empty or missing)."
    steps = sorted({int(r.get("step", 0)) for r in records})
    if step is not None:
        if step not in steps:
            raise DataError(
                f"step {step} has no logged completions in {path}; logged steps: "
                f"{steps[0]}..{steps[-1]} ({len(steps)} steps)"
            )
        chosen = [step]
    else:
        chosen = steps[-max(1, last) :]
    metrics = {int(m.get("step", 0)): m for m in read_records(path / "metrics.jsonl")}
    width = width or shutil.get_terminal_size((120, 24)).columns
    blocks = []
    for st in chosen:
        m = metrics.get(st, {})
        head = f"step {st}"
        if "reward/mean" in m:
            head += f" · reward {m['reward/mean']:.3f} ± {m.get('reward/std', 0.0):.3f}"
        if "completion_length/mean" in m:
            head += f" · length {m['completion_length/mean']:.1f}"
        blocks.append(
            head + "\n" + render_table([r for r in records if int(r.get("step", 0)) == st], width, max_lines)
        )
    return "\n\n".join(blocks)
