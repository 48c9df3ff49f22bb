"""Autoscaling on a real local cluster: queue depth grows a model, idleness shrinks it, zero wakes on demand.

Zero failed requests throughout: every request sent during scaling must be answered.
"""

import asyncio
import time

import httpx
from openai import AsyncOpenAI

from .conftest import running_replicas


def wait_for(pred, timeout_s: float, step_s: float = 1.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step_s)
    return pred()


async def _load(url: str, model: str, stop: asyncio.Event, concurrency: int) -> tuple[int, list[str]]:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
    ok, errors = 0, []

    async def worker():
        nonlocal ok
        while not stop.is_set():
            try:
                stream = await client.completions.create(model=model, prompt="hello", max_tokens=96, stream=True,
                                                         extra_body={"ignore_eos": True})
                async for _ in stream:
                    pass
                ok += 1
            except Exception as e:  # any failure fails the test
                errors.append(repr(e))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return ok, errors


async def _store_response(url: str) -> tuple[dict, str]:
    """A Responses-API answer stored while tiny-auto has one replica: (the response, the replica that holds it)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        r = await c.post("/v1/responses", json={"model": "tiny-auto", "input": "Say hi", "max_output_tokens": 4})
        assert r.status_code == 200, r.text
        return r.json(), r.headers["x-tide-replica"]


async def _follow_up_elsewhere(url: str, first: dict, holder: str, limit_s: float = 90) -> dict[str, int]:
    """Follow-ups of `first` until one is answered by a replica other than `holder` (vLLM alone keeps a response
    only in the replica that wrote it): each must see the first turn. Replica -> follow-ups it answered."""
    served: dict[str, int] = {}
    end = time.monotonic() + limit_s
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        while time.monotonic() < end and set(served) <= {holder}:
            r = await c.post("/v1/responses", json={"model": "tiny-auto", "input": "And again",
                                                    "previous_response_id": first["id"], "max_output_tokens": 2})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["input_tokens"] > first["usage"]["input_tokens"]  # the first turn is in
            replica = r.headers["x-tide-replica"]
            served[replica] = served.get(replica, 0) + 1
            await asyncio.sleep(0.2)
        stored = await c.get(f"/v1/responses/{first['id']}")  # no model to route by: any replica reads it
        assert stored.status_code == 200 and stored.json()["id"] == first["id"], stored.text
    return served


def _tide_metrics(url: str, model: str) -> dict:
    """Tide's own samples for `model` on `/metrics` (the stats hub's pipeline, the one the status pages read),
    by (name, action label)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, s.labels.get("action")): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.labels.get("model_name") == model and s.name.startswith("tide_")}


def test_burst_scales_up_then_back_down_with_no_failed_request(tide_url):
    assert running_replicas("tiny-auto") == 1
    before = _tide_metrics(tide_url, "tiny-auto")

    async def scenario():
        first, holder = await _store_response(tide_url)
        stop = asyncio.Event()
        load = asyncio.create_task(_load(tide_url, "tiny-auto", stop, concurrency=16))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 240 and running_replicas("tiny-auto") < 2:
            await asyncio.sleep(1)
        scaled_after = time.monotonic() - t0
        served_by = await _follow_up_elsewhere(tide_url, first, holder) if running_replicas("tiny-auto") == 2 else {}
        await asyncio.sleep(2)  # both replicas serve for a moment
        stop.set()
        ok, errors = await load
        return scaled_after, ok, errors, served_by, holder

    scaled_after, ok, errors, served_by, holder = asyncio.run(scenario())
    assert running_replicas("tiny-auto") == 2, f"did not reach 2 replicas within {scaled_after:.0f}s"
    assert set(served_by) - {holder}, f"no follow-up reached a replica other than {holder}: {served_by}"
    assert errors == [] and ok > 0
    assert wait_for(lambda: running_replicas("tiny-auto") == 1, 120), "did not scale back to min_replicas"
    # Both decisions reached /metrics, and the target with them.
    after: dict = {}
    count = lambda m, action: m.get(("tide_autoscaler_decisions_total", action), 0)  # noqa: E731
    assert wait_for(lambda: after.update(_tide_metrics(tide_url, "tiny-auto")) or (
        count(after, "scale_down") > count(before, "scale_down")), 30), (before, after)
    assert count(after, "scale_up") > count(before, "scale_up") and after[("tide_replicas_desired", None)] == 1


def test_scale_to_zero_holds_requests_with_heartbeats_caps_them_and_answers(client, tide_url):
    import httpx

    assert wait_for(lambda: running_replicas("tiny-zero") == 0, 120), "tiny-zero did not scale to zero"
    time.sleep(1.5)  # the ingress refreshes replica counts every 0.5 s
    chat = {"model": "tiny-zero", "messages": [{"role": "user", "content": "wake up"}], "max_tokens": 4}

    async def scenario():
        async with httpx.AsyncClient(base_url=tide_url, timeout=300) as http:
            async def stream(body):
                lines = []
                async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line:
                            lines.append(line)
                return lines

            held = [asyncio.create_task(stream(chat)), asyncio.create_task(stream(vllm_chat)),
                    asyncio.create_task(http.post("/v1/chat/completions", json=chat))]
            await asyncio.sleep(0.5)
            extra = await asyncio.gather(*(http.post("/v1/chat/completions", json=b) for b in (chat, vllm_chat)))
            return [await h for h in held], extra

    vllm_chat = {**chat, "min_p": 0.0}  # a vLLM-only field: served by vLLM's own OpenAI layer in the replica
    (lines, vllm_lines, whole), extra = asyncio.run(scenario())
    # held: both streams (Tide's path and vLLM's layer) got comment heartbeats while the replica started,
    # then content and [DONE]
    for stream_lines in (lines, vllm_lines):
        assert any(l.startswith(": waiting for a replica") for l in stream_lines)
        assert stream_lines[-1] == "data: [DONE]" and any('"content"' in l for l in stream_lines), stream_lines
    assert whole.status_code == 200 and whole.json()["usage"]["completion_tokens"] == 4
    # over max_held_requests (3): told to come back, with a Retry-After computed from the expected start
    for r in extra:
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "too_many_held_requests"
    assert running_replicas("tiny-zero") == 1
    # the other models kept serving while it was cold
    assert client.completions.create(model="tiny", prompt="hi", max_tokens=2).usage.completion_tokens == 2


def test_fixed_model_is_not_autoscaled():
    assert running_replicas("tiny") == 1
