"""rlvr.core.resources.reuse_freed_memory: glibc keeps the blocks a step frees, so the next step does not fault
on fresh pages."""

from __future__ import annotations

import platform
import resource
import sys

import pytest
import torch

from rlvr.core.resources import reuse_freed_memory


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's (Linux)")
def test_freed_blocks_are_reused_without_page_faults():
    assert reuse_freed_memory() is True
    assert reuse_freed_memory() is True  # idempotent

    def faults_of_alloc() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.empty(4 * 2**20 // 4)  # 4 MiB, above glibc's default 128 KiB mmap threshold
        x.fill_(1.0)  # every page written once
        del x
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_alloc()  # the heap grows once
    assert min(faults_of_alloc() for _ in range(3)) < 100  # then the same 4 MiB come back (1024 pages if fresh)


def test_off_linux_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert reuse_freed_memory() is False
