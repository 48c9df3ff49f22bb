"""Calls from the ingress to a model's replicas, with the guarantees clients rely on:

- a deadline per request (server limit or the `X-Request-Timeout` header);
- a request whose replica died before any of it reached the client is retried on another replica
  (Serve routes the retry to a live replica, or holds it until the replacement is up);
- a client that goes away has its request cancelled in the model replica, which aborts it in vLLM;
- a stream that fails after it started ends with an SSE error event, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import Request

from .errors import TideError, to_error
from .faults import replica_gone
from .guard import USAGE_MARK, read_usage_comment
from .render import error_event

logger = logging.getLogger("tide.ingress")


def client_gone() -> TideError:
    return TideError("The client closed the request.", 499, "invalid_request_error", None, "client_closed_request")


def timed_out(seconds: float) -> TideError:
    return TideError(f"The request did not finish within its {seconds:g}s timeout.", 504, "timeout_error", None,
                     "timeout")


async def awaited(response: Any) -> Any:
    """A DeploymentResponse as a coroutine (for ensure_future)."""
    return await response


async def call_whole(start: Callable[[], Any], request: Request, deadline_s: float, retries: int,
                     on_retry: Callable[[BaseException], None]) -> Any:
    """Run a non-streamed call (`start()` returns a DeploymentResponse), watching the client and the clock."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    for attempt in range(retries + 1):
        response = start()
        task = asyncio.ensure_future(awaited(response))
        try:
            while not task.done():
                left = end - loop.time()
                if left <= 0:
                    raise timed_out(deadline_s)
                await asyncio.wait({task}, timeout=min(left, 0.25))
                if not task.done() and await request.is_disconnected():
                    raise client_gone()
            return task.result()
        except Exception as e:
            if not task.done():
                response.cancel()  # cancels in the model replica: vLLM aborts the request
                task.cancel()
            if attempt < retries and replica_gone(e) and loop.time() < end:
                on_retry(e)
                continue
            raise
    raise AssertionError("unreachable")


async def open_stream(start: Callable[[], Any], deadline_s: float, retries: int,
                      on_retry: Callable[[BaseException], None]) -> tuple[Any, str]:
    """Start a stream and get its first chunk (errors before it are plain HTTP errors and may be retried)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    for attempt in range(retries + 1):
        gen = start()
        try:
            first = await asyncio.wait_for(gen.__anext__(), max(end - loop.time(), 0.001))
            return gen, first
        except asyncio.TimeoutError:
            gen.cancel()
            raise timed_out(deadline_s) from None
        except Exception as e:
            if attempt < retries and replica_gone(e) and loop.time() < end:
                on_retry(e)
                continue
            raise
    raise AssertionError("unreachable")


async def forward(first: str, gen: Any, deadline_s: float,
                  on_done: Callable[[int | None], None] | None = None) -> AsyncIterator[str]:
    """Pass rendered chunks through until the deadline; a failure mid-stream becomes an SSE error event.
    If the client goes away, the cancellation reaches the model replica (vLLM aborts the request).
    The replica's trailing usage comment is dropped here and handed to `on_done` (tokens used, or None).
    One timer per stream (not a wait per chunk): this is the hot path."""
    expired: list[bool] = []
    used: int | None = None

    def expire() -> None:
        expired.append(True)
        gen.cancel()

    timer = asyncio.get_running_loop().call_later(deadline_s, expire)
    finished = False
    try:
        if first:
            yield first
        async for chunk in gen:
            if chunk.startswith(USAGE_MARK):
                used = read_usage_comment(chunk)
                continue
            yield chunk
        finished = True
    except (Exception, asyncio.CancelledError) as e:
        if expired:
            yield error_event(timed_out(deadline_s).body())
        elif isinstance(e, asyncio.CancelledError):
            raise  # the client went away
        else:  # replica died or similar after the stream started
            yield error_event(to_error(e).body())
    finally:
        timer.cancel()
        if not finished:
            gen.cancel()
        if on_done is not None:
            on_done(used)
