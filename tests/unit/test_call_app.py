"""call_app: the in-process ASGI driver of vLLM's app in a replica (chunk merging, endings, errors)."""

import asyncio

import pytest

from serving.replica.openai_app import call_app


def sse_app(events: list[bytes], pause_s: float, fail: bool = False):
    async def app(scope, receive, send):
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for e in events:
            await send({"type": "http.response.body", "body": e, "more_body": True})
            await asyncio.sleep(pause_s)
        if fail:
            raise RuntimeError("engine gone")
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
    return app


async def collect(app, gap_s: float) -> list:
    return [x async for x in call_app(app, "POST", "/v1/completions", b"{}", {}, gap_s=gap_s)]


EVENTS = [f"data: {i}\n\n".encode() for i in range(12)]


def test_no_gap_keeps_every_chunk():
    out = asyncio.run(collect(sse_app(EVENTS, 0.001), 0.0))
    assert out[0] == (200, [("content-type", "text/event-stream")])
    assert out[1:] == EVENTS + [b"data: [DONE]\n\n"]


def test_gap_merges_what_arrived_meanwhile_in_order():
    out = asyncio.run(collect(sse_app(EVENTS, 0.005), 0.04))
    body = out[1:]
    assert b"".join(body) == b"".join(EVENTS) + b"data: [DONE]\n\n"
    assert body[0] == EVENTS[0] and body[1] == EVENTS[1]  # the first events are not held back
    assert len(body) < len(EVENTS) // 2  # 12 events 5 ms apart, sent at most every 40 ms


def test_gap_keeps_the_end_when_the_app_finishes_during_the_wait():
    out = asyncio.run(collect(sse_app(EVENTS[:3], 0.0), 0.05))
    assert b"".join(out[1:]) == b"".join(EVENTS[:3]) + b"data: [DONE]\n\n"


def test_app_error_after_start_reaches_the_caller():
    with pytest.raises(RuntimeError, match="engine gone"):
        asyncio.run(collect(sse_app(EVENTS[:4], 0.0, fail=True), 0.01))


def test_whole_json_answer_is_one_chunk():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b'{"error": 1}'})
    assert asyncio.run(collect(app, 0.05)) == [(400, []), b'{"error": 1}']


def test_a_caller_that_leaves_stops_a_vllm_handler_waiting_on_the_engine():
    """vLLM's routes run under its `with_cancellation`: the handler stops when the client's disconnect arrives.
    (Cancelling the app's task instead would leave that handler running: the engine would go on generating.)"""
    from fastapi import FastAPI, Request
    from vllm.entrypoints.serve.utils.api_utils import with_cancellation

    app = FastAPI()
    seen: list[str] = []

    @app.post("/v1/completions")
    @with_cancellation
    async def slow(raw_request: Request):
        seen.append("started")
        try:
            await asyncio.sleep(30)  # a whole (non-streamed) answer: nothing is sent before it is done
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return {"never": True}

    async def go():
        consumer = asyncio.ensure_future(collect(app, 0.0))
        await asyncio.sleep(0.3)
        assert seen == ["started"]
        consumer.cancel()  # the ingress's call is cancelled (its client left)
        t0 = asyncio.get_running_loop().time()
        while "cancelled" not in seen and asyncio.get_running_loop().time() - t0 < 2:
            await asyncio.sleep(0.01)
        return asyncio.get_running_loop().time() - t0

    assert asyncio.run(go()) < 0.5 and seen == ["started", "cancelled"]
