"""The ingress's path to vLLM's own OpenAI layer in a model replica (serving/replica/openai_app.py).

Tide's governance stays on it: keys and per-key limits, the bounded queue, routing by `model` (LoRA
`base:adapter` included), deadlines, retries on a replica that died before answering, usage settle, abort
when the client leaves, and holding a request while a cold model starts (SSE heartbeats on a stream, a
bounded number held, a computed Retry-After). The replica's bytes are relayed untouched, except error
bodies, which are put in OpenAI's words (serving/vllm_errors.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from .calls import call_whole, collect, open_stream
from ..coldstart import retry_after_s
from ..errors import bad_request, cold_start_timeout, error_event, not_found, to_error
from ..faults import TIMEOUT_HEADER, request_deadline_s
from ..gate.guard import Pass, Refused
from ..httpio import SSE_HEADERS, error_response, retry_response
from ..lora import resolve_model
from .passthrough import VllmRequest, body_bytes, head_headers, model_of, relay, usage_tokens, with_stream_usage
from ..router import routing_prompt
from ..vllm_errors import openai_error_bytes

JSON = {"content-type": "application/json"}


@dataclass
class Call:
    """One request on its way to a replica: what answering it needs besides the replica's bytes."""

    request: Request
    ticket: Pass
    deadline_s: float
    stream: bool
    hide_usage: bool = False  # the stream's usage chunk was Tide's own ask (passthrough.with_stream_usage)
    fix: Callable[[int, bytes], bytes] = openai_error_bytes  # (status, vLLM's error body) -> OpenAI's

    def whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> Response:
        out = head_headers(headers)
        if status >= 400:
            self.ticket.failed(status)
            body, out = self.fix(status, body), dict(JSON)
        else:
            self.ticket.done(usage_tokens(body[-2048:]))
        return Response(body, status_code=status, headers={**out, **self.ticket.headers})

    def failed(self, e: BaseException) -> None:
        err = to_error(e) if isinstance(e, Exception) else None
        self.ticket.failed(err.status if err else 499)  # not an Exception: the client went away


