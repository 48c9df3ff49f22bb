"""serving/proctree.py: every process below a PID, whatever the wall clock does."""

from __future__ import annotations

import itertools
import os
import subprocess
import time

import psutil
import pytest

from serving.proctree import descendants


@pytest.fixture
def grandchildren():
    """A shell with two sleeping children: a tree two levels deep below this process."""
    shell = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60 & wait"])
    deadline = time.monotonic() + 10
    while len(psutil.Process(shell.pid).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    yield shell
    for p in [*psutil.Process(shell.pid).children(), psutil.Process(shell.pid)]:
        p.kill()
    shell.wait()


def _pids(procs: list[psutil.Process]) -> set[int]:
    return {p.pid for p in procs}


def test_children_and_grandchildren_are_found(grandchildren):
    below = _pids(descendants(os.getpid()))
    sleeps = _pids(psutil.Process(grandchildren.pid).children())
    assert len(sleeps) == 2 and {grandchildren.pid, *sleeps} <= below
    assert os.getpid() not in below
    assert _pids(descendants(grandchildren.pid)) == sleeps


def test_a_clock_step_between_reads_hides_nothing(grandchildren, monkeypatch):
    """psutil's children(recursive=True) reads the boot time afresh for each process it compares: when the
    wall clock steps back between reads, it drops the subtree. The walk here does not compare times."""
    import psutil._pslinux as linux

    real = linux.boot_time()
    steps = itertools.count()
    monkeypatch.setattr(linux, "boot_time", lambda: real - 3600 * next(steps))  # an hour back at every read
    assert grandchildren.pid not in _pids(psutil.Process().children(recursive=True))  # what psutil does then
    assert grandchildren.pid in _pids(descendants(os.getpid()))
