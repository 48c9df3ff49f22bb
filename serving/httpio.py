"""HTTP edges of the ingress: reading a bounded JSON body, OpenAI-shaped error responses, replica counts.

Helpers live here, not in ingress.py, because `serve.ingress` captures the class at decoration time and
the ingress module should hold only routes."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from ray import serve

from .errors import TideError, bad_request, request_too_large, retry_later
from .validation import check_text

_DRAIN_LIMIT = 64 * 1024 * 1024
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_response(err: TideError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def retry_response(status: int, message: str, code: str, retry_after: int) -> JSONResponse:
    """429/503 with a Retry-After header (seconds) and the OpenAI error body."""
    return error_response(retry_later(status, message, code), {"Retry-After": str(retry_after)})


async def read_json(request: Request, limit: int) -> Any:
    """The body as a JSON object, or a 413/400 TideError; never reads more than `limit` bytes into memory."""
    too_large = request_too_large(limit)
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        if int(size) <= _DRAIN_LIMIT:  # read and drop it, so the client gets the 413 rather than a reset
            async for _ in request.stream():
                pass
        raise too_large
    body = await request.body()
    if len(body) > limit:
        raise too_large
    return parse_json_body(body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def parse_json_body(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 that says what is wrong: malformed JSON, bad UTF-8, NaN or
    Infinity, an integer past Python's digit limit, nesting deeper than the parser's stack, or text that is
    not valid Unicode (an escaped lone surrogate)."""
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise bad_request("The JSON body of your request is nested too deeply.", None, "invalid_json") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, over-long integer literals
        raise bad_request(f"We could not parse the JSON body of your request: {e}", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", None, "invalid_json")
    if b"\\u" in body and _SURROGATE_ESCAPE.search(body):  # only an escape can spell a lone surrogate
        check_text(data)
    return data


def replica_counts(names: list[str]) -> dict[str, tuple[int, int]]:
    """(running, total) replicas per model, from the Serve controller. Empty when it cannot be asked."""
    from .config import APP_NAME, deployment_name

    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:
        return {}
    out = {}
    for n in names:
        dep = app.deployments.get(deployment_name(n)) if app is not None else None
        if dep is not None:
            out[n] = (dep.replica_states.get("RUNNING", 0), sum(dep.replica_states.values()))
    return out
