"""``reward=code_exec`` / ``verifier=code_exec``: run the completion's code against the row's tests.

The last fenced code block (```` ```python ```` or a bare ```` ``` ````) is run by Python in a
separate process against the ``tests`` column of its row; the reward is the fraction of tests that
pass (``fail_score + fraction * (pass_score - fail_score)``), the verifier passes when all do.

Tests (one value of the ``tests`` column, or a JSON string holding it):

- assert tests: a string of Python statements (each top-level ``assert`` is one test, other
  statements are set-up run in order), or a list of such strings, or ``{"asserts": [...]}``;
- stdin → stdout tests: ``[{"input": "1 2\\n", "output": "3\\n"}, ...]`` or
  ``{"inputs": [...], "outputs": [...]}`` (the APPS layout); the program's stdout is compared
  with the expected output line by line, trailing whitespace ignored; it must also exit with 0.

The sandbox (see the README, "code_exec's sandbox"):

- always: a fresh temporary directory as working directory and HOME, deleted afterwards; a clean
  environment; a new session; a wall-clock timeout; rlimits on CPU time, address space
  (memory), file size, open files, process count and core dumps; stdout/stderr capped; every
  process the code started is killed afterwards;
- run as root: the code runs under an unused uid of its own (one per concurrent run), so it
  cannot signal the trainer, can write only where everyone may (world-writable places such as
  /tmp), and the process-count limit is
  enforced (the kernel ignores RLIMIT_NPROC for root); all that uid's processes are killed after;
- with bubblewrap (``bwrap`` on PATH, Debian package ``bubblewrap``): new user, pid, network,
  ipc and uts namespaces; only the system directories and the interpreter are visible, read-only;
  the temporary directory is the only writable place; no network (loopback of its own only);
  the trainer's processes are invisible; the whole namespace dies with the run.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from rlvr.core.errors import ColumnError, ConfigError, DataError
from rlvr import PluginSpec, hookimpl
from rlvr.core.rewards import VerifierConfig, verifier_as_reward

SANDBOX_MODES = ("auto", "bwrap", "rlimit")


@dataclass
class CodeExecConfig(VerifierConfig):
    """Limits apply per run (one run per completion for assert tests, per test for stdin tests)."""

    tests_column: str = "tests"
    timeout_s: float = 5.0  # wall clock per test (each assert, or each stdin→stdout run)
    total_timeout_s: float = 30.0  # wall clock cap for all the asserts of one completion
    startup_grace_s: float = 2.0  # extra wall clock for the interpreter to start
    memory_mb: int = 512  # address-space limit (RLIMIT_AS) of every process
    max_processes: int = 32  # process/thread limit (RLIMIT_NPROC) of the run
    max_output_bytes: int = 1 << 20  # stdout (and stderr) kept; more ends the run
    max_file_mb: int = 16  # largest file the code may write (RLIMIT_FSIZE)
    max_open_files: int = 64  # RLIMIT_NOFILE
    sandbox: str = "auto"  # auto (bubblewrap when usable) | bwrap (required) | rlimit (never bubblewrap)
    drop_root: bool = True  # when the trainer runs as root, run the code under a uid of its own
    python: str = ""  # interpreter for the code; "" = this one, or python3 from /usr when the sandbox uid cannot run it
    max_workers: int = 2  # runs in parallel
    allow_unfenced: bool = False  # no code block: run the whole completion (else it scores fail_score)
    partial: bool = True  # reward = fraction of tests passed; false: pass_score only when all pass


# ----------------------------------------------------------------------------- code and tests

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
PYTHON_TAGS = ("", "python", "py", "python3")


def extract_code(text: str, allow_unfenced: bool = False) -> Optional[str]:
    """The last fenced Python (or untagged) code block of ``text``; the whole text when there is
    none and ``allow_unfenced``; else None."""
    blocks = [body for lang, body in _FENCE_RE.findall(text or "") if lang.lower() in PYTHON_TAGS]
    if blocks:
        return blocks[-1]
    if allow_unfenced and text and text.strip():
        return text
    return None


@dataclass
class TestSuite:
    """Parsed tests of one row: ``kind`` is "assert" or "io"."""

    kind: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # assert: ("setup" | "test", source)
    cases: list[tuple[str, str]] = field(default_factory=list)  # io: (stdin, expected stdout)

    @property
    def count(self) -> int:
        return sum(1 for k, _ in self.steps if k == "test") if self.kind == "assert" else len(self.cases)


def _assert_steps(source: str) -> list[tuple[str, str]]:
    try:
        module = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"tests are not valid Python: {exc}") from None
    lines = source.splitlines(keepends=True)
    steps = []
    for node in module.body:
        segment = "".join(lines[node.lineno - 1:node.end_lineno])  # whole lines: keeps decorators' context simple
        steps.append(("test" if isinstance(node, ast.Assert) else "setup", textwrap.dedent(segment)))
    return steps


def parse_tests(value: Any) -> Optional[TestSuite]:
    """A row's tests as a :class:`TestSuite`; None when the row has none (not applicable)."""
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return None
        if stripped[0] in "[{":
            try:
                return parse_tests(json.loads(stripped))
            except json.JSONDecodeError:
                pass
        return TestSuite("assert", steps=_assert_steps(value))
    if isinstance(value, dict):
        if "inputs" in value and "outputs" in value:
            ins, outs = list(value["inputs"]), list(value["outputs"])
            if len(ins) != len(outs):
                raise ValueError(f"tests have {len(ins)} inputs but {len(outs)} outputs")
            return TestSuite("io", cases=[(_text(i), _text(o)) for i, o in zip(ins, outs)])
        for key in ("asserts", "tests", "assert"):
            if key in value:
                return parse_tests(value[key])
        raise ValueError(f"unrecognised tests mapping with keys {sorted(value)}; expected inputs/outputs or asserts")
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        if all(isinstance(v, dict) for v in value):
            cases = []
            for v in value:
                inp = v.get("input", v.get("stdin"))
                out = v.get("output", v.get("stdout", v.get("expected_output")))
                if inp is None or out is None:
                    raise ValueError(f"stdin/stdout test {v!r} needs 'input' and 'output'")
                cases.append((_text(inp), _text(out)))
            return TestSuite("io", cases=cases)
        if all(isinstance(v, str) for v in value):
            steps = []
            for v in value:
                parsed = _assert_steps(v)
                if not any(k == "test" for k, _ in parsed):  # a bare expression / call counts as one test
                    parsed = [("test", v)]
                steps.extend(parsed)
            return TestSuite("assert", steps=steps)
    raise ValueError(f"unrecognised tests value of type {type(value).__name__}: {str(value)[:200]!r}")


