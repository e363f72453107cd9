"""``env=python task=gsm8k_python reward=[python_correct,python_tool_use]``: word problems solved with a
``python`` tool that runs the model's code in the code_exec sandbox.

The tool ``python(code)`` runs ``code`` as a fresh Python program in the sandbox the ``code_exec`` reward uses
(:func:`rlvr.sandbox.run_program`: bubblewrap when it is installed, else rlimits; memory,
process, file and output caps; a clean environment; every process it starts killed afterwards; no network in
bubblewrap mode). It returns the program's stdout, cut to ``env.max_output_chars`` characters, or ``error:
...`` (the exception's last line, a timeout, the output cap, a kill). Nothing is kept between calls: every
call is a new interpreter (a variable set in one call is undefined in the next).

Rewards (read the ``episode`` column, i.e. the whole trajectory):

* ``python_correct``: 1.0 when the episode ended with a final answer (a turn without a tool call, the env
  said done) that is right, judged as ``math_answer`` judges it (:func:`rlvr.core.answers.judge`: markers,
  "the answer is", last number...), else 0.0. Only the model's own final message counts: tool output, even
  one that reads "The answer is 18", is never read, and a truncated episode scores 0.
* ``python_tool_use``: partial credit for the format so that GRPO has a signal while the model cannot call
  the tool yet: 1.0 = at least one ``python`` call that ran without error; 0.5 = a call that did not (bad
  JSON, unknown tool, bad arguments, the code raised or timed out); 0.2 = ``<tool_call>`` written without a
  parseable call; 0.0 = no attempt. The best turn of the episode counts (more calls earn nothing more).

The sandbox comes from the shared :mod:`rlvr.sandbox` package (not from the ``code_exec`` plugin: plugins do not
import each other).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core import answers, registry
from rlvr.core.environment import EnvConfig, ToolEnv, validate_env_config
from rlvr.core.episodes import final_answer
from rlvr.core.errors import ConfigError
from rlvr.core.rewards import RewardConfig
from rlvr.core.task import Task, TaskConfig
from rlvr.core.tools import ToolError
from rlvr.sandbox import RunResult, Sandbox, SandboxConfig, run_program

SYSTEM_PROMPT = (
    "Solve the math word problem. Compute with the python tool: write a short program that prints the "
    "numbers you need. Then reply without a tool call and end with: The answer is <number>."
)
MARGIN_S = 0.5  # of env.tool_timeout, kept for the sandbox's clean-up so that its own timeout message comes back
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?::\s.*)?$")


@dataclass
class PythonEnvConfig(EnvConfig):
    max_turns: int = 4
    max_tokens: int = 512
    tool_timeout: float = 5.0  # seconds per call, interpreter start-up and clean-up included
    system_prompt: Optional[str] = SYSTEM_PROMPT  # the tool description is added to it in the rlvr format
    max_output_chars: int = 2000  # stdout shown to the model; longer output is cut, with a note saying so
    max_output_bytes: int = 1 << 16  # stdout (or stderr) beyond this stops the program: an error
    max_code_chars: int = 10_000  # longer code is refused (a tool error)
    memory_mb: int = 256  # memory of the whole run (cgroups) and address space of each process
    max_processes: int = 16  # processes and threads of the whole run
    sandbox: str = "auto"  # auto (bubblewrap when usable) | bwrap (required) | rlimit (see docs/sandbox.md)
    cgroups: bool = True  # whole-run memory / process limits with cgroups when possible
    drop_root: bool = True  # a root trainer runs the code under a uid of its own
    python: str = ""  # interpreter for the code ("" = this one, or /usr's python3 when the sandbox uid cannot)


def sandbox_config(cfg: PythonEnvConfig) -> SandboxConfig:
    """The sandbox limits of the python tool (per call: one run)."""
    return SandboxConfig(
        timeout_s=cfg.tool_timeout,
        startup_grace_s=0.0,
        memory_mb=cfg.memory_mb,
        max_processes=cfg.max_processes,
        max_output_bytes=cfg.max_output_bytes,
        sandbox=cfg.sandbox,
        cgroups=cfg.cgroups,
        drop_root=cfg.drop_root,
        python=cfg.python,
    )


def sandbox_wall(tool_timeout: float) -> float:
    """Seconds the program may run: ``tool_timeout`` less a margin for clean-up (0.5 s, at most a quarter)."""
    return max(tool_timeout - MARGIN_S, 0.75 * tool_timeout)


def error_line(stderr: str) -> Optional[str]:
    """The last line of a traceback that names the exception (``ZeroDivisionError: division by zero``), or the
    last non-indented line of stderr (``sys.exit("message")``); None when stderr has none."""
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln[0].isspace() or ln.startswith(("Traceback (most recent call last)", 'File "')):
            continue
        return ln
    return None


def tool_result(res: RunResult, cfg: PythonEnvConfig, wall: float) -> str:
    """What the model sees for one run: its stdout (cut to ``max_output_chars`` characters, with a note), or
    raises :class:`ToolError` with the reason (timeout, output cap, the exception's last line, a kill)."""
    if res.timed_out:
        raise ToolError(f"the program timed out after {wall:g} s (env.tool_timeout={cfg.tool_timeout:g})")
    if res.output_capped:
        raise ToolError(f"the program printed more than {cfg.max_output_bytes} bytes and was stopped; print less")
    if res.returncode != 0:
        line = error_line(res.stderr.decode("utf-8", errors="replace"))
        if line is not None:
            raise ToolError(line[:500])
        code = res.returncode
        if code is not None and code > 128:
            raise ToolError(
                f"the program was killed (signal {code - 128}): over the memory ({cfg.memory_mb} MB), process "
                f"({cfg.max_processes}) or CPU-time limit"
            )
        raise ToolError(f"the program exited with status {code}")
    out = res.stdout.decode("utf-8", errors="replace")
    if not out.strip():
        return "(no output: print() the values you need)"
    if len(out) > cfg.max_output_chars:
        return out[: cfg.max_output_chars] + f"\n... (output cut: {len(out)} characters, {cfg.max_output_chars} shown)"
    return out


def make_python_tool(sandbox: Sandbox, cfg: PythonEnvConfig) -> Callable[..., str]:
    """The ``python(code)`` tool bound to ``sandbox`` and the limits of ``cfg``."""
    wall = sandbox_wall(cfg.tool_timeout)

    def python(code: str) -> str:
        """Run a Python program and return what it prints (each call is a new program: nothing is kept).

        Args:
            code: a complete Python program that prints its result, e.g. "print(48 / 2 + 48)"
        """
        if not isinstance(code, str):
            raise ToolError(f'"code" must be a string of Python, got {type(code).__name__}')
        if len(code) > cfg.max_code_chars:
            raise ToolError(f"the code has {len(code)} characters; at most {cfg.max_code_chars} are run")
        return tool_result(run_program(sandbox, code, b"", wall), cfg, wall)

    python.example = {"code": "print(48 / 2 + 48)"}  # type: ignore[attr-defined]  # shown in the rlvr tool prompt
    return python


class PythonEnv(ToolEnv):
    """A ToolEnv with one tool, ``python``; the user message is the row's ``question``."""

    def __init__(self, cfg: PythonEnvConfig) -> None:
        validate_env_config(cfg)
        if cfg.max_output_chars < 1 or cfg.max_code_chars < 1 or cfg.max_output_bytes < 1:
            raise ConfigError("env.max_output_chars, env.max_code_chars and env.max_output_bytes must be >= 1")
        self.sandbox = Sandbox(sandbox_config(cfg))  # fails here, before any model loads, when it cannot run
        if self.sandbox.mode == "rlimit":
            warnings.warn(
                "env=python runs the model's code without bubblewrap: the code can read world-readable files "
                "(a dataset copy with the answers included) and use the network. Install bubblewrap "
                f"(apt-get install bubblewrap) or set env.sandbox=bwrap. {self.sandbox.reason}".strip(),
                stacklevel=2,
            )
        super().__init__(cfg, [make_python_tool(self.sandbox, cfg)], cfg.system_prompt)

    def first_messages(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": str(row["question"])}]


@dataclass
class GSM8KPythonConfig(TaskConfig):
    """GSM8K rows (read by ``task=gsm8k``: ``data_dir``, else the Hub cache, else ``$RLVR_GSM8K_DIR``); the
    prompt comes from the env (its system prompt and the question)."""

    data_dir: str = ""  # a folder with train.jsonl and test.jsonl; empty = as task=gsm8k finds it
    hub_id: str = "openai/gsm8k"
    eval_fraction: float = 0.1  # only without a test split
    max_train_rows: int = 0  # 0 = all
    max_eval_rows: int = 0
    seed: int = 0


def is_correct(completion: str, row: dict[str, Any]) -> bool:
    """Held-out check: the final answer equals the row's ``answer`` (as ``math_answer`` judges it)."""
    return answers.judge(completion, row.get("answer"), prompt=str(row.get("question", ""))) is True


def load_gsm8k_python(cfg: GSM8KPythonConfig) -> Task:
    """GSM8K through the registry's ``gsm8k`` task (its loader, not an import of its module)."""
    params = {
        "data_dir": cfg.data_dir,
        "hub_id": cfg.hub_id,
        "eval_fraction": cfg.eval_fraction,
        "max_train_rows": cfg.max_train_rows,
        "max_eval_rows": cfg.max_eval_rows,
        "seed": cfg.seed,
        "system_prompt": None,
    }
    gsm8k = registry.create("task", "gsm8k", **params)
    return Task("gsm8k_python", gsm8k.train_rows, gsm8k.eval_rows, cfg, is_correct=is_correct)


def _need_episodes(name: str, episode: Any) -> None:
    if episode is None:
        raise ValueError(
            f"{name} scores multi-turn episodes: use it with an env (the 'episode' column), e.g. env=python "
            "task=gsm8k_python"
        )


def python_correct_reward(cfg: RewardConfig) -> Any:
    def python_correct(
        completions: list[str],
        episode: Optional[list[Any]] = None,
        answer: Optional[list[Any]] = None,
        question: Optional[list[Any]] = None,
        **kw: Any,
    ) -> list[Optional[float]]:
        _need_episodes("python_correct", episode)
        assert episode is not None
        if answer is None:
            raise ValueError("python_correct needs the task column 'answer' (e.g. task=gsm8k_python)")
        questions = question if question is not None else [None] * len(episode)
        out: list[Optional[float]] = []
        for ep, ans, q in zip(episode, answer, questions):
            text = final_answer(ep) if isinstance(ep, dict) else None
            verdict = answers.judge(text or "", ans, prompt=None if q is None else str(q))
            out.append(None if verdict is None else float(text is not None and verdict is True))
        return out

    return python_correct


def python_tool_use_score(episode: dict[str, Any]) -> float:
    """Partial credit for ``python`` calls over an episode (see the module docstring)."""
    if not isinstance(episode, dict):
        return 0.0
    best = 0.0
    for info in episode.get("infos", []):
        if not isinstance(info, dict):
            continue
        calls, errors = int(info.get("tool_calls", 0) or 0), int(info.get("tool_errors", 0) or 0)
        if calls > errors:
            return 1.0
        if calls:
            best = 0.5
    if best == 0.0:
        said = [m.get("content", "") for m in episode.get("messages", []) if m.get("role") == "assistant"]
        if any("<tool_call>" in str(s) for s in said):
            best = 0.2
    return best


def python_tool_use_reward(cfg: RewardConfig) -> Any:
    def python_tool_use(
        completions: list[str], episode: Optional[list[Any]] = None, **kw: Any
    ) -> list[Optional[float]]:
        _need_episodes("python_tool_use", episode)
        assert episode is not None
        return [python_tool_use_score(ep) for ep in episode]

    return python_tool_use


@hookimpl
def rlvr_envs() -> list[PluginSpec]:
    return [PluginSpec("python", PythonEnv, PythonEnvConfig, "a python tool running the model's code in a sandbox")]


@hookimpl
def rlvr_tasks() -> list[PluginSpec]:
    return [
        PluginSpec(
            "gsm8k_python",
            load_gsm8k_python,
            GSM8KPythonConfig,
            "GSM8K word problems for env=python (the task's rows)",
        )
    ]


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "python_correct",
            python_correct_reward,
            RewardConfig,
            "1 when the episode's final answer (the model's last message, never tool output) is right (env=python)",
        ),
        PluginSpec(
            "python_tool_use",
            python_tool_use_reward,
            RewardConfig,
            "partial credit for python tool calls that run (env=python)",
        ),
    ]
