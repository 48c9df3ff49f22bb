"""Browser pages served by the ingress: the chat page at `/` and the live status page at `/status`.

Both are plain static files shipped inside the package (`serving/static/`), so nothing is built at run time.
The pages talk only to the public API (`/v1/...`, `/tide/status`) with the user's API key, so they need no
routes of their own beyond the files. The pages themselves carry no secrets and are served without a key.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

router = APIRouter()

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
# One library lookup (path normalisation, traversal and symlink checks, ETag / 304) for every asset.
_static = StaticFiles(directory=STATIC_DIR)  # next to this file, however the package was installed

# The pages load only their own scripts and styles and talk only to this origin: even if model output ever
# reached the DOM as HTML, no script could run and nothing could be sent elsewhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# No hashed file names, so browsers revalidate (ETag -> 304) rather than run a stale script after an upgrade.
PAGE_HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}


def _page(name: str) -> FileResponse:
    return FileResponse(os.path.join(STATIC_DIR, name), media_type="text/html; charset=utf-8",
                        headers=PAGE_HEADERS)


@router.get("/", include_in_schema=False)
async def chat_page() -> FileResponse:
    """The chat page: pick a model, stream answers, stop them."""
    return _page("chat.html")


@router.get("/status", include_in_schema=False)
async def status_page() -> FileResponse:
    """Live per-model charts fed by `/tide/status`."""
    return _page("status.html")


@router.api_route("/static/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def static_file(name: str, request: Request) -> Response:
    """Scripts and styles of the pages; unknown names are a 404 (OpenAI-shaped by the ingress's handler)."""
    response = await _static.get_response(os.path.normpath(name), request.scope)
    response.headers.update(PAGE_HEADERS)
    return response
