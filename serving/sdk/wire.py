"""The SDK's wire logic, shared by the HTTP client and the Serve-handle client (pure: no I/O, no Ray).

Requests are checked as the ingress checks them (Tide's protocol models for the fields they cover, so a bad
argument fails in the caller with the same message the server would send; fields only vLLM knows, such as
`tools` or `response_format`, are left to vLLM's layer). Responses and SSE chunks parse into the official
`openai` package's types, which is what vLLM's layer in the replica answers.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Literal

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ValidationError

from ..errors import TideError, from_validation_error
from ..validation import needs_vllm
from ..protocol import ChatCompletionRequest, CompletionRequest
from ..validation import check_text
from .errors import BadRequest, TideAPIError, from_stream_error

Kind = Literal["chat", "completion"]
DONE = "[DONE]"
PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


def build_request(kind: Kind, model: str, stream: bool, **fields: Any) -> dict[str, Any]:
    """The request body of the caller's arguments, checked as the ingress checks it; a bad field raises
    `BadRequest` naming it. Only what the caller set is sent, so defaults stay the server's."""
    schema = ChatCompletionRequest if kind == "chat" else CompletionRequest
    data = {**fields, "model": model, "stream": stream}
    try:
        check_text(data)  # text no tokenizer (nor JSON's UTF-8) can take
        if not needs_vllm(kind, data, frozenset(schema.model_fields)):
            schema.model_validate(data)
    except TideError as err:
        raise BadRequest(err.message, 400, err.type, err.param, err.code) from None
    except ValidationError as e:
        err = from_validation_error(e)
        raise BadRequest(err.message, 400, err.type, err.param, err.code) from None
    return data


def parse_response(kind: Kind, body: bytes | str) -> ChatCompletion | Completion:
    """A whole (non-streamed) response body as the `openai` package's type."""
    return parse_object(ChatCompletion if kind == "chat" else Completion, json.loads(body))


def parse_chunk(kind: Kind, data: dict[str, Any]) -> ChatCompletionChunk | Completion:
    """One streamed chunk (OpenAI streams text completions as `Completion` objects too)."""
    return parse_object(ChatCompletionChunk if kind == "chat" else Completion, data)


def parse_object(cls: Any, data: Any) -> Any:
    """As the `openai` client builds its answers: nested types, without validation (a streamed completion's
    `finish_reason` is null until its last chunk, which the type's Literal does not allow)."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise TideAPIError(f"the server sent a body that is not a {cls.__name__}: {str(data)[:200]!r}", 502,
                           "server_error")
    return cls.construct(**data)


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
