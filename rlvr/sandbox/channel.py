"""The trainer's end of the result channel: which process wrote what, checked by the kernel.

A Unix stream socket pair; our end has ``SO_PASSCRED``, so every chunk we read carries the pid
of the process that wrote it (the kernel fills it in; a process cannot claim another's pid
without ``CAP_SYS_ADMIN``, which sandboxed code never has), translated into our pid namespace
(bubblewrap's pid namespace does not hide it). The stream never merges chunks from different
writers. Rules (any break is a *violation*: every test of the run fails):

- the first chunk is the harness's hello, written before the solution was imported: its pid is
  *the harness*; we open a pidfd on it (so that a later process reusing the number is told
  apart: once the harness has exited and its chunks are drained, nothing more is accepted) and
  only then send the one-byte go-ahead the harness waits for;
- every later chunk must come from that pid (a forked child, a helper process: violation);
- frames are ``4-byte length + JSON``, within ``max_bytes`` in all; a malformed frame, a second
  hello, anything after "done", or a tamper report is a violation.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Optional

_UCRED = struct.Struct("3i")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


@dataclass
class ChannelLog:
    """What the harness said, after the protocol checks."""

    executions: dict[int, list[list[Any]]] = field(default_factory=dict)  # check -> slot lists, in order
    steps: dict[int, str] = field(default_factory=dict)  # step -> "" or the exception it raised
    load_error: str = ""
    done: bool = False
    violation: str = ""


class ResultChannel:
    """Our end of the harness's result socket (non-blocking; fed by the run loop)."""

    def __init__(self, max_bytes: int, slot_counts: list[int]):
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.ours.setblocking(False)
        self.max_bytes = max_bytes
        self.slot_counts = slot_counts
        self.harness_pid: Optional[int] = None
        self.pidfd = -1
        self.harness_gone = False
        self.received = 0
        self.buf = bytearray()
        self.frames = 0
        self.log = ChannelLog()

    # -- plumbing -------------------------------------------------------------------------------
    def child_fd(self) -> int:
        """The fd to pass to the sandbox (inheritable)."""
        fd = self.theirs.fileno()
        os.set_inheritable(fd, True)
        return fd

    def close_child_end(self) -> None:
        self.theirs.close()

    def fileno(self) -> int:
        return self.ours.fileno()

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def violate(self, why: str) -> None:
        if not self.log.violation:
            self.log.violation = why

    # -- reading --------------------------------------------------------------------------------
    def read_available(self) -> bool:
        """Read what is there; False at EOF (or after a violation: stop listening)."""
        while True:
            try:
                data, anc, _, _ = self.ours.recvmsg(65536, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not data:
                return False
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            if pid is None or pid <= 0:
                self.violate("a result arrived without the sender's credentials")
                return False
            if self.harness_pid is None:
                self._pin(pid)
            elif pid != self.harness_pid:
                self.violate(
                    f"a result came from process {pid}, not from the harness ({self.harness_pid}): "
                    "a forked child or another process wrote to the channel"
                )
                return False
            elif self.harness_gone:
                self.violate(
                    f"a result carrying the harness's pid {pid} arrived after the harness had exited (pid reuse)"
                )
                return False
            self.received += len(data)
            if self.received > self.max_bytes:
                self.violate(f"the harness sent more than {self.max_bytes} bytes of results")
                return False
            self.buf += data
            if not self._parse():
                return False

    def _pin(self, pid: int) -> None:
        self.harness_pid = pid
        try:
            self.pidfd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self.pidfd = -1  # no pidfd (old kernel): pid reuse after exit is not detected (docs/sandbox.md)
        try:
            self.ours.send(b"k")
        except OSError:
            pass

    def harness_exited(self) -> bool:
        """Whether the pinned harness process has exited (pidfd readable)."""
        if self.pidfd < 0:
            return False
        import select

        return bool(select.select([self.pidfd], [], [], 0)[0])

    def mark_harness_gone(self) -> None:
        """After the harness exited: drain what it wrote, then accept nothing more."""
        self.read_available()
        self.harness_gone = True

    def _parse(self) -> bool:
        while len(self.buf) >= 4:
            (n,) = struct.unpack(">I", self.buf[:4])
            if n > self.max_bytes:
                self.violate("a result frame is larger than the cap")
                return False
            if len(self.buf) < 4 + n:
                return True
            frame = bytes(self.buf[4 : 4 + n])
            del self.buf[: 4 + n]
            try:
                msg = json.loads(frame, parse_constant=_reject_constant)
            except (ValueError, RecursionError):
                self.violate("a malformed result frame")
                return False
            if not self._accept(msg):
                return False
        return True

    def _accept(self, msg: Any) -> bool:  # noqa: C901 - one protocol table
        log = self.log
        first = self.frames == 0
        self.frames += 1
        if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
            self.violate("a result frame of the wrong shape")
            return False
        tag = msg[0]
        if first != (tag == "h"):
            self.violate("the first frame was not the harness's hello" if first else "a second hello")
            return False
        if log.done:
            self.violate("a result arrived after the harness said it was done")
            return False
        if tag == "h" and len(msg) == 1:
            return True
        if tag == "a" and len(msg) == 3 and type(msg[1]) is int and isinstance(msg[2], list):
            index, slots = msg[1], msg[2]
            if not 0 <= index < len(self.slot_counts) or len(slots) != self.slot_counts[index]:
                self.violate(f"a result for check {index} with {len(slots)} values")
                return False
            for s in slots:
                if not (
                    isinstance(s, list)
                    and len(s) == 2
                    and s[0] in ("v", "e", "u")
                    and (s[0] == "v" or isinstance(s[1], str))
                ):
                    self.violate(f"a malformed value in the result for check {index}")
                    return False
            log.executions.setdefault(index, []).append(slots)
            return True
        if tag == "s" and len(msg) == 3 and type(msg[1]) is int and isinstance(msg[2], str):
            if msg[1] in log.steps:
                self.violate(f"step {msg[1]} reported twice")
                return False
            log.steps[msg[1]] = msg[2]
            return True
        if tag == "l" and len(msg) == 2 and isinstance(msg[1], str):
            log.load_error = msg[1] or "error"
            return True
        if tag == "x" and len(msg) == 2 and isinstance(msg[1], str):
            self.violate(f"the harness saw tampering: {msg[1][:200]}")
            return False
        if tag == "d" and len(msg) == 1:
            log.done = True
            return True
        self.violate(f"an unknown result frame {str(msg)[:80]!r}")
        return False