def _text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "\n".join(map(str, v)) + "\n"
    return str(v)


def same_output(actual: str, expected: str) -> bool:
    """Line-by-line equality ignoring trailing whitespace on each line and trailing blank lines."""
    def norm(s: str) -> list[str]:
        out = [line.rstrip() for line in s.replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    return norm(actual) == norm(expected)


# ----------------------------------------------------------------------------- sandbox

HARNESS = r'''
import json, os, signal, sys
def _rlvr_main():
    fd, per_test = int(sys.argv[1]), float(sys.argv[2])
    nonce = sys.stdin.buffer.readline().strip().decode()
    steps = json.loads(sys.stdin.buffer.readline())
    def report(msg):
        try:
            os.write(fd, ("%s %s\n" % (nonce, msg)).encode())
        except OSError:
            pass
    def on_alarm(signum, frame):
        raise TimeoutError("test timed out")
    signal.signal(signal.SIGALRM, on_alarm)
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    scope = {"__name__": "solution", "__builtins__": __builtins__}
    def run(code, filename):
        try:
            signal.setitimer(signal.ITIMER_REAL, per_test)
            exec(compile(code, filename, "exec"), scope)
            return True
        except BaseException:
            return False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    if not run(source, "solution.py"):
        report("load-failed")
        return
    index = 0
    for kind, code in steps:
        ok = run(code, "test_%d" % index)
        if kind == "test":
            report("%d %d" % (index, int(ok)))
            index += 1
_rlvr_main()
sys.stdout.flush()
os._exit(0)
'''

SUPERVISOR = r'''
import ctypes, json, os, resource, signal, sys, time
cfg = json.loads(sys.argv[1])
cmd = sys.argv[2:]
uid = cfg["uid"]
try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the code come back to us
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: the trainer gone -> clean up
except (OSError, AttributeError):
    pass
class Stop(Exception):
    pass
def on_term(signum, frame):
    raise Stop()
signal.signal(signal.SIGTERM, on_term)
child = os.fork()
if child == 0:
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.setpgid(0, 0)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        for name, value in cfg["limits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        os.umask(0o077)
        os.execv(cmd[0], cmd)
    except BaseException as exc:
        os.write(2, ("sandbox: cannot start %r: %s\n" % (cmd[0], exc)).encode())
    os._exit(127)
null = os.open(os.devnull, os.O_RDWR)  # let go of the pipes: the trainer sees EOF once the code's processes are gone
for fd in (0, 1, 2):
    os.dup2(null, fd)
for fd in cfg["close"]:
    os.close(fd)
status = None
try:
    status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
except Stop:
    pass
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def children():
    me = os.getpid()
    try:
        found = []
        for task in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % task) as f:
                found += [int(p) for p in f.read().split()]
        return found
    except OSError:
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open("/proc/%s/stat" % name) as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                            found.append(int(name))
                except (OSError, ValueError, IndexError):
                    pass
        return found
def kill_uid():
    helper = os.fork()
    if helper == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)  # every process of the sandbox uid, atomically
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(helper, 0)
for _ in range(10000):
    try:
        os.killpg(child, signal.SIGKILL)  # the code's process group, atomically
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        kill_uid()
    kids = children()
    if not kids:
        break
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    until = time.monotonic() + 0.05
    while time.monotonic() < until:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.002)
        elif pid == child and status is None:
            status = os.waitstatus_to_exitcode(st)
if status is None:
    os._exit(124)
os._exit(status if status >= 0 else 128 - status)
'''

SWEEPER = r'''
import os, signal
try:
    os.kill(-1, signal.SIGKILL)
except (ProcessLookupError, PermissionError):
    pass
'''


@dataclass
class RunResult:
    """What one sandboxed process did."""

    returncode: Optional[int]
    stdout: bytes
    stderr: bytes
    results: bytes  # what the harness wrote on its result pipe
    timed_out: bool
    output_capped: bool


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (asked-for bubblewrap missing, no usable interpreter)."""


_SLOT_LOCK = threading.Lock()
_FREE_SLOTS: list[int] = list(range(64))
_PROBES: dict[tuple[str, Optional[int]], tuple[bool, str]] = {}
_PREFIXES: dict[str, list[str]] = {}


def _uid_base() -> int:
    """Sandbox uids of this process: 200000 + 64 * (pid mod 10000) + slot."""
    return 200_000 + 64 * (os.getpid() % 10_000)


def _others_can_use(path: str, uid: Optional[int]) -> bool:
    """Whether ``uid`` (None: this user) can reach ``path`` and read and execute it (a program, or a
    directory to work in), judged from the permission bits of it and every directory above it."""
    if uid is None:
        return os.access(path, os.R_OK | os.X_OK)
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(1, len(parts) + 1):
        d = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(d)
        except OSError:
            return False
        need = stat.S_IXOTH | (stat.S_IROTH if i == len(parts) else 0)
        if st.st_uid != uid and (st.st_mode & need) != need:
            return False
    return True


def _user_task_count(uid: int) -> int:
    """Tasks (processes and threads) owned by ``uid``: what RLIMIT_NPROC counts."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


def processes_of_uid(uid: int) -> list[int]:
    """Pids of processes owned by ``uid`` (for cleanup checks)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Sandbox:
    """Runs Python programs under the limits of a :class:`CodeExecConfig`."""

    def __init__(self, cfg: CodeExecConfig):
        if cfg.sandbox not in SANDBOX_MODES:
            raise ConfigError(f"code_exec: sandbox={cfg.sandbox!r}; choose one of {SANDBOX_MODES}")
        if cfg.timeout_s <= 0 or cfg.memory_mb <= 0 or cfg.max_processes <= 0:
            raise ConfigError("code_exec: timeout_s, memory_mb and max_processes must be positive")
        self.cfg = cfg
        self.drop = cfg.drop_root and os.geteuid() == 0
        probe_uid = _uid_base() if self.drop else None
        self.python = self._interpreter(probe_uid)
        self.root_dir = tempfile.gettempdir()
        if self.drop and not _others_can_use(self.root_dir, probe_uid):
            if not _others_can_use("/tmp", probe_uid):
                raise SandboxError(f"code_exec: neither {self.root_dir} nor /tmp can be reached by the sandbox uid; "
                                   "point TMPDIR at a world-traversable directory")
            self.root_dir = "/tmp"
        self.bwrap: Optional[str] = None
        self.reason = ""
        if cfg.sandbox in ("auto", "bwrap"):
            path = shutil.which("bwrap")
            ok, why = (False, "bwrap is not on PATH (Debian/Ubuntu: apt-get install bubblewrap)") if path is None \
                else self._probe(path, probe_uid)
            if ok:
                self.bwrap = path
            elif cfg.sandbox == "bwrap":
                raise SandboxError(f"code_exec: sandbox=bwrap but bubblewrap cannot run here: {why}")
            else:
                self.reason = why
        self.mode = "bwrap" if self.bwrap else "rlimit"
        if self.mode == "rlimit" and not self.drop:
            warnings.warn("code_exec runs untrusted code without bubblewrap and not as root: it runs as this user, so it "
                          "can read and write this user's files, use the network and signal this user's processes. "
                          f"Install bubblewrap (apt-get install bubblewrap). {self.reason}".strip(), stacklevel=2)

    # -- set-up ---------------------------------------------------------------------------
    def _interpreter(self, uid: Optional[int]) -> str:
        candidates = [self.cfg.python] if self.cfg.python else [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3",
                                                                 shutil.which("python3") or ""]
        for c in candidates:
            if c and os.path.exists(c) and _others_can_use(c, uid):
                return c
        who = f"uid {uid}" if uid is not None else "this user"
        raise SandboxError(f"code_exec: no Python interpreter that {who} can run among {candidates}; set "
                           "reward.code_exec.python to one outside private directories, or drop_root=false")

    def _prefixes(self) -> list[str]:
        if self.python not in _PREFIXES:
            out = subprocess.run([self.python, "-I", "-S", "-c",
                                  "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, "
                                  "sys.base_exec_prefix]))"], capture_output=True, text=True, timeout=30)
            prefixes = json.loads(out.stdout) if out.returncode == 0 else []
            paths = {os.path.dirname(os.path.abspath(self.python)), os.path.dirname(os.path.realpath(self.python)), *prefixes}
            _PREFIXES[self.python] = sorted(p for p in paths if p and os.path.isdir(p))
        return _PREFIXES[self.python]

    def _bwrap_args(self, bwrap: str, workdir: str) -> list[str]:
        args = [bwrap, "--die-with-parent", "--new-session", "--unshare-all", "--unshare-user", "--disable-userns",
                "--hostname", "sandbox", "--cap-drop", "ALL"]
        for p in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
            if os.path.islink(p):
                args += ["--symlink", os.readlink(p), p]
            elif os.path.isdir(p):
                args += ["--ro-bind", p, p]
        for p in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives"):
            args += ["--ro-bind-try", p, p]
        for p in self._prefixes():
            if not p.startswith("/usr/") and p != "/usr":
                args += ["--ro-bind", p, p]
        args += ["--proc", "/proc", "--dev", "/dev", "--bind", workdir, "/sandbox",
                 "--bind", os.path.join(workdir, "tmp"), "/tmp", "--chdir", "/sandbox", "--clearenv"]
        for k, v in self._env("/sandbox", "/tmp").items():
            args += ["--setenv", k, v]
        return args + ["--"]

    def _probe(self, bwrap: str, uid: Optional[int]) -> tuple[bool, str]:
        key = (self.python, uid)
        if key not in _PROBES:
            work = self._make_workdir({}, uid)
            try:
                cmd = self._bwrap_args(bwrap, work) + [self.python, "-I", "-S", "-c", "print('ok')"]
                kwargs = self._user_kwargs(uid)
                try:
                    out = subprocess.run(cmd, capture_output=True, timeout=30, env=self._env(work, work), **kwargs)
                    ok = out.returncode == 0 and out.stdout.strip() == b"ok"
                    why = "" if ok else f"bwrap failed (exit {out.returncode}): {out.stderr.decode(errors='replace').strip()[:300]}"
                except (OSError, subprocess.TimeoutExpired) as exc:
                    ok, why = False, f"bwrap failed: {exc}"
                _PROBES[key] = (ok, why)
            finally:
                _remove_tree(work)
        return _PROBES[key]

    @staticmethod
    def _env(home: str, tmp: str) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8", "PYTHONHASHSEED": "0"}

    @staticmethod
    def _user_kwargs(uid: Optional[int]) -> dict[str, Any]:
        return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}

    def _make_workdir(self, files: dict[str, bytes], uid: Optional[int]) -> str:
        work = tempfile.mkdtemp(prefix="rlvr-sandbox-", dir=self.root_dir)
        os.makedirs(os.path.join(work, "tmp"))
        for name, data in files.items():
            with open(os.path.join(work, name), "wb") as f:
                f.write(data)
        if uid is not None:
            for root, dirs, names in os.walk(work):
                for n in [*dirs, *names]:
                    os.chown(os.path.join(root, n), uid, uid)
            os.chown(work, uid, uid)
        os.chmod(work, 0o700)
        return work

    def _limits(self, uid: Optional[int], wall: float) -> dict[str, int]:
        nproc = self.cfg.max_processes if uid is not None else _user_task_count(os.getuid()) + self.cfg.max_processes
        cpu = int(math.ceil(wall)) + 1
        return {"RLIMIT_CPU": cpu, "RLIMIT_AS": self.cfg.memory_mb << 20, "RLIMIT_NPROC": nproc,
                "RLIMIT_FSIZE": self.cfg.max_file_mb << 20, "RLIMIT_NOFILE": self.cfg.max_open_files,
                "RLIMIT_CORE": 0}

    # -- running --------------------------------------------------------------------------
    def run(self, script: str, args: list[str], files: dict[str, bytes], stdin: bytes, wall: float,
            result_pipe: bool = False) -> RunResult:
        """Run ``python script *args`` in a fresh sandbox directory holding ``files``.

        A small supervisor process (this user) starts the code (as the sandbox uid when dropping
        root), waits for it, then kills and reaps every process the code left behind: it is their
        child subreaper, so even processes that escaped into a new session come back to it.
        """
        slot = None
        if self.drop:
            with _SLOT_LOCK:
                if not _FREE_SLOTS:
                    raise SandboxError("code_exec: more than 64 concurrent sandboxes in one process")
                slot = _FREE_SLOTS.pop(0)
        uid = _uid_base() + slot if slot is not None else None
        work = self._make_workdir(files, uid)
        r_fd = w_fd = -1
        proc: Optional[subprocess.Popen[bytes]] = None
        try:
            if result_pipe:
                r_fd, w_fd = os.pipe()
            inner_dir = "/sandbox" if self.bwrap else work
            inner = [self.python, "-I", "-B", os.path.join(inner_dir, script), *([str(w_fd)] if result_pipe else []), *args]
            cmd = (self._bwrap_args(self.bwrap, work) if self.bwrap else []) + inner
            plan = {"uid": uid, "limits": self._limits(uid, wall), "close": [w_fd] if result_pipe else []}
            supervisor = [self.python, "-I", "-S", "-c", SUPERVISOR, json.dumps(plan)]
            proc = subprocess.Popen(supervisor + cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(w_fd,) if result_pipe else (), cwd=work,
                                    env=self._env(work, os.path.join(work, "tmp")), start_new_session=True)
            if result_pipe:
                os.close(w_fd)
                w_fd = -1
            return _communicate(proc, stdin, r_fd, time.monotonic() + wall, self.cfg.max_output_bytes)
        finally:
            if proc is not None:
                _stop(proc)
            if uid is not None and processes_of_uid(uid):
                self._sweep(uid)
            for fd in (r_fd, w_fd):
                if fd >= 0:
                    os.close(fd)
            _remove_tree(work)
            if slot is not None:
                with _SLOT_LOCK:
                    _FREE_SLOTS.append(slot)

    def _sweep(self, uid: int) -> None:
        """Fallback when the supervisor could not clean up: kill(-1) as the sandbox uid until none is left."""
        for _ in range(5):
            if not processes_of_uid(uid):
                return
            subprocess.run([self.python, "-I", "-S", "-c", SWEEPER], user=uid, group=uid, extra_groups=[],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            time.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ask the supervisor to clean up (SIGTERM), then kill its process group if it does not."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def _remove_tree(path: str) -> None:
    def retry(func: Callable[..., Any], p: str, _: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def _communicate(proc: subprocess.Popen[bytes], stdin: bytes, result_fd: int, deadline: float, cap: int) -> RunResult:
    """Feed stdin, collect stdout/stderr (each capped) and the result pipe until the process ends,
    the deadline passes or the output goes over the cap."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    bufs: dict[int, bytearray] = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    results = bytearray()
    view = memoryview(stdin)
    sent = 0
    stdin_fd = proc.stdin.fileno()
    if stdin:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    if result_fd >= 0:
        sel.register(result_fd, selectors.EVENT_READ)
    timed_out = capped = False
    exited_at: Optional[float] = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if proc.poll() is not None:
                exited_at = exited_at or now
                if now - exited_at > 0.2:  # descendants holding the pipes open do not keep us waiting
                    break
            for key, _ in sel.select(timeout=min(0.05, deadline - now)):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        sent += os.write(fd, view[sent:sent + 65536])
                    except (BrokenPipeError, OSError):
                        sent = len(view)
                    if sent >= len(view):
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(fd)
                    continue
                if fd == result_fd:
                    if len(results) < cap:
                        results += data
                    continue
                buf = bufs[fd]
                buf += data[:max(0, cap - len(buf))]
                if len(data) and len(buf) >= cap:
                    capped = True
            if capped:
                break
    finally:
        sel.close()
    if not timed_out and not capped:  # the pipes are closed; the process may still be running
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    returncode = proc.poll()
    return RunResult(returncode, bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), bytes(results),
                     timed_out, capped)


