"""Sandboxed execution of untrusted Python: what the ``code_exec`` reward and the ``python`` tool env share.

:class:`Sandbox` runs one program per call in a fresh directory under the limits of a :class:`SandboxConfig`:
bubblewrap when it is installed (namespaces, read-only system, a size-capped tmpfs), rlimits always, cgroups
when this process may create them (whole-run memory and process caps), a uid of its own when the trainer is
root; afterwards every process of the run is killed and reaped. :func:`run_program` is the one-call form
(``python solution.py`` with stdin, a :class:`RunResult` back).

Modules: ``sandbox`` (processes, limits, uids, clean-up), ``supervisor`` (the child subreaper that starts each
program; run by path), ``cgroups`` (whole-run limits), ``channel`` (the result socket whose writer pid the
kernel attests, used by code_exec's harness). What holds in each mode, and the residual risks: docs/sandbox.md.
This package is not a plugin: plugins import it, it imports only :mod:`rlvr.core`.
"""

from rlvr.sandbox.channel import ChannelLog, ResultChannel
from rlvr.sandbox.sandbox import (
    SANDBOX_MODES,
    RunResult,
    Sandbox,
    SandboxConfig,
    SandboxError,
    compiled,
    processes_of_uid,
    run_program,
    sweep_shared_tmp,
    uid_block,
)

__all__ = [
    "ChannelLog",
    "ResultChannel",
    "RunResult",
    "SANDBOX_MODES",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "compiled",
    "processes_of_uid",
    "run_program",
    "sweep_shared_tmp",
    "uid_block",
]
