"""Browser pages served by the ingress (chat at `/`, live status at `/status`)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
