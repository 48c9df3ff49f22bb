"""One place that turns any exception into an OpenAI-shaped error: `{"error": {message, type, param, code}}`.

Replicas raise `TideError` (picklable, so it crosses Ray as itself); the ingress maps whatever reaches it
with `to_error`. Unknown exceptions become a 500 with a sanitized message: no traceback reaches a client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

logger = logging.getLogger("tide.errors")


class TideError(Exception):
    """An error with an HTTP status that the client should see as is."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message, status, type, param, code)  # all in args, so it pickles across Ray
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def printable(text: str) -> str:
    """`text` with anything UTF-8 cannot encode (lone surrogates from a client's JSON) as backslash escapes, so an
    error that quotes client input can always be sent."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": printable(message), "type": type,
                      "param": printable(param) if isinstance(param, str) else param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> TideError:
    return TideError(message, 400, "invalid_request_error", param, code)


def model_not_found(model: str) -> TideError:
    return TideError(f"The model `{model}` does not exist.", 404, "invalid_request_error", "model", "model_not_found")


def unavailable(message: str) -> TideError:
    return TideError(message, 503, "service_unavailable_error", None, "service_unavailable")


def engine_dead() -> TideError:
    return TideError("The model's engine died; a new replica is starting. Retry shortly.", 503,
                     "service_unavailable_error", None, "engine_dead")


def not_found(message: str) -> TideError:
    return TideError(message, 404, "not_found_error", None, "not_found")


def unauthorized(key_given: bool) -> TideError:
    """The 401 a request without a valid key gets (OpenAI's wording and codes). Never echoes the key."""
    if not key_given:
        return TideError(
            "You didn't provide an API key. You need to provide your API key in an Authorization header using "
            "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", 401, "invalid_request_error", None, None,
        )
    return TideError("Incorrect API key provided. Check the key you were given for this Tide server.", 401,
                     "invalid_request_error", None, "invalid_api_key")


def rate_limited(key_name: str, limit: str, limit_value: int, requested: int, retry_after_s: float | None
                 ) -> TideError:
    """The 429 for a request over a key's `limit` ("requests" or "tokens") per minute (OpenAI's wording; names the
    key holder, never the key). `retry_after_s` None: the request alone is larger than the whole minute's limit."""
    unit = "requests per minute (RPM)" if limit == "requests" else "tokens per minute (TPM)"
    if retry_after_s is None:
        return TideError(f"Request too large for key '{key_name}' on {unit}: Limit {limit_value}, "
                         f"Requested {requested}. Ask for fewer tokens (lower max_tokens or a shorter "
                         "prompt).", 429, "tokens", "max_tokens", "rate_limit_exceeded")
    return TideError(f"Rate limit reached for key '{key_name}' on {unit}: Limit {limit_value}, Requested "
                     f"{requested}. Please try again in {retry_after_s:.1f}s.", 429, limit, None, "rate_limit_exceeded")


def queue_full(model: str, in_flight: int, limit: int, retry_after_s: int) -> TideError:
    """The 429 for a request past a model's bounded queue; the caller adds `Retry-After: retry_after_s`."""
    return TideError(f"Model `{model}` is overloaded: {in_flight} requests are in flight (limit {limit}). "
                     f"Retry in {retry_after_s}s.", 429, "rate_limit_error", None, "model_overloaded")


def retry_later(status: int, message: str, code: str) -> TideError:
    """A 429 or 503 the client should retry (the caller sends the Retry-After)."""
    return TideError(message, status, "rate_limit_error" if status == 429 else "service_unavailable_error", None, code)


def cold_start_timeout(name: str, waited: float, retry_in_s: int) -> TideError:
    return TideError(f"Model `{name}` is starting and was not ready after {waited:.0f}s. Retry in {retry_in_s}s.",
                     503, "service_unavailable_error", None, "cold_start_timeout")


def client_gone() -> TideError:
    return TideError("The client closed the request.", 499, "invalid_request_error", None, "client_closed_request")


def timed_out(seconds: float) -> TideError:
    return TideError(f"The request did not finish within its {seconds:g}s timeout.", 504, "timeout_error", None,
                     "timeout")


def request_too_large(limit: int) -> TideError:
    return TideError(f"Request body is larger than {limit} bytes.", 413, "invalid_request_error", None,
                     "request_too_large")


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _loc(loc: tuple) -> str:
    # pydantic puts union branch names ("str", "list[int]") into the path: not part of the client's field.
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def from_validation_error(err: ValidationError) -> TideError:
    """The first pydantic error, worded the way OpenAI words request errors."""
    e = err.errors()[0]
    param = _loc(e["loc"])
    if e["type"] == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param)
    if e["type"] == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param)
    msg = e["msg"].removeprefix("Value error, ")
    return bad_request(f"Invalid value for '{param}': {msg}" if param else msg, param or None)


# Upstream exceptions matched by class name, not class: the ingress never imports vLLM, and Ray wraps a replica's
# error in a class it makes at run time. tests/unit/test_errors.py checks every name against the installed
# Ray and vLLM, so an upstream rename fails there.
VLLM_BAD_REQUEST = frozenset({"VLLMValidationError", "VLLMClientError"})
ENGINE_DEAD = "EngineDeadError"
UNAVAILABLE = frozenset({"DeploymentUnavailableError", "BackPressureError", "ActorDiedError", "ActorUnavailableError"})
TIMEOUTS = frozenset({"TimeoutError"})  # the builtin (asyncio's since 3.11)


def _unwrap(exc: BaseException) -> BaseException:
    """Ray wraps replica exceptions; the cause is what we map."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and type(exc).__name__.startswith("RayTaskError"):
        return cause
    return exc


def to_error(exc: BaseException) -> TideError:
    """Map any exception to a TideError (status + OpenAI body)."""
    exc = _unwrap(exc)
    if isinstance(exc, TideError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    if isinstance(exc, json.JSONDecodeError):
        return bad_request(f"We could not parse the JSON body of your request: {exc.msg}", None, "invalid_json")
    name = type(exc).__name__
    if name in VLLM_BAD_REQUEST:
        return bad_request(str(exc), getattr(exc, "parameter", None))
    if name == ENGINE_DEAD:
        return engine_dead()
    if name in UNAVAILABLE:
        return unavailable("The model is temporarily unavailable. Retry shortly.")
    if name in TIMEOUTS:
        return TideError("The request timed out.", 504, "timeout_error", None, "timeout")
    logger.exception("unexpected error while serving a request", exc_info=exc)
    return TideError("The server had an error while processing your request.", 500, "server_error", None, None)


def error_event(body: dict[str, Any]) -> str:
    """A stream that fails after it started can only say so in-band: an SSE event holding the error object."""
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"
