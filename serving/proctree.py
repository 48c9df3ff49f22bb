"""Every process below a PID, for stopping what Tide started and for tests that check nothing was left behind.

psutil's `children(recursive=True)` drops a subtree when its root looks older than the starting process. It
compares wall-clock create times, and it reads the boot time afresh for each process, so a step of the VM's
clock between two reads can hide a live engine from a stop or a check. This walk trusts the parent links of
one pass over the process table; each `psutil.Process` still guards against PID reuse on its own (by the
monotonic start time) when it is signalled.
"""

from __future__ import annotations

from collections import defaultdict

import psutil


def descendants(pid: int) -> list[psutil.Process]:
    """The processes below `pid` (children first, then theirs), as the process table links them now."""
    kids: dict[int, list[psutil.Process]] = defaultdict(list)
    for p in psutil.process_iter(["ppid"]):
        if (ppid := p.info.get("ppid")) is not None:
            kids[ppid].append(p)
    out: list[psutil.Process] = []
    seen = {pid}
    stack = [pid]
    while stack:
        for child in kids.get(stack.pop(), []):
            if child.pid not in seen:
                seen.add(child.pid)
                out.append(child)
                stack.append(child.pid)
    return out
