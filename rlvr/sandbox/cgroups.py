"""Whole-run memory and process limits with cgroups (v2, or the v1 ``memory`` and ``pids`` hierarchies).

A run's processes (the sandboxed program and everything it starts) join one cgroup per sandbox
slot, created under the trainer's own cgroup: ``memory.max`` / ``memory.limit_in_bytes`` caps the
memory of all of them together (files in a tmpfs count too), ``pids.max`` their number. When the
machine does not let this process create cgroups (not root, no delegation, controllers missing),
:func:`probe` says why and the sandbox falls back to per-process rlimits (see docs/sandbox.md).
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Optional

ROOT = "/sys/fs/cgroup"
_COUNTER = itertools.count()


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                hid, controllers, path = line.rstrip("\n").split(":", 2)
                if hid == "0" and not controllers:
                    out[""] = path
                for c in controllers.split(","):
                    if c:
                        out[c] = path
    except OSError:
        pass
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@dataclass
class Cgroups:
    """The cgroups of this trainer's sandbox slots: one directory per slot and controller hierarchy."""

    version: int  # 1 or 2
    parents: list[str]  # one per hierarchy (v2: one), all created by us
    memory_bytes: int
    max_pids: int
    _slots: dict[int, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def slot(self, slot: int) -> list[str]:
        """The ``cgroup.procs`` files a run in ``slot`` joins (created and limited on first use)."""
        with self._lock:
            if slot not in self._slots:
                dirs = []
                for parent in self.parents:
                    d = os.path.join(parent, f"s{slot}")
                    os.makedirs(d, exist_ok=True)
                    dirs.append(d)
                    self._limit(d)
                self._slots[slot] = dirs
            return [os.path.join(d, "cgroup.procs") for d in self._slots[slot]]

    def _limit(self, d: str) -> None:
        names = set(os.listdir(d))
        if self.version == 2:
            _write(os.path.join(d, "memory.max"), str(self.memory_bytes))
            if "memory.swap.max" in names:
                _write(os.path.join(d, "memory.swap.max"), "0")
            _write(os.path.join(d, "pids.max"), str(self.max_pids))
            return
        if "memory.limit_in_bytes" in names:
            _write(os.path.join(d, "memory.limit_in_bytes"), str(self.memory_bytes))
            if "memory.memsw.limit_in_bytes" in names:
                try:
                    _write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(self.memory_bytes))
                except OSError:
                    pass
        if "pids.max" in names:
            _write(os.path.join(d, "pids.max"), str(self.max_pids))

    def pids(self, slot: int) -> list[int]:
        """Processes still in the slot's cgroups."""
        found: set[int] = set()
        for procs in self._slots.get(slot, []):
            try:
                with open(os.path.join(procs, "cgroup.procs")) as f:
                    found.update(int(p) for p in f.read().split())
            except OSError:
                pass
        return sorted(found)

    def kill(self, slot: int) -> None:
        """SIGKILL whatever is left in the slot's cgroups (``cgroup.kill`` on v2)."""
        for d in self._slots.get(slot, []):
            if self.version == 2 and os.path.exists(os.path.join(d, "cgroup.kill")):
                try:
                    _write(os.path.join(d, "cgroup.kill"), "1")
                    continue
                except OSError:
                    pass
        for pid in self.pids(slot):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def peak_bytes(self, slot: int) -> Optional[int]:
        """Highest memory use of the slot's cgroup since it was created (for tests and reports)."""
        for d in self._slots.get(slot, []):
            for name in ("memory.peak", "memory.max_usage_in_bytes"):
                try:
                    with open(os.path.join(d, name)) as f:
                        return int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
        return None

    def remove(self) -> None:
        """Delete the slot cgroups and the parents (at exit; they must be empty)."""
        with self._lock:
            for dirs in self._slots.values():
                for d in dirs:
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
            self._slots.clear()
            for parent in self.parents:
                try:
                    os.rmdir(parent)
                except OSError:
                    pass


def probe(memory_bytes: int, max_pids: int, root: str = ROOT) -> tuple[Optional[Cgroups], str]:
    """Set up this trainer's cgroup parent(s); (None, why) when cgroups cannot be used here."""
    own = _own_paths()
    name = f"rlvr-sandbox-{os.getpid()}-{next(_COUNTER)}"
    if os.path.exists(os.path.join(root, "cgroup.controllers")):  # unified (v2) hierarchy
        base = os.path.join(root, own.get("", "/").lstrip("/"))
        try:
            with open(os.path.join(base, "cgroup.controllers")) as f:
                available = f.read().split()
        except OSError as exc:
            return None, f"cgroup v2: cannot read {base}: {exc}"
        if not {"memory", "pids"} <= set(available):
            return None, f"cgroup v2: controllers memory and pids not available in {base} (have {available})"
        parent = os.path.join(base, name)
        try:
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids") if not _enabled(base) else None
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
        except OSError as exc:
            try:
                os.rmdir(parent)
            except OSError:
                pass
            return None, f"cgroup v2: cannot create and delegate {parent}: {exc}"
        groups = Cgroups(2, [parent], memory_bytes, max_pids)
    else:
        parents: list[str] = []
        for controller in ("memory", "pids"):
            mount = os.path.join(root, controller)
            if not os.path.exists(os.path.join(mount, "cgroup.procs")):
                _cleanup(parents)
                return None, f"cgroup v1: no {controller} hierarchy at {mount}"
            parent = os.path.join(mount, own.get(controller, "/").lstrip("/"), name)
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                _cleanup(parents)
                return None, f"cgroup v1: cannot create {parent}: {exc}"
            parents.append(parent)
        groups = Cgroups(1, parents, memory_bytes, max_pids)
    try:
        groups.slot(0)
    except OSError as exc:
        groups.remove()
        return None, f"cgroup v{groups.version}: cannot set limits: {exc}"
    atexit.register(groups.remove)
    return groups, ""


def _enabled(base: str) -> bool:
    try:
        with open(os.path.join(base, "cgroup.subtree_control")) as f:
            return {"memory", "pids"} <= set(f.read().split())
    except OSError:
        return False


def _cleanup(dirs: list[str]) -> None:
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            pass
