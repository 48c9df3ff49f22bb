"""The SDK's wire logic, shared by the HTTP client and the Serve-handle client (pure: no I/O, no Ray).

Requests are built and validated with the server's own protocol models, so a bad argument fails in the
caller with the same message the server would send; responses and SSE chunks parse back into them.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Literal

from pydantic import ValidationError

from ..errors import TideError, from_validation_error
from ..protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion, CompletionRequest
from ..validation import check_text
from .errors import BadRequest, TideAPIError, from_stream_error

Kind = Literal["chat", "completion"]
DONE = "[DONE]"


def build_request(kind: Kind, model: str, stream: bool, **fields: Any) -> ChatCompletionRequest | CompletionRequest:
    """Validate the caller's arguments into the protocol request; a bad field raises `BadRequest` naming it."""
    schema = ChatCompletionRequest if kind == "chat" else CompletionRequest
    data = {**fields, "model": model, "stream": stream}
    try:
        check_text(data)  # text no tokenizer (nor JSON's UTF-8) can take
        return schema.model_validate(data)
    except TideError as err:
        raise BadRequest(err.message, 400, err.type, err.param, err.code) from None
    except ValidationError as e:
        err = from_validation_error(e)
        raise BadRequest(err.message, 400, err.type, err.param, err.code) from None


def request_json(req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """The request as the HTTP body: only what the caller set, so server-side defaults stay the server's."""
    return req.model_dump(mode="json", exclude_unset=True) | {"model": req.model, "stream": req.stream}


def parse_response(kind: Kind, body: bytes | str) -> ChatCompletion | Completion:
    """A whole (non-streamed) response body as its pydantic model."""
    return (ChatCompletion if kind == "chat" else Completion).model_validate_json(body)


def parse_chunk(kind: Kind, data: dict[str, Any]) -> ChatCompletionChunk | Completion:
    """One streamed chunk (OpenAI streams text completions as `Completion` objects too)."""
    return (ChatCompletionChunk if kind == "chat" else Completion).model_validate(data)


class SSEDecoder:
    """Turns SSE text into event payloads: `data:` lines joined per event, comments (heartbeats) skipped.

    Feed it lines (HTTP) or whole rendered strings holding one or more events (Serve handle).
    """

    def __init__(self) -> None:
        self._data: list[str] = []
        self._partial = ""  # text after the last newline, completed by the next feed

    def feed_line(self, line: str) -> str | None:
        """One line without its newline; returns an event's data when this line ends it."""
        if line == "":
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):
            return None  # comment: a heartbeat while a cold model starts
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def feed(self, text: str) -> Iterator[str]:
        """Every event completed by this piece of text."""
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            data = self.feed_line(line.rstrip("\r"))
            if data is not None:
                yield data

    def close(self) -> str | None:
        """The last event, when the stream ended without a blank line."""
        if self._partial:
            self.feed_line(self._partial.rstrip("\r"))
            self._partial = ""
        return self.feed_line("")


def event_chunk(kind: Kind, data: str) -> ChatCompletionChunk | Completion | None:
    """An event's payload as a chunk; None for the final `[DONE]`; an error event raises its typed error."""
    if data == DONE:
        return None
    try:
        obj = json.loads(data)
    except json.JSONDecodeError:
        raise TideAPIError(f"the server sent an event that is not JSON: {data[:200]!r}", 502, "server_error") from None
    if isinstance(obj, dict) and "error" in obj:
        raise from_stream_error(obj)
    return parse_chunk(kind, obj)


def chunks_from_events(kind: Kind, events: Iterable[str]) -> Iterator[ChatCompletionChunk | Completion]:
    """Chunks until `[DONE]`; a stream that ends without it was cut off, which is an error, not a short answer."""
    for data in events:
        chunk = event_chunk(kind, data)
        if chunk is None:
            return
        yield chunk
    raise TideAPIError("the stream ended before [DONE] (connection lost or replica died)", 502, "server_error")
