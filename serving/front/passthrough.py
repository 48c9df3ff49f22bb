"""What the ingress reads of a request bound for vLLM's own OpenAI layer in a model replica
(serving/replica/openai_app.py), and how it relays the answer. Every model request goes there; the ingress
keeps its governance (keys, per-key limits, the bounded queue, routing by `model`, deadlines) and relays the
replica's bytes untouched. Pure decisions here
(whether Tide's own checks apply first is `needs_vllm`, serving/validation.py):
- the token estimate the rate limits charge (`VllmRequest`), the usage a stream settles with.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, AsyncIterator, Callable, Mapping

from ..errors import error_event, timed_out, to_error

# where a body bound for vLLM's layer keeps its input (chat, completions, responses, tokenize, score, rerank)
PROMPT_KEYS = ("messages", "prompt", "input", "text", "instructions", "tokens", "query", "documents", "text_1",
               "text_2", "queries")
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d+)')


def usage_tokens(tail: bytes) -> int | None:
    """total_tokens of the last usage object in a response's last bytes (None when it has none)."""
    found = _TOTAL_TOKENS.findall(tail)
    return int(found[-1]) if found else None


def with_stream_usage(data: dict[str, Any]) -> bool:
    """Ask vLLM for the usage chunk of a chat or text stream the client did not ask it for (Tide's limits settle
    on the tokens really used); True when added, so `relay` drops that chunk again."""
    opts = data.get("stream_options")
    if data.get("stream") is not True or (opts is not None and not isinstance(opts, dict)):
        return False
    if isinstance(opts, dict) and opts.get("include_usage") is not None:
        return False
    data["stream_options"] = {**(opts or {}), "include_usage": True}
    return True


def drop_usage_event(buffer: bytes) -> tuple[bytes, bytes]:
    """Split SSE bytes into what to send now (whole events, the usage-only chunk left out) and the unfinished rest."""
    *events, rest = buffer.split(b"\n\n")
    out = [e for e in events if not (e.startswith(b"data: {") and b'"choices":[]' in e and b'"usage":{' in e)]
    return b"".join(e + b"\n\n" for e in out), rest


async def relay(gen: Any, deadline_s: float, on_done: Callable[[int | None], None],
                hide_usage: bool = False) -> AsyncIterator[bytes]:
    """A stream's chunks from the replica as they come, within the deadline; the tokens used go to `on_done`
    (the last usage object seen). `hide_usage`: the stream's usage chunk was Tide's own ask
    (`with_stream_usage`) and is not sent. A failure or the deadline after the stream started becomes an SSE
    error event (200 is already sent); a client that goes away cancels the call (vLLM aborts the request)."""
    tail = pending = b""
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        gen.cancel()

    timer = asyncio.get_running_loop().call_later(deadline_s, expire)
    finished = False
    try:
        async for chunk in gen:
            tail = (tail + chunk)[-2048:]
            if hide_usage:
                chunk, pending = drop_usage_event(pending + chunk)
                if not chunk:
                    continue
            yield chunk
        finished = True
        if pending:
            yield pending
        on_done(usage_tokens(tail))
    except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - the replica died, or the deadline passed
        on_done(None)
        if expired:
            yield error_event(timed_out(deadline_s).body()).encode()
        elif isinstance(e, asyncio.CancelledError):
            raise  # the client went away
        else:
            yield error_event(to_error(e).body()).encode()
    finally:
        timer.cancel()
        if not finished and not expired:
            gen.cancel()  # the client left: stop the replica's work
        on_done(None)  # a no-op once settled


def head_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The replica's response headers worth relaying (the ingress sets its own framing)."""
    keep = {"content-type", "cache-control", "x-request-id", "x-tide-replica"}
    return {k: v for k, v in headers if k.lower() in keep}


def model_of(data: Mapping[str, Any]) -> str | None:
    m = data.get("model")
    return m if isinstance(m, str) else None


def body_bytes(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data).encode()


class VllmRequest:
    """What the ingress's rate limits and queue read of a body bound for vLLM's layer (see guard.prompt_chars)."""

    def __init__(self, data: Mapping[str, Any]):
        self.data = data
        n = data.get("n", 1)
        self.n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1

    def requested_max_tokens(self) -> int | None:
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            v = self.data.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    def prompts(self) -> list[str]:
        """The body's input text as one string per field (its JSON: a fair character count for the estimate)."""
        return [json.dumps(self.data[k]) for k in PROMPT_KEYS if k in self.data]


# ---- request bodies of the vLLM-only routes, for /openapi.json (vLLM validates the bodies itself) ----------
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # vLLM's models accept and check their own fields
    model: str = Field(description="The served model (or `base:adapter`) to route to.")


class TokenizeRequest(_Body):
    prompt: str


class DetokenizeRequest(_Body):
    tokens: list[int]


class ResponsesRequest(_Body):
    input: str
    max_output_tokens: int | None = Field(None, ge=1, le=64)
