"""Typed SDK errors: one class per kind of OpenAI error, so callers catch what they can act on.

Every class is a `TideError` (the server's own error type), carrying status, type, param and code, so the
same `except` works whether a call went over HTTP or through a Serve handle.
"""

from __future__ import annotations

from typing import Any

from ..errors import TideError, to_error


class TideAPIError(TideError):
    """The server answered with an OpenAI-shaped error object."""

    retry_after_s: float | None = None  # from a Retry-After header, when the server sent one


class BadRequest(TideAPIError):
    """The request was invalid (400/413/422); `param` names the field when the server knew it."""


class ModelNotFound(TideAPIError):
    """No model of that name is served (404)."""


class RateLimited(TideAPIError):
    """Too many requests are waiting (429); `retry_after_s` says when to try again, if the server said."""


class Unavailable(TideAPIError):
    """The model is starting, restarting or overloaded (503); retry after `retry_after_s`."""


class RequestTimeout(TideAPIError):
    """The server gave up on the request (504)."""


class ServerError(TideAPIError):
    """Anything else the server reported (5xx)."""


class ConnectionFailed(TideError):
    """The endpoint could not be reached at all (no HTTP status)."""

    def __init__(self, message: str):
        super().__init__(message, 0, "connection_error", None, "connection_failed")


_BY_STATUS: dict[int, type[TideAPIError]] = {
    400: BadRequest, 413: BadRequest, 422: BadRequest, 404: ModelNotFound, 429: RateLimited, 503: Unavailable,
    504: RequestTimeout,
}


def error_class(status: int) -> type[TideAPIError]:
    """The typed error for an HTTP status (unknown 4xx count as bad requests, everything else as server errors)."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return BadRequest if 400 <= status < 500 else ServerError


def from_body(status: int, body: Any, retry_after: str | None = None) -> TideAPIError:
    """Build the typed error from an HTTP status and a decoded `{"error": {...}}` body (or anything else)."""
    info = body.get("error") if isinstance(body, dict) else None
    if not isinstance(info, dict):
        text = str(body)[:300] if body not in (None, "") else f"HTTP {status}"
        info = {"message": text, "type": "server_error" if status >= 500 else "invalid_request_error"}
    if status == 404 and info.get("code") != "model_not_found":
        cls: type[TideAPIError] = BadRequest  # a wrong path, not a wrong model
    else:
        cls = error_class(status)
    err = cls(str(info.get("message") or f"HTTP {status}"), status, str(info.get("type") or "error"),
              info.get("param"), info.get("code"))
    err.retry_after_s = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
    return err


def from_stream_error(body: dict[str, Any]) -> TideAPIError:
    """An SSE error event carries no HTTP status; infer it from the error's type and code."""
    info = body.get("error") or {}
    kind, code = info.get("type"), info.get("code")
    if code == "model_not_found":
        status = 404
    elif kind == "invalid_request_error":
        status = 400
    elif kind == "rate_limit_error":
        status = 429
    elif kind == "service_unavailable_error":
        status = 503
    elif kind == "timeout_error":
        status = 504
    else:
        status = 500
    return from_body(status, body)


def from_exception(exc: BaseException) -> TideAPIError:
    """Whatever a Serve handle call raised (a TideError from the replica, a Ray error) as a typed error."""
    err = to_error(exc)
    if isinstance(err, TideAPIError):
        return err
    return from_body(err.status, err.body())
