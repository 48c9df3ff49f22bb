"""Where a server's CPU goes, process by process: each process under the server's roots gets a role (the
engine, HAProxy, the ingress, a model replica, Ray's own daemons...), and a run's CPU seconds per role are what
bench_serving.py divides by the requests served. `--py-spy` profiles the request-path Python processes
(benchmarks/pyspy_top.py reads the result)."""

from __future__ import annotations

import collections
import statistics
import subprocess
import sys
from pathlib import Path

import psutil

from serving.proctree import descendants

ROLES = [  # (role, what its command line holds), first match wins, after the engine (role_of)
    ("haproxy", "haproxy"), ("ingress", "ServeReplica:tide:Ingress"),
    ("model replica", "ServeReplica:"), ("CLI", "serving.cli"), ("CLI", "bin/tide "), ("CLI", "rayllm_server"),
    ("vLLM API server", "vllm.entrypoints"), ("vLLM API server", "vllm serve"),
    ("Serve controller", "ServeController"), ("Serve proxy", "ProxyActor"), ("GCS", "gcs_server"),
    ("raylet", "raylet"), ("Ray agents", "agent"), ("Ray agents", "log_monitor"), ("Ray agents", "monitor"),
    ("Ray idle workers", "ray::IDLE"), ("Ray idle workers", "default_worker"),
]


def role_of(cmdline: str) -> str:
    """The role of a process by its command line; vLLM's EngineCore and workers carry titles `VLLM::...`."""
    if cmdline.startswith("VLLM::"):
        return "engine"
    return next((role for role, mark in ROLES if mark in cmdline), "other")


def cpu_by_process(roots: list[int]) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process under `roots` (Ray's, HAProxy, the engines...), each with its role
    (`engine`: vLLM's EngineCore or a worker, process titles `VLLM::...`)."""
    out = {}
    for root in roots:
        try:
            procs = [psutil.Process(root), *descendants(root)]
        except psutil.Error:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                out[q.pid] = (role_of(" ".join(q.cmdline())), t.user + t.system)
            except psutil.Error:
                pass
    return out


def cpu_delta(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent by each role between two `cpu_by_process` readings."""
    roles: dict[str, float] = {}
    for pid, (role, t) in after.items():
        roles[role] = roles.get(role, 0.0) + t - before.get(pid, (role, 0.0))[1]
    return roles


SPIED = ("model replica", "ingress", "vLLM API server")  # the Python processes on the request path


def start_spies(cpu: dict[int, tuple[str, float]], name: str, seconds: float, out: Path) -> list[subprocess.Popen]:
    """py-spy on each request-path process of a server for `seconds` (raw stacks: benchmarks/pyspy_top.py)."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        raise SystemExit("--py-spy needs py-spy in this environment (pip install py-spy)")
    procs, seen = [], collections.Counter()
    for pid, (role, _) in sorted(cpu.items()):
        if role in SPIED:
            seen[role] += 1
            path = out / f"pyspy-{name}-{role.replace(' ', '-')}{'-%d' % seen[role] if seen[role] > 1 else ''}.txt"
            procs.append(subprocess.Popen([str(spy), "record", "--nonblocking", "-f", "raw", "-d", str(int(seconds)),
                                           "-o", str(path), "-p", str(pid)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            print(f"  py-spy on {role} (pid {pid}) -> {path}", flush=True)
    return procs


def breakdown(results: dict, servers: list[str], concs: list[int]) -> str:
    """CPU ms per request of each role outside the engine (median over rounds): where the time goes."""
    roles = sorted({k for r in results.values() for d in r["roles_ms"] for k in d if k != "engine"},
                   key=lambda k: -statistics.median(d.get(k, 0.0) for r in results.values() for d in r["roles_ms"]))
    lines = ["| server | conc | " + " | ".join(roles) + " | all but engine |", "|---|---|" + "---|" * (len(roles) + 1)]
    for c in concs:
        for name in servers:
            r = results.get((name, c))
            if not r:
                continue
            med = {k: statistics.median(d.get(k, 0.0) for d in r["roles_ms"]) for k in roles}
            lines.append(f"| {name} | {c} | " + " | ".join(f"{med[k]:.1f}" if med[k] >= 0.05 else "-" for k in roles)
                         + f" | {statistics.median(r['other_ms']):.1f} |")
    return "\n".join(lines)