# ----------------------------------------------------------------------------- running tests

@dataclass
class TestReport:
    """Outcome of one completion's tests."""

    passed: int
    total: int
    detail: str = ""

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def run_tests(code: str, suite: TestSuite, sandbox: Sandbox) -> TestReport:
    """Run ``code`` against ``suite`` in ``sandbox``."""
    cfg = sandbox.cfg
    if suite.kind == "assert":
        nonce = secrets.token_hex(16)
        stdin = (nonce + "\n" + json.dumps(suite.steps) + "\n").encode()
        per_step = cfg.timeout_s
        wall = min(cfg.total_timeout_s, per_step * max(1, len(suite.steps) + 1)) + cfg.startup_grace_s
        files = {"solution.py": code.encode("utf-8", errors="replace"), "rlvr_harness.py": HARNESS.encode()}
        res = sandbox.run("rlvr_harness.py", [str(per_step)], files, stdin, wall, result_pipe=True)
        passed = set()
        for line in res.results.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == nonce and parts[2] == "1" and parts[1].isdigit():
                passed.add(int(parts[1]))
        total = suite.count
        detail = "timed out" if res.timed_out else ("output over the cap" if res.output_capped else "")
        return TestReport(len([i for i in passed if i < total]), total, detail)
    passed = 0
    details = []
    files = {"solution.py": code.encode("utf-8", errors="replace")}
    for i, (stdin, expected) in enumerate(suite.cases):
        res = sandbox.run("solution.py", [], files, stdin.encode(), cfg.timeout_s + cfg.startup_grace_s)
        ok = (not res.timed_out and not res.output_capped and res.returncode == 0
              and same_output(res.stdout.decode(errors="replace"), expected))
        passed += ok
        if not ok and len(details) < 3:
            details.append(f"case {i}: " + ("timed out" if res.timed_out else "output over the cap" if res.output_capped
                                            else f"exit {res.returncode}" if res.returncode else "wrong output"))
    return TestReport(passed, len(suite.cases), "; ".join(details))


