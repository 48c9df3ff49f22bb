"""The engine reaper on real processes (no Ray, no vLLM): a parent that starts a reaper and then a child and a
grandchild (as a replica starts EngineCore, which starts its worker) is SIGKILLed; both must be gone at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from serving.replica.reaper import descendants

PARENT = r"""
import subprocess, sys, time
from serving.replica.reaper import start_reaper
reaper = start_reaper()
child = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "time.sleep(600)"], start_new_session=True)  # its own group: a signal to the parent's group misses it
print(reaper.pid, child.pid, flush=True)
time.sleep(600)
"""


def _gone(pids: list[int], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.1)
    return False


def _start() -> tuple[subprocess.Popen, int, list[int]]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    reaper, child = map(int, parent.stdout.readline().split())
    deadline = time.monotonic() + 10
    while len(descendants(child)) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # the reaper notes descendants once a second
    return parent, reaper, [child, *descendants(child)]


def test_sigkilled_parent_takes_child_and_grandchild_along():
    parent, reaper, doomed = _start()
    assert len(doomed) == 2
    t0 = time.monotonic()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _gone(doomed, 5), "the parent's processes outlived it"
    assert time.monotonic() - t0 < 3
    assert _gone([reaper], 5), "the reaper did not exit after its work"


def test_reaper_ignores_the_signals_a_process_group_gets():
    parent, reaper, doomed = _start()
    os.kill(reaper, signal.SIGTERM)
    os.kill(reaper, signal.SIGINT)
    time.sleep(0.3)
    assert psutil.Process(reaper).status() != psutil.STATUS_ZOMBIE
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _gone(doomed + [reaper], 5)
