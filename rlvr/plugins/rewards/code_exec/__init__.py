"""``reward=code_exec`` / ``verifier=code_exec``: run the completion's code against the row's tests.

The last fenced code block (```` ```python ```` or a bare ```` ``` ````) runs in a sandbox
against the ``tests`` column of its row; the reward is the fraction of tests that pass
(``fail_score + fraction * (pass_score - fail_score)``), the verifier passes when all do.

Verdicts are decided here, never in the sandbox: every assert is rewritten (``transform.py``) so
that the sandbox only evaluates the non-constant operands and sends them back as strict JSON of
built-in values (``harness.py``, over a channel whose writer pid the kernel attests,
``rlvr/sandbox/channel.py``); constant operands (the expected values) never enter the sandbox; the
comparison happens in ``verdict.py``. stdin → stdout tests compare the program's output here as well.
Process control, limits and clean-up: the shared :mod:`rlvr.sandbox` package (``sandbox.py``,
``supervisor.py``, ``cgroups.py``). Everything enforced, per sandbox mode, and the residual risks:
docs/sandbox.md.

Modules: ``suite`` (tests and code blocks), ``transform`` (assert rewriting), ``verdict``
(decoding and comparing), ``harness`` (runs inside the sandbox); from :mod:`rlvr.sandbox`: the result
channel, processes and limits.
"""

from __future__ import annotations

import json
import marshal
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ColumnError
from rlvr.core.rewards import VerifierConfig, verifier_as_reward
from rlvr.sandbox import ResultChannel, Sandbox, SandboxConfig, compiled, run_program

from .suite import TestSuite, extract_code, parse_tests, same_output
from .transform import TestsNotSupported, transform
from .verdict import check_passes, duplicate_count, unplain_count

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py")

__all__ = [
    "CodeExecConfig",
    "CodeExecutor",
    "HARNESS",
    "TestReport",
    "TestSuite",
    "TestsNotSupported",
    "extract_code",
    "parse_tests",
    "run_tests",
    "same_output",
    "transform",
]


@dataclass
class CodeExecConfig(SandboxConfig, VerifierConfig):
    """Limits apply per run (one run per completion for assert tests, per test for stdin tests).

    The sandbox's limits are the fields of :class:`rlvr.sandbox.SandboxConfig`, with the same defaults:
    ``timeout_s`` (5.0; here: wall clock per test, i.e. each assert execution, each set-up step, each
    stdin→stdout run), ``startup_grace_s``, ``memory_mb``, ``max_processes``, ``max_output_bytes``,
    ``max_file_mb``, ``max_disk_mb``, ``max_open_files``, ``sandbox``, ``cgroups``, ``drop_root``, ``python``.
    """

    tests_column: str = "tests"
    total_timeout_s: float = 30.0  # wall clock cap for all the asserts of one completion
    max_result_bytes: int = 1 << 24  # assert values sent back in all; more fails the run
    max_workers: int = 2  # runs in parallel
    allow_unfenced: bool = False  # no code block: run the whole completion (else it scores fail_score)
    partial: bool = True  # reward = fraction of tests passed; false: pass_score only when all pass


@dataclass
class TestReport:
    """Outcome of one completion's tests. ``violation`` (the harness protocol was broken: a forked
    child wrote, a second hello, tampering...) fails every test; ``unplain`` counts values that
    were not plain built-ins (each failed its test); ``duplicates`` top-level asserts reported more
    than once (each failed)."""

    passed: int
    total: int
    detail: str = ""
    violation: str = ""
    unplain: int = 0
    duplicates: int = 0

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def run_tests(code: str, suite: TestSuite, sandbox: Sandbox) -> TestReport:
    """Run ``code`` against ``suite`` in ``sandbox`` (made from a :class:`CodeExecConfig`); verdicts decided
    here."""
    cfg = sandbox.cfg
    if not isinstance(cfg, CodeExecConfig):
        raise TypeError(f"run_tests needs a Sandbox made from a CodeExecConfig, got {type(cfg).__name__}")
    if suite.kind == "assert":
        program = suite.program
        slot_counts = [c.slots for c in program.checks]
        plan = marshal.dumps(
            {
                "timeout": float(cfg.timeout_s),
                "steps": program.steps,
                "slots": slot_counts,
                "max_bytes": int(cfg.max_result_bytes),
            },
            4,
        )
        units = len(program.steps) + len(program.checks) + 1
        wall = min(cfg.total_timeout_s, cfg.timeout_s * units) + cfg.startup_grace_s
        path, harness = compiled(sandbox.python, HARNESS)
        script = "rlvr_harness.pyc" if path.endswith(".pyc") else "rlvr_harness.py"
        files = {"solution.py": code.encode("utf-8", errors="replace"), script: harness}
        channel = ResultChannel(cfg.max_result_bytes, slot_counts)
        try:
            res = sandbox.run(script, [], files, plan, wall, channel=channel)
        finally:
            channel.close()
        log = channel.log
        total = suite.count
        if log.violation:
            return TestReport(
                0,
                total,
                f"failed closed: {log.violation}",
                violation=log.violation,
                unplain=unplain_count(log.executions),
            )
        passed = sum(check_passes(check, log.executions.get(i, [])) for i, check in enumerate(program.checks))
        detail = (
            "timed out"
            if res.timed_out
            else "output over the cap"
            if res.output_capped
            else f"the solution failed to load ({log.load_error})"
            if log.load_error
            else ""
        )
        return TestReport(
            passed,
            total,
            detail,
            unplain=unplain_count(log.executions),
            duplicates=duplicate_count(program.checks, log.executions),
        )
    passed = 0
    details = []
    for i, (stdin, expected) in enumerate(suite.cases):
        res = run_program(sandbox, code, stdin.encode(), cfg.timeout_s + cfg.startup_grace_s)
        ok = (
            not res.timed_out
            and not res.output_capped
            and res.returncode == 0
            and same_output(res.stdout.decode(errors="replace"), expected)
        )
        passed += ok
        if not ok and len(details) < 3:
            why = (
                "timed out"
                if res.timed_out
                else "output over the cap"
                if res.output_capped
                else f"exit {res.returncode}"
                if res.returncode
                else "wrong output"
            )
            details.append(f"case {i}: {why}")
    return TestReport(passed, len(suite.cases), "; ".join(details))


