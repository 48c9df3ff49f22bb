"""The ingress's path to vLLM's own OpenAI layer in a model replica (serving/replica/openai_app.py).

Tide's governance stays on it: keys and per-key limits, the bounded queue, routing by `model` (LoRA
`base:adapter` included), deadlines, retries on a replica that died before answering, usage settle, and
holding a request while a cold model starts (SSE heartbeats on a stream, a bounded number held, a computed
Retry-After). The replica's bytes are relayed untouched otherwise (serving/passthrough.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from ..calls import open_stream
from ..coldstart import retry_after_s
from ..errors import TideError, bad_request, to_error
from ..guard import Pass
from ..httpio import SSE_HEADERS, retry_response
from ..lora import resolve_model
from ..passthrough import (VllmRequest, body_bytes, head_headers, model_of, openai_error_bytes, relay,
                           usage_tokens, with_stream_usage)
from ..render import error_event


def cold_start_timeout(name: str, waited: float, expected: float) -> TideError:
    return TideError(f"Model `{name}` is starting and was not ready after {waited:.0f}s. Retry in "
                     f"{retry_after_s(expected, waited)}s.", 503, "service_unavailable_error", None,
                     "cold_start_timeout")


class VllmPath:
    """Mixed into the Ingress deployment class (serving/ingress.py), whose state these methods use."""

    def _hold_or_refuse(self, name: str, ticket: Pass) -> Response | None:
        """Take one of the cold model's held-request places (both paths), or the 429 when none is left."""
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
        ticket = self.guard.admit(model, key, VllmRequest(data), capacity,
                                  self.cards.get(model, {}).get("max_model_len"))
        hide_usage = kind in ("chat", "completion") and with_stream_usage(data)
        body = body_bytes(data)

        def start() -> Any:
            return self.streams[model].openai.remote("POST", request.url.path, body,
                                                     {"content-type": "application/json"})

        if cold:
            return await self._vllm_cold(model, start, data.get("stream") is True, deadline_s, ticket, hide_usage)
        try:
            gen, (status, headers) = await open_stream(start, deadline_s, self.server.replica_retries,
                                                       self._retried(model))
        except BaseException as e:
            err = to_error(e) if isinstance(e, Exception) else None
            ticket.failed(err.status if err else 499)
            raise
        return await self._vllm_answer(gen, status, headers, deadline_s, ticket, hide_usage)

    async def _vllm_answer(self, gen: Any, status: int, headers: list[tuple[str, str]], deadline_s: float,
                           ticket: Pass, hide_usage: bool) -> Response:
        out = head_headers(headers)
        sse = out.get("content-type", "").startswith("text/event-stream")
        if status >= 400 or not sse:  # a whole body (JSON answers and errors are small)
            body = b"".join([c async for c in relay(gen, deadline_s, False, lambda u: None)])
            if status >= 400:
                ticket.failed(status)
                body, out = openai_error_bytes(status, body), {"content-type": "application/json"}
            else:
                ticket.done(usage_tokens(body[-2048:]))
            return Response(body, status_code=status, headers={**out, **ticket.headers})
        return StreamingResponse(relay(gen, deadline_s, True, ticket.done, hide_usage), status_code=status,
                                 headers={**out, **SSE_HEADERS, **ticket.headers})

    async def _vllm_cold(self, name: str, start: Any, stream: bool, deadline_s: float, ticket: Pass,
                         hide_usage: bool) -> Response:
        """Hold a request for a model with no running replica (bounded), as Tide's own path does. The call is
        made at once, so Serve's handle queues it and the autoscaler sees the demand."""
        gate, expected = self.gates[name], self.start_estimate[name]
        if (refused := self._hold_or_refuse(name, ticket)) is not None:
            return refused
        t0 = time.monotonic()
        gen = start()
        first = asyncio.ensure_future(gen.__anext__())
        if stream:
            return StreamingResponse(self._held_vllm_stream(name, gen, first, t0, deadline_s, ticket, hide_usage),
                                     media_type="text/event-stream", headers={**SSE_HEADERS, **ticket.headers})
        try:
            while not first.done():
                waited = time.monotonic() - t0
                if waited > self.cold[name]["timeout_s"]:
                    first.cancel()
                    gen.cancel()
                    ticket.done(0)
                    self._reject(name, "cold_start_timeout")
                    return retry_response(503, cold_start_timeout(name, waited, expected).message,
                                          "cold_start_timeout", retry_after_s(expected, waited))
                await asyncio.wait({first}, timeout=0.25)
            self._observed_start(name, t0)
        except asyncio.CancelledError:  # the client went away while the model started
            first.cancel()
            gen.cancel()
            ticket.done(None)
            raise
        finally:
            gate.release()
        try:
            status, headers = first.result()
        except Exception as e:
            err = to_error(e)
            ticket.failed(err.status)
            raise err from None
        return await self._vllm_answer(gen, status, headers, max(deadline_s - (time.monotonic() - t0), 0.001),
                                       ticket, hide_usage)

    async def _held_vllm_stream(self, name: str, gen: Any, first: asyncio.Future, t0: float, deadline_s: float,
                                ticket: Pass, hide_usage: bool) -> AsyncIterator[bytes]:
        """SSE comment heartbeats while the model starts, then vLLM's stream (errors in band: 200 is sent)."""
        gate, released = self.gates[name], False
        try:
            while not first.done():
                await asyncio.wait({first}, timeout=self.server.heartbeat_s)
                if first.done():
                    break
                waited = time.monotonic() - t0
                if waited > self.cold[name]["timeout_s"]:
                    self._reject(name, "cold_start_timeout")
                    ticket.done(0)  # nothing was generated
                    yield error_event(cold_start_timeout(name, waited, self.start_estimate[name]).body()).encode()
                    return
                yield f": waiting for a replica of {name} ({waited:.0f}s)\n\n".encode()
            gate.release()
            released = True
            self._observed_start(name, t0)
            left = max(deadline_s - (time.monotonic() - t0), 0.001)
            try:
                status, _ = first.result()
                if status >= 400:
                    raw = b"".join([c async for c in relay(gen, left, False, lambda u: None)])
                    ticket.failed(status)
                    yield error_event(json.loads(openai_error_bytes(status, raw))).encode()
                    return
            except Exception as e:  # noqa: BLE001 - the replica failed before answering
                err = to_error(e)
                ticket.failed(err.status)
                yield error_event(err.body()).encode()
                return
            async for chunk in relay(gen, left, True, ticket.done, hide_usage):
                yield chunk
        finally:
            if not released:
                gate.release()
            if not first.done():
                first.cancel()
                gen.cancel()
            ticket.done(None)  # a no-op once settled
