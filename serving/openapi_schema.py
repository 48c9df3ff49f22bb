"""OpenAPI request-body schemas for routes that read the raw `Request`.

The chat and completion routes parse the body themselves (size cap first, then one pydantic validation), so
FastAPI sees no body parameter and `/openapi.json` would describe no body at all: clients and schema-driven
fuzzers (schemathesis) would not know what to send. These helpers declare the pydantic models as the request
body through `openapi_extra`, and put the models' schemas (with their nested `$defs` hoisted) into
`components.schemas`, where the `$ref`s point. Error responses are declared as the OpenAI error object.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from .protocol import ErrorResponse

_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model`, with OpenAI-shaped 4xx/5xx responses."""
    error = {"content": {"application/json": {"schema": _ref(ErrorResponse)}}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model)}}},
        "responses": {
            "4XX": {"description": "OpenAI error object (bad input, unknown model, auth, rate limit)", **error},
            "5XX": {"description": "OpenAI error object (engine unavailable, timeout)", **error},
        },
    }


def component_schemas(*models: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """JSON schemas of `models` and everything they nest, keyed by name, refs pointing into components."""
    out: dict[str, dict[str, Any]] = {}
    for m in (*models, ErrorResponse):
        schema = m.model_json_schema(ref_template=_REF, mode="validation")
        out.update(schema.pop("$defs", {}))
        out[m.__name__] = schema
    return out


def install(app: FastAPI, *models: type[BaseModel]) -> None:
    """Make `app.openapi()` carry the schemas of `models` (FastAPI adds only models it sees in signatures)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                                 description=app.description, routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, s in component_schemas(*models).items():
                if name in schemas and schemas[name] != s:
                    raise ValueError(f"two different OpenAPI schemas are named {name!r}")
                schemas[name] = s
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