class CodeExecutor:
    """Scores completions: one report (or None: no tests) per completion, runs in parallel."""

    def __init__(self, cfg: CodeExecConfig):
        self.cfg = cfg
        self.sandbox = Sandbox(cfg)
        self._suites: dict[str, Optional[TestSuite]] = {}
        self._lock = threading.Lock()
        self.last_reports: list[Optional[TestReport]] = []  # the reports of the last call (for monitors)

    def suite(self, tests: Any) -> Optional[TestSuite]:
        """Parsed (and rewritten) tests, cached per distinct value (a row's G completions share it)."""
        try:
            key = json.dumps(tests, sort_keys=True)
        except (TypeError, ValueError):
            return parse_tests(tests)
        with self._lock:
            if key not in self._suites:
                if len(self._suites) > 4096:
                    self._suites.clear()
                self._suites[key] = parse_tests(tests)
            return self._suites[key]

    def reports(self, completions: list[str], columns: dict[str, list[Any]]) -> list[Optional[TestReport]]:
        if self.cfg.tests_column not in columns:
            raise ColumnError(
                f"code_exec needs the task column {self.cfg.tests_column!r} (set tests_column); "
                f"columns given: {sorted(columns)}"
            )
        jobs: list[Callable[[], Optional[TestReport]]] = []
        for i, (text, tests) in enumerate(zip(completions, columns[self.cfg.tests_column])):
            try:
                suite = self.suite(tests)
            except ValueError as exc:
                raise type(exc)(f"code_exec: row {i}: {exc}") from None
            jobs.append(self._job(text, suite))
        if self.cfg.max_workers <= 1 or len(jobs) <= 1:
            out = [job() for job in jobs]
        else:
            with ThreadPoolExecutor(max_workers=self.cfg.max_workers) as pool:
                out = list(pool.map(lambda job: job(), jobs))
        self.last_reports = out
        return out

    def fail_closed_counts(self) -> dict[str, int]:
        """Signals of the last call for a reward-hacking monitor: runs that broke the result protocol
        (a forked child or another process wrote, tampering, ...), values that were not plain
        built-ins, and top-level asserts reported more than once."""
        reports = [r for r in self.last_reports if r is not None]
        return {
            "violations": sum(bool(r.violation) for r in reports),
            "unplain_values": sum(r.unplain for r in reports),
            "duplicate_reports": sum(r.duplicates for r in reports),
        }

    def _job(self, text: str, suite: Optional[TestSuite]) -> Callable[[], Optional[TestReport]]:
        def job() -> Optional[TestReport]:
            if suite is None or suite.count == 0:
                return None
            code = extract_code(text, self.cfg.allow_unfenced)
            if code is None:
                return TestReport(0, suite.count, "no code block")
            return run_tests(code, suite, self.sandbox)

        return job


def make_code_exec_verifier(cfg: CodeExecConfig) -> Callable[..., list[Optional[bool]]]:
    executor = CodeExecutor(cfg)

    def code_exec(completions: list[str], **columns: Any) -> list[Optional[bool]]:
        return [None if r is None else r.passed == r.total for r in executor.reports(completions, columns)]

    code_exec.executor = executor  # type: ignore[attr-defined]
    return code_exec


def make_code_exec_reward(cfg: CodeExecConfig) -> Callable[..., list[Optional[float]]]:
    if not cfg.partial:
        return verifier_as_reward(make_code_exec_verifier(cfg), cfg.pass_score, cfg.fail_score)
    executor = CodeExecutor(cfg)

    def code_exec(completions: list[str], **columns: Any) -> list[Optional[float]]:
        return [
            None if r is None else cfg.fail_score + r.fraction * (cfg.pass_score - cfg.fail_score)
            for r in executor.reports(completions, columns)
        ]

    code_exec.executor = executor  # type: ignore[attr-defined]
    return code_exec


DESCRIPTION = "runs the completion's code block against the row's tests in a sandbox (bubblewrap when installed)"


@hookimpl
def rlvr_verifiers() -> list[PluginSpec]:
    return [PluginSpec("code_exec", make_code_exec_verifier, CodeExecConfig, DESCRIPTION + "; passes when all pass")]


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [PluginSpec("code_exec", make_code_exec_reward, CodeExecConfig, DESCRIPTION + "; score = fraction passed")]
