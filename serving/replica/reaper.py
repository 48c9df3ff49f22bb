"""No vLLM engine process outlives the replica that started it.

vLLM 0.32's EngineCore has no parent-death check (its workers watch EngineCore through a pipe, but nothing
watches the replica), and its SIGTERM handler only flags a shutdown for its busy loop. So a replica actor
that dies without running its shutdown (`ray.kill`, SIGKILL, the OOM killer, a node drain, a signal to
`tide serve`'s process group) left EngineCore and its workers running under PID 1, holding memory and a core.

Each replica starts one small reaper process before its engine, in a session of its own (signals sent to the
replica's process group do not reach it). The reaper notes the replica's descendants every second, holds a
pidfd of the replica, and the moment the replica is gone it SIGKILLs every descendant it saw (EngineCore,
its workers, anything they started) and exits.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import psutil

POLL_S = 1.0  # how often the replica's descendants are noted (its death itself wakes the reaper at once)

Proc = tuple[int, float]  # (pid, create time): a PID alone may be reused


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/PID/task/*/children (cheap), else psutil's full scan."""
    try:
        out: list[int] = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
        return out
    except (OSError, ValueError):
        try:
            return [c.pid for c in psutil.Process(pid).children()]
        except psutil.Error:
            return []


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...)."""
    seen: list[int] = []
    todo = _children(pid)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.append(p)
            todo += _children(p)
    return seen


def identity(pid: int) -> Proc | None:
    """(pid, create time) of a live, non-zombie process, else None."""
    try:
        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE else (pid, p.create_time())
    except psutil.Error:
        return None


def _alive(proc: Proc) -> bool:
    now = identity(proc[0])
    return now is not None and abs(now[1] - proc[1]) < 0.01


def start_reaper(parent: int | None = None) -> subprocess.Popen:
    """Start the reaper of `parent` (default: this process). Call it before starting the engine."""
    me = identity(os.getpid() if parent is None else parent)
    assert me is not None
    return subprocess.Popen(
        [sys.executable, "-m", "serving.replica.reaper", f"{me[0]}:{me[1]!r}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


def kill_all(procs: list[Proc]) -> list[int]:
    """SIGKILL the processes of `procs` still alive, and everything below them; returns the PIDs signalled."""
    doomed = [p for p in procs if _alive(p)]
    for pid, _ in list(doomed):
        doomed += [x for x in (identity(d) for d in descendants(pid)) if x is not None and x not in doomed]
    for pid, _ in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return [pid for pid, _ in doomed]


def watch(parent: Proc) -> list[int]:
    """Note `parent`'s descendants until it exits, then kill them. Returns the PIDs it killed."""
    me = os.getpid()
    fd = None
    try:
        fd = os.pidfd_open(parent[0])  # readable the moment the parent exits
    except OSError:
        pass
    seen: list[Proc] = []
    while _alive(parent):
        seen = [p for p in seen if _alive(p)]
        for pid in descendants(parent[0]):
            p = identity(pid)
            if pid != me and p is not None and p not in seen:
                seen.append(p)
        select.select([fd] if fd is not None else [], [], [], POLL_S)
    return kill_all(seen)


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # only the replica's death ends the watch
        signal.signal(sig, signal.SIG_IGN)
    pid, created = argv[0].split(":", 1)
    watch((int(pid), float(created)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
