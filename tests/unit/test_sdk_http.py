"""The HTTP client's request/response handling over an in-memory httpx transport (the real server is
exercised in tests/integration/test_sdk.py)."""

import asyncio
import json

import httpx
import pytest

from serving.sdk import AsyncTideClient, BadRequest, ConnectionFailed, ModelNotFound, RateLimited, TideClient
from serving.sdk.errors import TideAPIError
from serving.sdk.http import base_url

CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
         "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None}]}
WHOLE = {"id": "c", "object": "chat.completion", "created": 1, "model": "tiny",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": None,
                      "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                           "total_tokens": 2}}


def _server(seen: list):
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.url.path, body))
        if body and body["model"] == "nope":
            return httpx.Response(404, json={"error": {"message": "The model `nope` does not exist.",
                                                       "type": "invalid_request_error", "param": "model",
                                                       "code": "model_not_found"}})
        if body and body["model"] == "busy":
            return httpx.Response(429, headers={"retry-after": "3"},
                                  json={"error": {"message": "wait", "type": "rate_limit_error"}})
        if body and body["model"] == "cut":
            return httpx.Response(200, text=f"data: {json.dumps(CHUNK)}\n\n")
        if body and body.get("stream"):
            return httpx.Response(200, text=f": waiting\n\ndata: {json.dumps(CHUNK)}\n\ndata: [DONE]\n\n")
        return httpx.Response(200, json=WHOLE)
    return handle


def test_base_url_accepts_v1_suffix():
    assert base_url("http://h:1/v1/") == "http://h:1" and base_url("http://h:1") == "http://h:1"


def test_sync_calls_streams_and_errors():
    seen: list = []
    with TideClient("http://t/v1", transport=httpx.MockTransport(_server(seen))) as c:
        r = c.chat("tiny", [{"role": "user", "content": "x"}], max_tokens=2)
        assert r.choices[0].message.content == "hi"
        assert seen[-1] == ("/v1/chat/completions", {"model": "tiny", "stream": False, "max_tokens": 2,
                                                     "messages": [{"role": "user", "content": "x"}]})
        chunks = list(c.chat_stream("tiny", [{"role": "user", "content": "x"}]))
        assert [ch.choices[0].delta.content for ch in chunks] == ["hi"]
        with pytest.raises(ModelNotFound) as ei:
            c.chat("nope", [{"role": "user", "content": "x"}])
        assert ei.value.param == "model"
        with pytest.raises(RateLimited) as ei:
            list(c.chat_stream("busy", [{"role": "user", "content": "x"}]))
        assert ei.value.retry_after_s == 3
        with pytest.raises(TideAPIError, match="before \\[DONE\\]"):
            list(c.chat_stream("cut", [{"role": "user", "content": "x"}]))
        n = len(seen)
        with pytest.raises(BadRequest):
            c.complete("tiny", "x", temperature=5)
        assert len(seen) == n  # rejected before anything was sent


def test_async_calls_streams_and_errors():
    async def go():
        seen: list = []
        async with AsyncTideClient("http://t", transport=httpx.MockTransport(_server(seen))) as c:
            r = await c.chat("tiny", [{"role": "user", "content": "x"}])
            chunks = [ch async for ch in c.chat_stream("tiny", [{"role": "user", "content": "x"}])]
            with pytest.raises(ModelNotFound):
                [ch async for ch in c.chat_stream("nope", [{"role": "user", "content": "x"}])]
            with pytest.raises(TideAPIError, match="before \\[DONE\\]"):
                [ch async for ch in c.chat_stream("cut", [{"role": "user", "content": "x"}])]
            return r, chunks
    r, chunks = asyncio.run(go())
    assert r.usage.total_tokens == 2 and len(chunks) == 1


def test_unreachable_endpoint_is_one_typed_error():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)
    with TideClient("http://127.0.0.1:9", transport=httpx.MockTransport(refuse)) as c:
        with pytest.raises(ConnectionFailed, match="cannot reach Tide at http://127.0.0.1:9"):
            c.models()