class CodeExecutor:
    """Scores completions: one report (or None: no tests) per completion, runs in parallel."""

    def __init__(self, cfg: CodeExecConfig):
        self.cfg = cfg
        self.sandbox = Sandbox(cfg)

    def reports(self, completions: list[str], columns: dict[str, list[Any]]) -> list[Optional[TestReport]]:
        if self.cfg.tests_column not in columns:
            raise ColumnError(f"code_exec needs the task column {self.cfg.tests_column!r} (set tests_column); "
                              f"columns given: {sorted(columns)}")
        jobs: list[Callable[[], Optional[TestReport]]] = []
        for i, (text, tests) in enumerate(zip(completions, columns[self.cfg.tests_column])):
            try:
                suite = parse_tests(tests)
            except ValueError as exc:
                raise DataError(f"code_exec: row {i}: {exc}") from None
            jobs.append(self._job(text, suite))
        if self.cfg.max_workers <= 1 or len(jobs) <= 1:
            return [job() for job in jobs]
        with ThreadPoolExecutor(max_workers=self.cfg.max_workers) as pool:
            return list(pool.map(lambda job: job(), jobs))

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
        return [None if r is None else cfg.fail_score + r.fraction * (cfg.pass_score - cfg.fail_score)
                for r in executor.reports(completions, columns)]

    code_exec.executor = executor  # type: ignore[attr-defined]
    return code_exec


DESCRIPTION = "runs the completion's code block against the row's tests in a sandbox (bubblewrap when installed)"


@hookimpl
def rlvr_verifiers() -> list[PluginSpec]:
    return [PluginSpec("code_exec", make_code_exec_verifier, CodeExecConfig, DESCRIPTION + "; passes when all pass")]


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [PluginSpec("code_exec", make_code_exec_reward, CodeExecConfig, DESCRIPTION + "; score = fraction passed")]