class VllmPath:
    """Mixed into the Ingress deployment class (serving/ingress.py), whose state these methods use."""

    def _hold_or_refuse(self, name: str, ticket: Pass) -> Response | None:
        """Take one of the cold model's held-request places, or the 429 when none is left."""
        if self.gates[name].try_hold():
            return None
        ticket.done(0)
        self._reject(name, "too_many_held")
        return retry_response(429, f"Too many requests are waiting for model `{name}` to start.",
                              "too_many_held_requests", retry_after_s(self.start_estimate[name], 0))

    async def _serve_vllm(self, request: Request, data: dict[str, Any], key: Any, deadline_s: float,
                          kind: str) -> Response:
        """Relay a request to vLLM's OpenAI layer in one of the model's replicas, with Tide's governance."""
        name = model_of(data)
        if name is None:
            raise bad_request("You must provide a `model` (a string).", "model", "missing_model")
        model = resolve_model(name, self.adapters).base
        self._handle(model, stream=True)
        if kind != "vllm":
            self._check_task(model, kind)
        capacity = await self._capacity(model)
        cold = self._is_cold(model)
        try:
            ticket = self.guard.admit(model, key, VllmRequest(data), capacity,
                                      self.cards.get(model, {}).get("max_model_len"))
        except Refused as r:  # per-key limit or the model's full queue
            return self._refused(model, r)
        path = request.url.path
        call = Call(request, ticket, deadline_s, data.get("stream") is True,
                    kind in ("chat", "completion") and with_stream_usage(data),
                    lambda code, raw: openai_error_bytes(code, raw, path, data))
        body = body_bytes(data)
        prompt = routing_prompt(data) if kind in ("chat", "completion") else None

        def start() -> Any:
            return self.streams[model].openai.remote("POST", path, body, JSON, prompt=prompt)

        if cold:
            return await self._vllm_cold(model, start, call)
        return await self._vllm_warm(model, start, call)

    async def _vllm_warm(self, model: str, start: Callable[[], Any], call: Call) -> Response:
        retries, note = self.server.replica_retries, self._retried(model)
        try:
            if not call.stream:
                (status, headers), body = await call_whole(start, call.request, call.deadline_s, retries, note)
                return call.whole(status, headers, body)
            gen, (status, headers) = await open_stream(start, call.deadline_s, retries, note)
        except BaseException as e:
            call.failed(e)
            raise
        return await self._vllm_stream(gen, status, headers, call, call.deadline_s)

    async def _vllm_stream(self, gen: Any, status: int, headers: list[tuple[str, str]], call: Call,
                           left_s: float) -> Response:
        out = head_headers(headers)
        if status >= 400 or not out.get("content-type", "").startswith("text/event-stream"):
            _, body = await collect(gen, call.request, left_s, _done((status, headers)))
            return call.whole(status, headers, body)
        return StreamingResponse(relay(gen, left_s, call.ticket.done, call.hide_usage), status_code=status,
                                 headers={**out, **SSE_HEADERS, **call.ticket.headers})

    async def _serve_stored(self, request: Request, response_id: str) -> Response:
        """`GET /v1/responses/{id}` and its cancel: sent to a generating model's replica, which reads the response
        from the store every replica shares (serving/replica/responses_store.py). A lookup, so no admission."""
        try:
            self.guard.check_key(request.url.path, request.headers)
        except Refused as r:
            return self._refused("*", r)
        names = [n for n in self.models if self.cold[n].task != "embed"]
        if not names:
            return error_response(not_found("No model here serves the Responses API."))
        model = next((n for n in names if not self._is_cold(n)), names[0])
        deadline_s = request_deadline_s(request.headers.get(TIMEOUT_HEADER), self.server.request_timeout_s)
        call = Call(request, Pass({}, lambda used: None), deadline_s, request.query_params.get("stream") == "true")

        def start() -> Any:
            return self.streams[model].openai.remote(request.method, request.url.path, b"", {},
                                                     query=request.url.query)
        try:
            return await self._vllm_warm(model, start, call)
        except Exception as e:
            return error_response(to_error(e))

    async def _vllm_cold(self, name: str, start: Callable[[], Any], call: Call) -> Response:
        """Hold a request for a model with no running replica (bounded). The call is made at once, so Serve's
        handle queues it and the autoscaler sees the demand."""
        gate, expected = self.gates[name], self.start_estimate[name]
        if (refused := self._hold_or_refuse(name, call.ticket)) is not None:
            return refused
        t0 = time.monotonic()
        gen = start()
        first = asyncio.ensure_future(gen.__anext__())
        if call.stream:
            return StreamingResponse(self._held_vllm_stream(name, gen, first, t0, call),
                                     media_type="text/event-stream", headers={**SSE_HEADERS, **call.ticket.headers})
        try:  # until a replica runs (a whole answer's head comes only when it is done)
            while not first.done() and self.counts.get(name, (0, 0))[0] == 0:
                waited = time.monotonic() - t0
                if waited > self.cold[name].timeout_s:
                    first.cancel()
                    gen.cancel()
                    call.ticket.done(0)
                    self._reject(name, "cold_start_timeout")
                    return retry_response(503, cold_start_timeout(name, waited, retry_after_s(expected, waited)).message,
                                          "cold_start_timeout", retry_after_s(expected, waited))
                await asyncio.wait({first}, timeout=0.25)
            self._observed_start(name, t0)
        except BaseException:  # the client went away while the model started
            first.cancel()
            gen.cancel()
            call.ticket.done(None)
            raise
        finally:
            gate.release()
        try:
            (status, headers), body = await collect(gen, call.request, _left(call, t0), first)
        except BaseException as e:
            call.failed(e)
            raise
        return call.whole(status, headers, body)

    async def _held_vllm_stream(self, name: str, gen: Any, first: asyncio.Future, t0: float,
                                call: Call) -> AsyncIterator[bytes]:
        """SSE comment heartbeats while the model starts, then vLLM's stream (errors in band: 200 is sent)."""
        gate, released, ticket = self.gates[name], False, call.ticket
        try:
            while not first.done():
                await asyncio.wait({first}, timeout=self.server.heartbeat_s)
                if first.done():
                    break
                waited = time.monotonic() - t0
                if waited > self.cold[name].timeout_s:
                    self._reject(name, "cold_start_timeout")
                    ticket.done(0)  # nothing was generated
                    yield error_event(cold_start_timeout(name, waited, retry_after_s(self.start_estimate[name], waited)).body()).encode()
                    return
                yield f": waiting for a replica of {name} ({waited:.0f}s)\n\n".encode()
            gate.release()
            released = True
            self._observed_start(name, t0)
            try:
                status, _ = first.result()
                if status >= 400:
                    _, raw = await collect(gen, call.request, _left(call, t0), first)
                    ticket.failed(status)
                    yield error_event(json.loads(call.fix(status, raw))).encode()
                    return
            except Exception as e:  # noqa: BLE001 - the replica failed before answering
                err = to_error(e)
                ticket.failed(err.status)
                yield error_event(err.body()).encode()
                return
            async for chunk in relay(gen, _left(call, t0), ticket.done, call.hide_usage):
                yield chunk
        finally:
            if not released:
                gate.release()
            if not first.done():
                first.cancel()
                gen.cancel()
            ticket.done(None)  # a no-op once settled


def _left(call: Call, t0: float) -> float:
    return max(call.deadline_s - (time.monotonic() - t0), 0.001)


def _done(value: Any) -> asyncio.Future:
    f = asyncio.get_running_loop().create_future()
    f.set_result(value)
    return f
