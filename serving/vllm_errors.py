"""vLLM's error answers, in the words OpenAI's clients expect (pure: status, body and request in, body out).

vLLM 0.32 answers a bad request with its exception's class name as the `type` ("BadRequestError"), the HTTP
status as the `code` (400) and, for a prompt past the context, the engine's own name of the number as the
`param` ("input_tokens"). OpenAI answers `invalid_request_error`, `context_length_exceeded` and the field
the client sent (`messages`, `prompt`, `input`). Tide keeps vLLM's messages and fixes the rest, so a client
that switches from OpenAI (or from Tide's own checks) reads the same error.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from .errors import error_body

# where each route keeps its input (what a context-length or vocabulary error is about)
INPUT_FIELD = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/embeddings": "input",
               "/v1/responses": "input", "/tokenize": "prompt", "/pooling": "input", "/classify": "input",
               "/v2/embed": "input"}
ENGINE_PARAMS = frozenset({"input_tokens", "prompt_tokens", "prompt_token_ids"})  # vLLM's names for the input
_CONTEXT = re.compile(r"maximum context length|context length is", re.IGNORECASE)
_VOCAB = re.compile(r"out of vocabulary", re.IGNORECASE)


def error_type(status: int, given: Any) -> str:
    """OpenAI's snake_case type; vLLM's class names ("BadRequestError") become the type for the status."""
    if isinstance(given, str) and given and given == given.lower() and " " not in given:
        return given
    if status == 404:
        return "not_found_error"
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def named_field(message: str, keys: Iterable[str]) -> str | None:
    """The body field a message is about, when it names exactly one the client sent ("n must be 1 ...",
    "... (received dimensions=12)")."""
    found = [k for k in keys if isinstance(k, str) and k
             and re.search(rf"(^|[\s(`'\"]){re.escape(k)}(=|`|'|\" | must | cannot | is )", message)]
    return found[0] if len(found) == 1 else None


def normalized(status: int, error: dict[str, Any], path: str, keys: Iterable[str]) -> dict[str, Any]:
    message = str(error.get("message") or f"HTTP {status}")
    param, code = error.get("param"), error.get("code")
    field = INPUT_FIELD.get(path)
    if _CONTEXT.search(message):
        code = "context_length_exceeded" if status == 400 else code
        if param in ENGINE_PARAMS or param is None:
            param = field
    elif param in ENGINE_PARAMS:
        param = field
    elif param is None and _VOCAB.search(message):
        param = field
    elif param is None:
        param = named_field(message, keys)
    if not isinstance(code, str):
        code = None  # vLLM repeats the status here; OpenAI's codes are names or null
    return error_body(message, error_type(status, error.get("type")), param if isinstance(param, str) else None,
                      code)


def openai_error_bytes(status: int, body: bytes, path: str = "", keys: Iterable[str] = ()) -> bytes:
    """An error body from vLLM's app as an OpenAI error object. `path` and `keys` (the request's route and body
    fields) let vLLM's own names be replaced by the client's; FastAPI's `{"detail": ...}` (an unknown route, a
    422) becomes an error object too."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict) and "message" in data["error"]:
        return json.dumps(normalized(status, data["error"], path, keys)).encode()
    detail = data.get("detail") if isinstance(data, dict) else None
    message = detail if isinstance(detail, str) else json.dumps(detail) if detail else body[:500].decode(
        "utf-8", "replace") or f"HTTP {status}"
    return json.dumps(error_body(message, error_type(status, None))).encode()
