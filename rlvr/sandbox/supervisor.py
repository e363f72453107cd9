"""The sandbox's supervisor: starts one sandboxed program, waits for it, then kills and reaps all it left.

Run by the trainer (as the trainer's user) as ``python -I -S supervisor.py PLAN CMD...`` where
``PLAN`` is ``marshal`` data in hex: ``{"uid": sandbox uid or null, "limits": {"RLIMIT_AS": n, ...},
"cgroups": [cgroup.procs files], "close": [fds to close here]}``. It

- makes itself the *child subreaper* (orphans of the code come back to it, even after ``setsid``
  or a double fork) and asks for SIGTERM when the trainer dies;
- forks the program: a new process group, the run's cgroups joined (whole-run memory and process
  limits), groups dropped and the sandbox uid taken, rlimits set, umask 077, then ``execv``;
- lets go of its own stdio and of the result channel, so the trainer sees EOF when the code ends;
- waits; on SIGTERM (the trainer's timeout) or when the program ends, kills the program's process
  group, every process of the sandbox uid (``kill(-1)`` run as that uid) and every child left,
  until none is left, reaping them all (no zombies); exits with the program's status (124 when
  it was stopped before it ended).
"""

import _signal as signal  # the C modules: no enum / re / json imports on every run
import ctypes
import marshal
import os
import resource
import sys
import time


class Stop(Exception):
    """SIGTERM from the trainer."""


def _on_term(signum, frame):
    raise Stop()


def _children():
    me = os.getpid()
    found = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % task) as f:
                found += [int(p) for p in f.read().split()]
        return found
    except OSError:
        pass
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _kill_uid(uid):
    """SIGKILL every process of ``uid`` at once: kill(-1) from a helper that takes that uid."""
    helper = os.fork()
    if helper == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(helper, 0)


def _start(cmd, plan):
    """In the forked child: join the cgroups, drop to the sandbox uid, set limits, exec."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.setpgid(0, 0)
        for procs in plan.get("cgroups", []):
            with open(procs, "w") as f:
                f.write("0")  # "0": the writing process itself
        uid = plan["uid"]
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        for name, value in plan["limits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        os.umask(0o077)
        os.execv(cmd[0], cmd)
    except BaseException as exc:
        os.write(2, ("sandbox: cannot start %r: %s\n" % (cmd[0], exc)).encode())
    os._exit(127)


def main():
    plan = marshal.loads(bytes.fromhex(sys.argv[1]))
    cmd = sys.argv[2:]
    uid = plan["uid"]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGTERM, _on_term)
    child = os.fork()
    if child == 0:
        _start(cmd, plan)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for fd in plan["close"]:
        os.close(fd)
    status = None
    try:
        status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    except Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for _ in range(10000):
        try:
            os.killpg(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if uid is not None:
            _kill_uid(uid)
        kids = _children()
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


if __name__ == "__main__":
    main()
