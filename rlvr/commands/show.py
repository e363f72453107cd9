"""``rlvr show RUN_DIR``: the latest sampled completions of a run, as a table a person can read.

Reads ``completions.jsonl`` (written by the jsonl logger: per step, a sample of prompts with
their completion, answer, each reward and the advantage) and prints the samples of the last
step (``--last K`` for the last K steps, ``--step N`` for one step).

Multi-turn runs (``env=...``: each sample carries an ``episode``) print each episode as its turns, one line
label per message (:func:`render_episodes`): the assistant's text, each tool call it made (name and arguments),
each tool result or tool error, the environment's feedback, the stop reason, turns, tool calls and errors, the
rewards and the advantage. Every text goes through :func:`clean` (control and bidirectional characters shown).
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
# the step line of a multi-turn run: (metric, label, shown as a percentage)
EPISODE_HEAD = (
    ("env/turns/mean", "turns/episode", False),
    ("env/tool_calls/mean", "tool calls/episode", False),
    ("env/tool_error_rate", "tool errors", True),
)


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


LABEL_WIDTH = 10  # "tool error" is the longest message label
SYSTEM_LINES = 2  # lines of the system message (tool descriptions) unless --full


def _call_text(call: dict[str, Any]) -> tuple[str, bool]:
    """(one tool call as ``name {arguments as JSON}``, whether it could not be parsed)."""
    if call.get("error"):
        name = f"{call['name']}: " if call.get("name") else ""
        return f"{name}not a valid call ({call['error']})", True
    args = json.dumps(call.get("arguments", {}), ensure_ascii=False, sort_keys=True, default=str)
    return f"{call.get('name', '?')} {args}", False


def episode_lines(episode: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) per displayed line group of an episode: every message in order, and after each assistant turn
    the tool calls the environment parsed from it (``infos[k]["calls"]`` belongs to the k-th assistant turn the
    environment answered; a turn cut by a token limit has none). Labels: ``system``, ``user`` (the task),
    ``assistant``, ``tool call``, ``bad call``, ``tool`` (a result), ``tool error`` (a result starting with
    ``error:``, what ToolEnv sends back for a failed call), ``env`` (a user-role message after the first turn:
    the environment's feedback)."""
    infos = [i for i in episode.get("infos") or [] if isinstance(i, dict)]
    out: list[tuple[str, str]] = []
    answered = 0  # assistant turns the environment answered so far
    for m in episode.get("messages") or []:
        if not isinstance(m, dict):
            continue
        role, text = str(m.get("role", "?")), str(m.get("content", ""))
        if role == "assistant":
            cut = m.get("truncated")
            out.append(("assistant", text + (f" [cut: {episode.get('stop', 'token limit')}]" if cut else "")))
            if not cut and answered < len(infos):
                for call in infos[answered].get("calls") or []:
                    if isinstance(call, dict):
                        line, bad = _call_text(call)
                        out.append(("bad call" if bad else "tool call", line))
                answered += 1
        elif role == "tool":
            name = m.get("name")
            error = text.startswith("error:")
            shown = f"{name}: {text}" if name and name != "error" and not error else text
            out.append(("tool error" if error else "tool", shown))
        elif role == "user" and any(label == "assistant" for label, _ in out):
            out.append(("env", text))
        else:
            out.append((role, text))
    return out


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def render_episodes(samples: list[dict[str, Any]], width: int = 120, max_lines: int = 6) -> str:
    """Multi-turn samples: per sample a head line (answer, stop reason, turns, tool calls and errors, each reward,
    advantage) and the episode's messages, one label per line group, wrapped to ``width``."""
    text_w = max(20, width - LABEL_WIDTH - 5)
    rule = "-" * min(width, LABEL_WIDTH + 3 + text_w)
    out = []
    for i, s in enumerate(samples):
        ep = s.get("episode") if isinstance(s.get("episode"), dict) else {}
        calls, errors = int(ep.get("tool_calls", 0) or 0), int(ep.get("tool_errors", 0) or 0)
        stop = str(ep.get("stop", "?")) + (" (truncated)" if ep.get("truncated") else "")
        head = [
            f"#{i}",
            f"answer {clean(s.get('answer', ''))}",
            f"stop {clean(stop)}",
            plural(int(ep.get("turns", 0) or 0), "turn"),
            f"{plural(calls, 'tool call')}, {plural(errors, 'error')}",
        ]
        head += [f"{clean(k)} {_fmt(v)}" for k, v in (s.get("rewards") or {}).items()]
        head.append(f"adv {_fmt(s.get('advantage'))}")
        out.append(rule)
        out.extend(textwrap.wrap(" · ".join(head), max(20, width), subsequent_indent="    ") or [""])
        for label, text in episode_lines(ep):
            limit = SYSTEM_LINES if label == "system" and max_lines else max_lines
            for k, line in enumerate(_wrap(clean(text), text_w, limit)):
                out.append(f"  {(label if k == 0 else ''):<{LABEL_WIDTH}} | {line}")
    out.append(rule)
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
        samples = [r for r in records if int(r.get("step", 0)) == st]
        if any(isinstance(r.get("episode"), dict) for r in samples):  # a multi-turn run (env=...)
            for key, label, pct in EPISODE_HEAD:
                v = m.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    head += f" · {label} {100 * v:.0f} %" if pct else f" · {label} {v:.2f}"
            blocks.append(head + "\n" + render_episodes(samples, width, max_lines))
        else:
            blocks.append(head + "\n" + render_table(samples, width, max_lines))
    return "\n\n".join(blocks)
