"""Process control for untrusted code (the ``code_exec`` reward, the ``python`` tool env): one sandboxed
program per call of :meth:`Sandbox.run`.

Every run: a fresh directory, a clean environment, a supervisor (``supervisor.py``, the child
subreaper of everything the code starts) that starts the program under rlimits, in the run's
cgroups when the machine allows them (whole-run memory and process caps), as a uid of its own
when the trainer is root, and inside bubblewrap when it is installed (namespaces, read-only
system, a size-capped tmpfs as the only writable place). Afterwards every process of the run is
killed and reaped, and in rlimit mode what the run's uid left in /tmp, /var/tmp and /dev/shm is
deleted. See docs/sandbox.md for what holds in each mode.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import marshal
import math
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rlvr.core.errors import ConfigError
from rlvr.sandbox import cgroups as cg
from rlvr.sandbox.channel import ResultChannel

HERE = os.path.dirname(os.path.abspath(__file__))
SUPERVISOR = os.path.join(HERE, "supervisor.py")
SANDBOX_MODES = ("auto", "bwrap", "rlimit")
UID_START, UID_BLOCK, UID_BLOCKS = 200_000, 64, 10_000
SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
BWRAP_EXTRA_PROCESSES = 2  # bubblewrap itself and its init in the new pid namespace


_COMPILED: dict[tuple[str, str], tuple[str, bytes]] = {}
_COMPILE_LOCK = threading.Lock()
_COMPILE_SCRIPT = (
    "import py_compile, sys\npy_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], doraise=True)\n"
)


def compiled(python: str, source: str) -> tuple[str, bytes]:
    """``source`` (``supervisor.py``, code_exec's ``harness.py``) byte-compiled by ``python`` once per process:
    (a private path of the ``.pyc``, its bytes). Running the ``.pyc`` by path skips compiling the
    file on every run (~5 ms each for the harness). Falls back to the ``.py`` when it cannot."""
    key = (python, source)
    with _COMPILE_LOCK:
        if key not in _COMPILED:
            directory = tempfile.mkdtemp(prefix="rlvr-code-exec-")
            atexit.register(shutil.rmtree, directory, True)
            target = os.path.join(directory, os.path.basename(source) + "c")
            out = subprocess.run(
                [python, "-I", "-S", "-c", _COMPILE_SCRIPT, source, target, os.path.basename(source)],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if out.returncode == 0 and os.path.exists(target):
                with open(target, "rb") as f:
                    _COMPILED[key] = (target, f.read())
            else:
                with open(source, "rb") as f:
                    _COMPILED[key] = (source, f.read())
        return _COMPILED[key]


@dataclass
class SandboxConfig:
    """The limits of every run of a :class:`Sandbox` (the ``code_exec`` reward's config and the ``python``
    env's build one)."""

    timeout_s: float = 5.0  # wall clock per run (run_program's default: timeout_s + startup_grace_s)
    startup_grace_s: float = 2.0  # extra wall clock for the interpreter to start
    memory_mb: int = 512  # memory of the whole run (cgroup) and address space of each process (RLIMIT_AS)
    max_processes: int = 32  # processes/threads of the whole run (cgroup pids.max; RLIMIT_NPROC per uid)
    max_output_bytes: int = 1 << 20  # stdout (and stderr) kept; more ends the run
    max_file_mb: int = 16  # largest file the code may write (RLIMIT_FSIZE)
    max_disk_mb: int = 64  # bubblewrap: size of the run's writable tmpfs (its directory, /tmp) and of /dev/shm
    max_open_files: int = 64  # RLIMIT_NOFILE
    sandbox: str = "auto"  # auto (bubblewrap when usable) | bwrap (required) | rlimit (never bubblewrap)
    cgroups: bool = True  # whole-run memory / process limits with cgroups when this process may create them
    drop_root: bool = True  # when the trainer runs as root, run the code under a uid of its own
    python: str = ""  # interpreter for the code; "" = this one, or /usr's python3 when the sandbox uid cannot run it


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (asked-for bubblewrap missing, no usable interpreter)."""


@dataclass
class RunResult:
    """What one sandboxed process did."""

    returncode: Optional[int]
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_capped: bool


# ----------------------------------------------------------------------------- sandbox uids

_UID_LOCK = threading.Lock()
_UID_BLOCK: Optional[tuple[int, int, int]] = None  # (owner pid, first uid, lock fd)
_FREE_SLOTS: list[int] = list(range(UID_BLOCK))
_PREFIXES: dict[str, list[str]] = {}


def _lock_dir() -> str:
    """A directory only this user can write, for the uid-block lock files (``/run`` when root)."""
    for d in ("/run/rlvr-sandbox", os.path.join(tempfile.gettempdir(), f"rlvr-sandbox-locks-{os.getuid()}")):
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            st = os.lstat(d)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022:
            return d
    raise SandboxError(
        "code_exec: no private directory for the sandbox uid locks (tried /run/rlvr-sandbox and "
        f"{tempfile.gettempdir()}); make /run writable for this user or set TMPDIR"
    )


def uid_block(start: Optional[int] = None) -> int:
    """First uid of this process's block of 64 sandbox uids (``200000 + 64·k``).

    The block is held with an exclusive ``flock`` on ``<lock dir>/uids-<k>.lock`` for the life of
    the process, so concurrent trainers (and forked workers: a child takes a block of its own)
    never share a uid. The search starts at ``k = pid mod 10000`` (or ``start``).
    """
    global _UID_BLOCK
    with _UID_LOCK:
        if _UID_BLOCK is not None and _UID_BLOCK[0] == os.getpid():
            return _UID_BLOCK[1]
        directory = _lock_dir()
        k0 = os.getpid() % UID_BLOCKS if start is None else start
        for i in range(UID_BLOCKS):
            k = (k0 + i) % UID_BLOCKS
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(os.path.join(directory, f"uids-{k}.lock"), flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            base = UID_START + UID_BLOCK * k
            if any(processes_of_uid(base + s) for s in (0, 1, UID_BLOCK - 1)):  # left over by a crashed trainer
                os.close(fd)
                continue
            _UID_BLOCK = (os.getpid(), base, fd)
            _FREE_SLOTS[:] = list(range(UID_BLOCK))
            return base
    raise SandboxError(f"code_exec: all {UID_BLOCKS} sandbox uid blocks are in use (lock files in {directory})")


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


def _others_can_use(path: str, uid: Optional[int]) -> bool:
    """Whether ``uid`` (None: this user) can reach ``path`` and read and execute it, judged from the
    permission bits of it and every directory above it."""
    if uid is None:
        return os.access(path, os.R_OK | os.X_OK)
    parts = os.path.realpath(path).split(os.sep)
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


def sweep_shared_tmp(uid: int, dirs: tuple[str, ...] = SHARED_TMP_DIRS) -> list[str]:
    """Delete the entries of ``dirs`` owned by ``uid`` (what a run left in /tmp and co.); their paths."""
    removed = []
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid != uid:
                continue
            if stat.S_ISDIR(st.st_mode):
                _remove_tree(entry.path)
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    continue
            removed.append(entry.path)
    return removed


# ----------------------------------------------------------------------------- the sandbox


class Sandbox:
    """Runs Python programs under the limits of a :class:`SandboxConfig` (or a config that extends it, such as
    ``CodeExecConfig``: ``self.cfg`` is the object given)."""

    def __init__(self, cfg: SandboxConfig):
        if cfg.sandbox not in SANDBOX_MODES:
            raise ConfigError(f"code_exec: sandbox={cfg.sandbox!r}; choose one of {SANDBOX_MODES}")
        if cfg.timeout_s <= 0 or cfg.memory_mb <= 0 or cfg.max_processes <= 0 or cfg.max_disk_mb <= 0:
            raise ConfigError("code_exec: timeout_s, memory_mb, max_processes and max_disk_mb must be positive")
        self.cfg = cfg
        self.drop = cfg.drop_root and os.geteuid() == 0
        probe_uid = uid_block() if self.drop else None
        self.python = self._interpreter(probe_uid)
        self.root_dir = tempfile.gettempdir()
        if self.drop and not _others_can_use(self.root_dir, probe_uid):
            if not _others_can_use("/tmp", probe_uid):
                raise SandboxError(
                    f"code_exec: neither {self.root_dir} nor /tmp can be reached by the sandbox uid; "
                    "point TMPDIR at a world-traversable directory"
                )
            self.root_dir = "/tmp"
        self.cgroups: Optional[cg.Cgroups] = None
        self.bwrap: Optional[str] = None
        self.reason = ""
        if cfg.sandbox in ("auto", "bwrap"):
            path = shutil.which("bwrap")
            ok, why = (
                (False, "bwrap is not on PATH (Debian/Ubuntu: apt-get install bubblewrap)")
                if path is None
                else self._probe(path)
            )
            if ok:
                self.bwrap = path
            elif cfg.sandbox == "bwrap":
                raise SandboxError(f"code_exec: sandbox=bwrap but bubblewrap cannot run here: {why}")
            else:
                self.reason = why
        self.mode = "bwrap" if self.bwrap else "rlimit"
        self.cgroup_reason = "disabled (cgroups: false)"
        if cfg.cgroups:
            extra = BWRAP_EXTRA_PROCESSES if self.bwrap else 0
            self.cgroups, self.cgroup_reason = cg.probe(cfg.memory_mb << 20, cfg.max_processes + extra)
        if self.mode == "rlimit" and not self.drop:
            warnings.warn(
                "code_exec runs untrusted code without bubblewrap and not as root: it runs as this user, "
                "so it can read and write this user's files, use the network and signal this user's "
                "processes. "
                f"Install bubblewrap (apt-get install bubblewrap). {self.reason}".strip(),
                stacklevel=2,
            )

    # -- set-up ---------------------------------------------------------------------------
    def _interpreter(self, uid: Optional[int]) -> str:
        candidates = (
            [self.cfg.python]
            if self.cfg.python
            else [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""]
        )
        for c in candidates:
            if c and os.path.exists(c) and _others_can_use(c, uid):
                return c
        who = f"uid {uid}" if uid is not None else "this user"
        raise SandboxError(
            f"code_exec: no Python interpreter that {who} can run among {candidates}; set "
            "reward.code_exec.python to one outside private directories, or drop_root=false"
        )

    def _prefixes(self) -> list[str]:
        if self.python not in _PREFIXES:
            out = subprocess.run(
                [
                    self.python,
                    "-I",
                    "-S",
                    "-c",
                    "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, "
                    "sys.base_exec_prefix]))",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            prefixes = json.loads(out.stdout) if out.returncode == 0 else []
            paths = {
                os.path.dirname(os.path.abspath(self.python)),
                os.path.dirname(os.path.realpath(self.python)),
                *prefixes,
            }
            _PREFIXES[self.python] = sorted(p for p in paths if p and os.path.isdir(p))
        return _PREFIXES[self.python]

    def _bwrap_args(self, bwrap: str, workdir: str, files: list[str]) -> list[str]:
        prefixes = [p for p in self._prefixes() if not p.startswith("/usr/") and p != "/usr"]
        # an interpreter under /tmp (e.g. a checkout in /tmp) is bound there, so /tmp cannot be the symlink to
        # /sandbox/tmp: it is then a tmpfs of its own, and the disk cap is split between the two
        tmp_tmpfs = any(p == "/tmp" or p.startswith("/tmp/") for p in prefixes)
        disk = str((self.cfg.max_disk_mb << 20) // (2 if tmp_tmpfs else 1))
        args = [
            bwrap,
            "--die-with-parent",
            "--new-session",
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--hostname",
            "sandbox",
            "--cap-drop",
            "ALL",
        ]
        for p in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
            if os.path.islink(p):
                args += ["--symlink", os.readlink(p), p]
            elif os.path.isdir(p):
                args += ["--ro-bind", p, p]
        for p in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives"):
            args += ["--ro-bind-try", p, p]
        if tmp_tmpfs:
            args += ["--size", disk, "--tmpfs", "/tmp"]
        for p in prefixes:
            args += ["--ro-bind", p, p]
        args += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            disk,
            "--tmpfs",
            "/dev/shm",
            "--size",
            disk,
            "--tmpfs",
            "/sandbox",
        ]
        for name in files:
            args += ["--ro-bind", os.path.join(workdir, name), f"/sandbox/{name}"]
        if not tmp_tmpfs:
            args += ["--dir", "/sandbox/tmp", "--symlink", "/sandbox/tmp", "/tmp"]
        args += [
            "--remount-ro",
            "/",
            "--chdir",
            "/sandbox",
            "--clearenv",
        ]
        for k, v in self._env("/sandbox", "/tmp").items():
            args += ["--setenv", k, v]
        return args + ["--"]

    def _probe(self, bwrap: str) -> tuple[bool, str]:
        """Whether bubblewrap runs here: one real run under the supervisor (which reaps bwrap's
        init, so the probe leaves no zombie)."""
        self.bwrap = bwrap
        try:
            res = self.run("solution.py", [], {"solution.py": b"print('ok')\n"}, b"", 30.0)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"bwrap failed: {exc}"
        finally:
            self.bwrap = None
        if res.returncode == 0 and res.stdout.strip() == b"ok":
            return True, ""
        return False, f"bwrap failed (exit {res.returncode}): {res.stderr.decode(errors='replace').strip()[:300]}"

    @staticmethod
    def _env(home: str, tmp: str) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONHASHSEED": "0",
        }

    def _make_workdir(self, files: dict[str, bytes], uid: Optional[int]) -> str:
        work = tempfile.mkdtemp(prefix="rlvr-sandbox-", dir=self.root_dir)
        os.makedirs(os.path.join(work, "tmp"))
        for name, data in files.items():
            with open(os.path.join(work, name), "wb") as f:
                f.write(data)
            os.chmod(os.path.join(work, name), 0o444)
        if uid is not None:
            os.chown(os.path.join(work, "tmp"), uid, uid)
            os.chown(work, uid, uid)  # the files stay root's (read-only); the directory is the run's
        os.chmod(work, 0o700)
        return work

    def _limits(self, uid: Optional[int], wall: float) -> dict[str, int]:
        extra = BWRAP_EXTRA_PROCESSES if self.bwrap else 0
        nproc = (
            self.cfg.max_processes + extra
            if uid is not None
            else _user_task_count(os.getuid()) + self.cfg.max_processes + extra
        )
        return {
            "RLIMIT_CPU": int(math.ceil(wall)) + 1,
            "RLIMIT_AS": self.cfg.memory_mb << 20,
            "RLIMIT_NPROC": nproc,
            "RLIMIT_FSIZE": self.cfg.max_file_mb << 20,
            "RLIMIT_NOFILE": self.cfg.max_open_files,
            "RLIMIT_CORE": 0,
        }

    # -- running --------------------------------------------------------------------------
    def run(
        self,
        script: str,
        args: list[str],
        files: dict[str, bytes],
        stdin: bytes,
        wall: float,
        channel: Optional[ResultChannel] = None,
    ) -> RunResult:
        """Run ``python script [channel fd] *args`` in a fresh sandbox directory holding ``files``."""
        slot = None
        if self.drop or self.cgroups is not None:
            if self.drop:
                uid_block()  # (re)take this process's block first (a forked worker gets its own)
            with _UID_LOCK:
                if not _FREE_SLOTS:
                    raise SandboxError(f"code_exec: more than {UID_BLOCK} concurrent sandboxes in one process")
                slot = _FREE_SLOTS.pop(0)
        uid = uid_block() + slot if self.drop and slot is not None else None
        work = self._make_workdir(files, uid)
        proc: Optional[subprocess.Popen[bytes]] = None
        try:
            inner_dir = "/sandbox" if self.bwrap else work
            fd = channel.child_fd() if channel is not None else -1
            inner = [self.python, "-I", "-B", os.path.join(inner_dir, script), *([str(fd)] if fd >= 0 else []), *args]
            cmd = (self._bwrap_args(self.bwrap, work, sorted(files)) if self.bwrap else []) + inner
            plan = {
                "uid": uid,
                "limits": self._limits(uid, wall),
                "close": [fd] if fd >= 0 else [],
                "cgroups": self.cgroups.slot(slot) if self.cgroups is not None and slot is not None else [],
            }
            supervisor = compiled(self.python, SUPERVISOR)[0]
            proc = subprocess.Popen(
                [self.python, "-I", "-S", supervisor, marshal.dumps(plan, 4).hex()] + cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(fd,) if fd >= 0 else (),
                cwd=work,
                env=self._env(work, os.path.join(work, "tmp")),
                start_new_session=True,
            )
            if channel is not None:
                channel.close_child_end()
            return _communicate(proc, stdin, channel, time.monotonic() + wall, self.cfg.max_output_bytes)
        finally:
            if proc is not None:
                _stop(proc)
            if self.cgroups is not None and slot is not None and self.cgroups.pids(slot):
                self.cgroups.kill(slot)
            if uid is not None and processes_of_uid(uid):
                self._sweep(uid)
            _remove_tree(work)
            if uid is not None and not self.bwrap:
                sweep_shared_tmp(uid)
            if slot is not None:
                with _UID_LOCK:
                    _FREE_SLOTS.append(slot)

    def _sweep(self, uid: int) -> None:
        """Fallback when the supervisor could not clean up: kill(-1) as the sandbox uid until none is left."""
        for _ in range(5):
            if not processes_of_uid(uid):
                return
            subprocess.run(
                [
                    self.python,
                    "-I",
                    "-S",
                    "-c",
                    "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass",
                ],
                user=uid,
                group=uid,
                extra_groups=[],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )
            time.sleep(0.02)


def run_program(sandbox: Sandbox, code: str, stdin: bytes = b"", wall: Optional[float] = None) -> RunResult:
    """Run ``code`` as a Python program (``python solution.py``) in a fresh run of ``sandbox``.

    Every limit of the sandbox's config applies (memory, processes, files, output caps, no network in
    bubblewrap mode) and every process the code starts is killed and reaped before this returns. ``wall``:
    seconds of wall clock for the whole run, interpreter start-up included (default ``timeout_s +
    startup_grace_s`` of the config). Nothing is kept between runs. Undecodable characters in ``code``
    (lone surrogates) become ``?``."""
    cfg = sandbox.cfg
    limit = cfg.timeout_s + cfg.startup_grace_s if wall is None else wall
    files = {"solution.py": code.encode("utf-8", errors="replace")}
    return sandbox.run("solution.py", [], files, stdin, limit)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ask the supervisor to clean up (SIGTERM), then kill its process group if it does not."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
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


def _communicate(
    proc: subprocess.Popen[bytes], stdin: bytes, channel: Optional[ResultChannel], deadline: float, cap: int
) -> RunResult:
    """Feed stdin, collect stdout/stderr (each capped) and the result channel until the process ends,
    the deadline passes, the output goes over the cap or the channel sees a protocol violation."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    bufs: dict[int, bytearray] = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
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
    chan_fd = pid_fd = -1
    if channel is not None:
        chan_fd = channel.fileno()
        sel.register(chan_fd, selectors.EVENT_READ)
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
            if channel is not None and pid_fd < 0 and channel.pidfd >= 0:
                pid_fd = channel.pidfd
                sel.register(pid_fd, selectors.EVENT_READ)
            for key, _ in sel.select(timeout=min(0.05, deadline - now)):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        sent += os.write(fd, view[sent : sent + 65536])
                    except OSError:
                        sent = len(view)
                    if sent >= len(view):
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                if channel is not None and fd == pid_fd:  # the harness exited: drain, then accept nothing more
                    sel.unregister(fd)
                    channel.mark_harness_gone()
                    continue
                if channel is not None and fd == chan_fd:
                    if not channel.read_available():
                        sel.unregister(fd)
                    continue
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(fd)
                    continue
                buf = bufs[fd]
                buf += data[: max(0, cap - len(buf))]
                if len(buf) >= cap:
                    capped = True
            if capped or (channel is not None and channel.log.violation):
                break
    finally:
        sel.close()
    if channel is not None and not channel.log.violation and not channel.harness_gone:
        channel.read_available()
    if not timed_out and not capped and not (channel is not None and channel.log.violation):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    return RunResult(
        proc.poll(), bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), timed_out, capped
    )
