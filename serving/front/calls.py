"""Calls from the ingress to a model's replicas, with the guarantees clients rely on:

- a deadline per request (server limit or the `X-Request-Timeout` header);
- a request whose replica died before any of it reached the client is retried on another replica
  (Serve routes the retry to a live replica, or holds it until the replacement is up);
- a client that goes away has its request cancelled in the model replica, which aborts it in vLLM;
- a stream that fails after it started ends with an SSE error event, never a hang (front/passthrough.relay).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, TypeVar

from fastapi import Request

from ..errors import client_gone, timed_out
from ..faults import engine_died, replica_gone, retry_wait_s

logger = logging.getLogger("tide.ingress")
T = TypeVar("T")


async def collect(gen: Any, request: Request, deadline_s: float,
                  head: "asyncio.Future | None" = None) -> tuple[Any, bytes]:
    """A started call's head ((status, headers), or the awaited `head`) and whole body, watching the client and
    the clock: a client that goes away (499) or a deadline that passes (504) cancels the call in the model
    replica, where vLLM aborts the request."""
    async def run() -> tuple[Any, bytes]:
        first = await (head if head is not None else gen.__anext__())
        return first, b"".join([c async for c in gen])

    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    task = asyncio.ensure_future(run())
    try:
        while not task.done():
            left = end - loop.time()
            if left <= 0:
                raise timed_out(deadline_s)
            await asyncio.wait({task}, timeout=min(left, 0.25))
            if not task.done() and await request.is_disconnected():
                raise client_gone()
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            gen.cancel()


async def _retried(once: Callable[[float], Awaitable[T]], deadline_s: float, retries: int,
                   on_retry: Callable[[BaseException], None]) -> T:
    """`once(seconds_left)` again while its replica died before answering and the deadline allows: up to
    `retries` times for a replica that went away, and for a replica whose engine died (Serve still routes to it
    until its health checks fail, then holds the request for the replacement) until the deadline, waiting
    longer each time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    attempt = waits = 0
    while True:
        try:
            return await once(max(end - loop.time(), 0.001))
        except Exception as e:
            dead = engine_died(e)
            if not (replica_gone(e) and loop.time() < end and (attempt < retries or dead)):
                raise
            on_retry(e)
            attempt += 1
            if dead:
                await asyncio.sleep(min(retry_wait_s(waits), max(end - loop.time(), 0.0)))
                waits += 1


async def call_whole(start: Callable[[], Any], request: Request, deadline_s: float, retries: int,
                     on_retry: Callable[[BaseException], None]) -> tuple[Any, bytes]:
    """A non-streamed call (`start()` returns the replica's generator): nothing reached the client before it
    ends, so a replica that died on the way is retried on another while the deadline allows."""
    return await _retried(lambda left: collect(start(), request, left), deadline_s, retries, on_retry)


async def open_stream(start: Callable[[], Any], deadline_s: float, retries: int,
                      on_retry: Callable[[BaseException], None]) -> tuple[Any, Any]:
    """Start a stream and get its first item (errors before it are plain HTTP errors and may be retried)."""
    async def once(left: float) -> tuple[Any, Any]:
        gen = start()
        try:
            return gen, await asyncio.wait_for(gen.__anext__(), left)
        except asyncio.TimeoutError:
            gen.cancel()
            raise timed_out(deadline_s) from None

    return await _retried(once, deadline_s, retries, on_retry)
