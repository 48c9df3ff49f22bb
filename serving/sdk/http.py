"""A small HTTP client for Tide from outside the cluster: sync (`TideClient`) and async (`AsyncTideClient`).

Thin on purpose: httpx for the transport, the ingress's own checks for requests, the `openai` package's
types for responses, and the SDK's typed errors for OpenAI-shaped error bodies. For everything else, use
the `openai` package itself.

    with TideClient("http://127.0.0.1:8000") as tide:
        print(tide.chat("tiny", [{"role": "user", "content": "Hi"}], max_tokens=16).choices[0].message.content)
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Iterator

import httpx

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ..protocol import ModelList
from .errors import ConnectionFailed, TideAPIError, from_body
from .wire import PATHS, Kind, SSEDecoder, build_request, chunks_from_events, event_chunk, parse_response

Messages = list[dict[str, Any]]


def base_url(url: str) -> str:
    """Accept the endpoint with or without its `/v1` suffix (both are printed by `tide serve`)."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def _raise_for(resp: httpx.Response, body: bytes) -> None:
    if resp.status_code < 400:
        return
    try:
        decoded: Any = json.loads(body)
    except ValueError:
        decoded = body.decode(errors="replace")
    raise from_body(resp.status_code, decoded, resp.headers.get("retry-after"))


def _connection_error(url: str, e: Exception) -> ConnectionFailed:
    return ConnectionFailed(f"cannot reach Tide at {url}: {e}")


class TideClient:
    """Blocking client. `timeout_s` bounds each request (streams: the wait for each chunk)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout_s: float = 600.0, api_key: str | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.url = base_url(url)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers, transport=transport)

    def __enter__(self) -> "TideClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def models(self) -> ModelList:
        return ModelList.model_validate_json(self._get("/v1/models"))

    def status(self) -> dict[str, Any]:
        """`GET /tide/status`: per-model replicas, held requests, queue depth (see `tide status`)."""
        return json.loads(self._get("/tide/status"))

    def chat(self, model: str, messages: Messages, **params: Any) -> ChatCompletion:
        return self._post("chat", model, {"messages": messages, **params})

    def complete(self, model: str, prompt: Any, **params: Any) -> Completion:
        return self._post("completion", model, {"prompt": prompt, **params})

    def chat_stream(self, model: str, messages: Messages, **params: Any) -> Iterator[ChatCompletionChunk]:
        return self._stream("chat", model, {"messages": messages, **params})

    def complete_stream(self, model: str, prompt: Any, **params: Any) -> Iterator[Completion]:
        return self._stream("completion", model, {"prompt": prompt, **params})

    def _get(self, path: str) -> bytes:
        try:
            resp = self._http.get(path)
        except httpx.TransportError as e:
            raise _connection_error(self.url, e) from None
        _raise_for(resp, resp.content)
        return resp.content

    def _post(self, kind: Kind, model: str, fields: dict[str, Any]) -> Any:
        req = build_request(kind, model, False, **fields)
        try:
            resp = self._http.post(PATHS[kind], json=req)
        except httpx.TransportError as e:
            raise _connection_error(self.url, e) from None
        _raise_for(resp, resp.content)
        return parse_response(kind, resp.content)

    def _stream(self, kind: Kind, model: str, fields: dict[str, Any]) -> Iterator[Any]:
        req = build_request(kind, model, True, **fields)  # a bad argument raises here, not on first next()
        return chunks_from_events(kind, self._events(kind, req))

    def _events(self, kind: Kind, body: dict[str, Any]) -> Iterator[str]:
        decoder = SSEDecoder()
        try:
            with self._http.stream("POST", PATHS[kind], json=body) as resp:
                _raise_for(resp, resp.read() if resp.status_code >= 400 else b"")
                for line in resp.iter_lines():
                    data = decoder.feed_line(line)
                    if data is not None:
                        yield data
        except httpx.TransportError as e:
            raise _connection_error(self.url, e) from None
        last = decoder.close()
        if last is not None:
            yield last


class AsyncTideClient:
    """The same calls for asyncio code; streams are async iterators."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout_s: float = 600.0, api_key: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.url = base_url(url)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s, headers=headers, transport=transport)

    async def __aenter__(self) -> "AsyncTideClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self) -> ModelList:
        return ModelList.model_validate_json(await self._get("/v1/models"))

    async def status(self) -> dict[str, Any]:
        return json.loads(await self._get("/tide/status"))

    async def chat(self, model: str, messages: Messages, **params: Any) -> ChatCompletion:
        return await self._post("chat", model, {"messages": messages, **params})

    async def complete(self, model: str, prompt: Any, **params: Any) -> Completion:
        return await self._post("completion", model, {"prompt": prompt, **params})

    def chat_stream(self, model: str, messages: Messages, **params: Any) -> AsyncIterator[ChatCompletionChunk]:
        return self._stream("chat", model, {"messages": messages, **params})

    def complete_stream(self, model: str, prompt: Any, **params: Any) -> AsyncIterator[Completion]:
        return self._stream("completion", model, {"prompt": prompt, **params})

    async def _get(self, path: str) -> bytes:
        try:
            resp = await self._http.get(path)
        except httpx.TransportError as e:
            raise _connection_error(self.url, e) from None
        _raise_for(resp, resp.content)
        return resp.content

    async def _post(self, kind: Kind, model: str, fields: dict[str, Any]) -> Any:
        req = build_request(kind, model, False, **fields)
        try:
            resp = await self._http.post(PATHS[kind], json=req)
        except httpx.TransportError as e:
            raise _connection_error(self.url, e) from None
        _raise_for(resp, resp.content)
        return parse_response(kind, resp.content)

    def _stream(self, kind: Kind, model: str, fields: dict[str, Any]) -> AsyncIterator[Any]:
        req = build_request(kind, model, True, **fields)
        return self._chunks(kind, req)

    async def _chunks(self, kind: Kind, body: dict[str, Any]) -> AsyncIterator[Any]:
        decoder = SSEDecoder()
        try:
            async with self._http.stream("POST", PATHS[kind], json=body) as resp:
                _raise_for(resp, await resp.aread() if resp.status_code >= 400 else b"")
                async for line in resp.aiter_lines():
                    data = decoder.feed_line(line)
                    if data is None:
                        continue
                    chunk = event_chunk(kind, data)
                    if chunk is None:
                        return
                    yield chunk
        except httpx.TransportError as e:
            raise _connection_error(self.url, e) from None
        last = decoder.close()
        if last is not None and event_chunk(kind, last) is None:
            return
        raise TideAPIError("the stream ended before [DONE] (connection lost?)", 502, "server_error")
