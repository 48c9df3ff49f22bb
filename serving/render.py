"""Turn engine outputs into OpenAI responses: SSE chunks while streaming, one JSON body otherwise.

Pure (no vLLM, no Ray): it reads only `.outputs[i].index/.text/.token_ids/.finish_reason` of each engine
output, so unit tests feed it plain objects. The replica renders the final bytes itself, so the ingress
only forwards them: one serialization of each chunk on the whole path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

Kind = Literal["chat", "completion"]
DONE = "data: [DONE]\n\n"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _Choice(Protocol):
    index: int
    text: str
    token_ids: Sequence[int]
    finish_reason: str | None


class _Output(Protocol):
    outputs: Sequence[_Choice]


def sse(obj: dict[str, Any]) -> str:
    return f"data: {_dumps(obj)}\n\n"


@dataclass
class Renderer:
    """Renders one request's outputs. `prompt_tokens` holds each prompt's length; `n` choices per prompt."""

    kind: Kind
    request_id: str
    model: str
    created: int
    n: int
    prompt_tokens: list[int]
    include_usage: bool = False
    completion_tokens: int = 0
    _texts: dict[int, list[str]] = field(default_factory=dict)
    _finish: dict[int, str | None] = field(default_factory=dict)

    @property
    def _object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        out = {"id": self.request_id, "object": self._object, "created": self.created, "model": self.model,
               "choices": choices}
        if self.include_usage:
            out["usage"] = usage
        return out

    def usage(self) -> dict[str, int]:
        p = sum(self.prompt_tokens)
        return {"prompt_tokens": p, "completion_tokens": self.completion_tokens,
                "total_tokens": p + self.completion_tokens}

    # ---- streaming ----
    def start(self) -> str:
        """Chat streams open with the assistant role for every choice (as OpenAI does); completions send nothing."""
        if self.kind != "chat":
            return ""
        choices = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None} for i in range(self.n * len(self.prompt_tokens))]
        return sse(self._chunk(choices))

    def delta(self, prompt_index: int, output: _Output) -> str:
        """One SSE chunk holding every choice that moved in this engine step ('' when none did)."""
        choices = []
        for c in output.outputs:
            self.completion_tokens += len(c.token_ids)
            if not c.text and c.finish_reason is None:
                continue
            idx = prompt_index * self.n + c.index
            if self.kind == "chat":
                choices.append({"index": idx, "delta": {"content": c.text} if c.text else {}, "logprobs": None,
                                "finish_reason": c.finish_reason})
            else:
                choices.append({"index": idx, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason})
        return sse(self._chunk(choices)) if choices else ""

    def end(self) -> str:
        """The usage chunk (when asked for with stream_options.include_usage), then [DONE]."""
        if not self.include_usage:
            return DONE
        return sse(self._chunk([], self.usage())) + DONE

    # ---- whole response ----
    def add(self, prompt_index: int, output: _Output) -> None:
        for c in output.outputs:
            idx = prompt_index * self.n + c.index
            self.completion_tokens += len(c.token_ids)
            self._texts.setdefault(idx, []).append(c.text)
            if c.finish_reason is not None:
                self._finish[idx] = c.finish_reason

    def response(self) -> dict[str, Any]:
        total = self.n * len(self.prompt_tokens)
        texts = ["".join(self._texts.get(i, [])) for i in range(total)]
        if self.kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": self._finish.get(i)} for i, t in enumerate(texts)]
            obj = "chat.completion"
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": self._finish.get(i)}
                       for i, t in enumerate(texts)]
            obj = "text_completion"
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}

    def response_bytes(self) -> bytes:
        return _dumps(self.response()).encode()


def error_event(body: dict[str, Any]) -> str:
    """A stream that fails after it started can only say so in-band: an SSE event holding the error object."""
    return sse(body)
