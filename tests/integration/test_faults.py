"""Faults on the real stack: client disconnects abort in the engine, deadlines, a killed replica, a stuck engine.

Abort latency is measured from the engine's own count of unfinished requests (`LLMServer.load`), polled
through a DeploymentHandle, not from a log line. The replica-killing tests run last in this file and wait
until the model is healthy again, so the tests after them see a normal cluster.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from .headnode import wait_healthy

pytestmark = pytest.mark.integration

LONG = {"prompt": "go", "max_tokens": 1000, "ignore_eos": True, "temperature": 0}


def _handle(model: str):
    from ray import serve

    from serving.app import APP_NAME
    from serving.config import deployment_name

    return serve.get_deployment_handle(deployment_name(model), app_name=APP_NAME)


def _load(model: str) -> dict:
    return _handle(model).load.remote().result(timeout_s=10)


def _unfinished(model: str) -> int:
    return _load(model)["unfinished"]


def _seconds_until_idle(model: str, t0: float, limit: float = 10.0) -> float:
    while _unfinished(model) > 0:
        if time.monotonic() - t0 > limit:
            break
        time.sleep(0.02)
    return time.monotonic() - t0


_wait_healthy = wait_healthy


def test_stream_disconnect_aborts_in_engine_within_1s(tide_url, model_name):
    # Warm the handle first: its first call sets up a router (about a second), long enough for the tiny model
    # to finish the whole request on its own.
    before = _load(model_name)
    assert before["unfinished"] == 0
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", f"{tide_url}/v1/completions", json={"model": model_name, "stream": True, **LONG}) as r:
            assert r.status_code == 200
            events = 0
            for line in r.iter_lines():
                events += line.startswith("data: {")
                if events >= 3:
                    assert _unfinished(model_name) == 1  # generating, 3 chunks in
                    t0 = time.monotonic()
                    break  # closing the line iterator closes the response: the client is gone from here
    waited = _seconds_until_idle(model_name, t0)
    print(f"stream abort latency: {waited * 1000:.0f} ms")
    assert waited < 1.0
    assert _load(model_name)["aborted"] == before["aborted"] + 1  # aborted, not finished on its own


def test_non_streamed_disconnect_aborts_in_engine_within_1s(tide_url, model_name):
    before = _load(model_name)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{tide_url}/v1/completions", json={"model": model_name, **LONG}, timeout=0.5)
    t0 = time.monotonic()
    waited = _seconds_until_idle(model_name, t0)
    print(f"non-streamed abort latency: {waited * 1000:.0f} ms")
    assert waited < 1.0
    assert _load(model_name)["aborted"] == before["aborted"] + 1


def test_request_timeout_header(tide_url, model_name):
    url = f"{tide_url}/v1/completions"
    r = httpx.post(url, json={"model": model_name, **LONG}, headers={"X-Request-Timeout": "0.3"}, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert _seconds_until_idle(model_name, time.monotonic()) < 1.0  # the timed-out request was aborted too
    with httpx.stream("POST", url, json={"model": model_name, "stream": True, **LONG},
                      headers={"X-Request-Timeout": "0.5"}, timeout=30) as s:
        assert s.status_code == 200
        data = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert json.loads(data[-1])["error"]["code"] == "timeout" and "[DONE]" not in data
    bad = httpx.post(url, json={"model": model_name, "prompt": "x", "max_tokens": 2},
                     headers={"X-Request-Timeout": "soon"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Request-Timeout"


def test_ingress_process_runs_with_bounded_malloc_arenas(tide_url):
    """The ingress's RSS stays flat only with few glibc arenas; the variable must be in its process environment."""
    import ray

    pids = [a["Pid"] for a in ray._private.state.actors(actor_state_name="ALIVE").values()
            if a["ActorClassName"].endswith("Ingress")]
    assert pids, "no live ingress replica"
    for pid in pids:
        assert psutil.Process(pid).environ().get("MALLOC_ARENA_MAX") == "2"


def _replica_actor(model: str) -> str:
    """The name of the model's one replica actor (named actors need no dashboard, unlike ray.util.state)."""
    import ray

    from serving.config import deployment_name

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and f"#{deployment_name(model)}#" in a["name"]]
    alive = []
    for n in names:
        try:
            ray.get_actor(n, namespace="serve")
            alive.append(n)
        except ValueError:
            pass
    assert len(alive) == 1, alive
    return alive[0]


def test_killed_replica_retries_unstarted_requests_and_ends_started_streams(tide_url, model_name, tide_config):
    import ray

    victim = _replica_actor(model_name)
    started = threading.Event()

    def stream() -> list[str]:
        with httpx.stream("POST", f"{tide_url}/v1/completions", json={"model": model_name, "stream": True, **LONG},
                          timeout=120) as s:
            out = []
            try:
                for line in s.iter_lines():
                    if line.startswith("data: "):
                        out.append(line[6:])
                        started.set()
            except httpx.RemoteProtocolError:  # HAProxy passes the replica's death on as a cut stream
                out.append("cut")
            return out

    def whole() -> httpx.Response:
        return httpx.post(f"{tide_url}/v1/completions", timeout=180,
                          json={"model": model_name, "prompt": "hi", "max_tokens": 300, "ignore_eos": True})

    with ThreadPoolExecutor(8) as pool:
        s = pool.submit(stream)
        assert started.wait(30)
        before = [pool.submit(whole) for _ in range(4)]  # in flight on the replica when it dies
        time.sleep(0.3)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        after = [pool.submit(whole) for _ in range(2)]  # arrive while no replica is up
        events = s.result(timeout=150)
        responses = [f.result(timeout=200) for f in before + after]
    if tide_config.server.front == "haproxy":  # ended, did not hang; no [DONE] claims it finished
        assert events[-1] == "cut" or json.loads(events[-1])["error"], events[-3:]
    else:  # the ingress says why in band
        assert json.loads(events[-1])["error"]["type"] == "service_unavailable_error"
    assert [r.status_code for r in responses] == [200] * 6, [r.text[:200] for r in responses]
    assert all(r.json()["usage"]["completion_tokens"] == 300 for r in responses)
    _wait_healthy(tide_url)
    assert _replica_actor(model_name) != victim


def test_stuck_engine_fails_health_check_and_its_request_is_retried(tide_url, model_name):
    victim = _replica_actor(model_name)
    children = psutil.Process(_handle(model_name).load.remote().result(timeout_s=10)["pid"]).children(recursive=True)
    assert children, "the replica should own the engine's processes"
    for ch in children:
        os.kill(ch.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = httpx.post(f"{tide_url}/v1/completions", timeout=180,
                       json={"model": model_name, "prompt": "hi", "max_tokens": 8})
        took = time.monotonic() - t0
        print(f"request through a stuck engine answered after {took:.1f}s")
        assert r.status_code == 200, r.text
        assert _replica_actor(model_name) != victim
    finally:
        for ch in children:
            try:
                os.kill(ch.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _wait_healthy(tide_url)
