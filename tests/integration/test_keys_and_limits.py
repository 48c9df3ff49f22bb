"""API keys, per-key rate limits and the bounded queue on a real cluster, deployed with `tide deploy`.

Its own Ray head (tests/integration/headnode.py), because auth is server-wide and the session cluster runs
without keys. One key comes from the config (as a SHA-256 digest, 3 requests/min), one from $TIDE_API_KEYS
(hashed where `tide deploy` runs; its raw value must appear in no log).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from serving.gate.auth import hash_key
from serving.launcher import free_port

from .headnode import ray_head, tide, tiny_config

pytestmark = pytest.mark.integration
ENV_KEY = "sk-env-7c1e0f2b9a4d"  # raw; only its digest may travel through Ray
LIMITED_KEY = "sk-limited-31d5a8"
LONG = {"model": "tiny", "prompt": "go", "max_tokens": 400, "ignore_eos": True, "temperature": 0}


def _error(r: httpx.Response | str) -> dict:
    """The OpenAI-style error object of a response (or of its body text), checked for its four fields."""
    err = json.loads(r)["error"] if isinstance(r, str) else r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.fixture(scope="module")
def served():
    data = tiny_config(free_port())
    data["server"]["auth"] = {"keys": [{"name": "limited", "sha256": hash_key(LIMITED_KEY),
                                        "requests_per_minute": 3}]}
    m = data["models"][0]
    m["engine_args"].update(max_num_seqs=1, max_model_len=2048)  # one request runs at a time ...
    m["admission"] = {"max_queued": 1}  # ... one more may wait; the rest get 429
    with ray_head(data) as head:
        # `tide deploy` hashes $TIDE_API_KEYS where it runs; the app then serves on the cluster
        env = {**os.environ, "TIDE_API_KEYS": f"{ENV_KEY}, sk-second-key"}
        r = tide("deploy", str(head.models), "--address", head.address, "--timeout", "300", env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        (head.tmp / "tide-deploy.log").write_text(r.stdout + r.stderr)
        yield f"http://127.0.0.1:{head.http_port}", head.tmp


def test_without_a_key_the_api_says_401_but_health_and_pages_stay_open(served):
    url, _ = served
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{url}/", timeout=30).status_code == 200
    for method, path in [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
                         ("GET", "/metrics"), ("GET", "/tide/status")]:
        r = httpx.request(method, f"{url}{path}", json={"model": "tiny", "prompt": "x"}, timeout=30)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert _error(r)["type"] == "invalid_request_error"
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"},
                   headers={"Authorization": "Bearer sk-not-a-key"}, timeout=30)
    assert r.status_code == 401 and _error(r)["code"] == "invalid_api_key" and "sk-not-a-key" not in r.text


def test_a_key_from_the_environment_works_with_the_openai_client(served):
    url, _ = served
    client = OpenAI(base_url=f"{url}/v1", api_key=ENV_KEY, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert out.usage.completion_tokens >= 1
    chunks = list(client.completions.create(model="tiny", prompt="a", max_tokens=5, stream=True))
    assert chunks and all(c.object == "text_completion" for c in chunks)
    raw = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 3, "stream": True},
                     headers={"x-api-key": "sk-second-key"}, timeout=60)
    assert raw.status_code == 200 and raw.text.rstrip().endswith("data: [DONE]")
    assert "tide-usage" not in raw.text  # the replica's usage comment is for the ingress only


def test_per_key_request_limit_gives_429_with_retry_after(served):
    url, _ = served
    hdrs = {"Authorization": f"Bearer {LIMITED_KEY}"}
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
    ok = [httpx.post(f"{url}/v1/completions", json=body, headers=hdrs, timeout=60) for _ in range(3)]
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert ok[-1].headers["x-ratelimit-limit-requests"] == "3"
    assert ok[-1].headers["x-ratelimit-remaining-requests"] == "0"
    r = httpx.post(f"{url}/v1/completions", json=body, headers=hdrs, timeout=60)
    assert r.status_code == 429, r.text
    assert _error(r)["code"] == "rate_limit_exceeded" and "limited" in _error(r)["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 20  # 3/min: a request comes back every 20 s
    # other keys are not affected
    assert httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {ENV_KEY}"},
                      timeout=60).status_code == 200


def _status(url: str, hdrs: dict[str, str]) -> dict:
    return httpx.get(f"{url}/tide/status", headers=hdrs, timeout=30).json()["models"]["tiny"]


def test_past_the_bounded_queue_requests_get_429_and_admitted_ones_finish(served):
    """Capacity 1 (one replica, max_num_seqs 1) + queue 1. The overlap is proven, not hoped for: the burst is sent
    only once a first request streams in the engine, and every 429 must come back before that request ends.

    The burst's five connections are opened beforehand and its requests written in one tight loop: with six
    client threads parsing HTTP on a loaded 2-core machine, a thread-pool burst once reached the front over 4 s,
    its tail after the first request had ended."""
    url, _ = served
    hdrs = {"Authorization": f"Bearer {ENV_KEY}", "Content-Type": "application/json"}
    first_chunk = threading.Event()
    first: dict = {}

    def stream_first() -> None:
        tail = b""
        with httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "max_tokens": 2000, "stream": True},
                          headers=hdrs, timeout=180) as r:
            for chunk in r.iter_raw():
                if b"data: {" in chunk:
                    first_chunk.set()
                tail = (tail + chunk)[-200:]
        first.update(status=r.status_code, tail=tail.decode(errors="replace"), ended=time.monotonic())

    host, port = url.removeprefix("http://").split(":")
    conns = [http.client.HTTPConnection(host, int(port), timeout=180) for _ in range(5)]
    for c in conns:
        c.connect()

    def answer(c: http.client.HTTPConnection) -> tuple[int, http.client.HTTPMessage, str, float]:
        r = c.getresponse()
        at = time.monotonic()
        return r.status, r.headers, r.read().decode(), at

    body = json.dumps(LONG)
    with ThreadPoolExecutor(6) as pool:
        running = pool.submit(stream_first)
        assert first_chunk.wait(60), "the first request never started streaming"
        sent = time.monotonic()
        for c in conns:
            c.request("POST", "/v1/completions", body, hdrs)
        burst = list(pool.map(answer, conns))
        running.result()
    for c in conns:
        c.close()
    assert first["status"] == 200 and first["tail"].rstrip().endswith("data: [DONE]")
    rejected = [at for code, _, _, at in burst if code == 429]
    assert all(at < first["ended"] for at in rejected), ("a 429 came after the first request ended: no overlap",
                                                         sent, rejected, first["ended"])
    codes = sorted(code for code, _, _, _ in burst)
    assert codes == [200, 429, 429, 429, 429], [text[:200] for _, _, text, _ in burst]  # one waits in the queue
    for code, headers, text, _ in burst:
        if code == 429:
            assert _error(text)["code"] == "model_overloaded"
            assert 1 <= int(headers["retry-after"]) <= 60
        else:
            assert json.loads(text)["usage"]["completion_tokens"] == 400  # the queued request finishes in full
    deadline = time.monotonic() + 10  # the ingress pushes its counts to the stats hub every 0.5 s
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics", headers=hdrs, timeout=30).text
        if 'reason="queue_full"' in metrics:
            break
        time.sleep(0.5)
    assert 'reason="queue_full"' in metrics and 'reason="unauthorized"' in metrics
    # the queue drained: a new request is admitted again
    assert _status(url, hdrs)["in_flight"] == 0
    assert httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 2}, headers=hdrs,
                      timeout=60).status_code == 200


def test_no_raw_key_in_any_log(served):
    _, tmp = served
    leaked = []
    for f in Path(tmp).rglob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000:
            text = f.read_bytes()
            if ENV_KEY.encode() in text or LIMITED_KEY.encode() in text:
                leaked.append(str(f))
    assert not leaked, leaked
