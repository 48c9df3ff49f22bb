"""The one HTTP ingress: OpenAI-compatible routes that dispatch by `model` to that model's deployment.

Request path: HTTP socket -> this replica (Serve direct ingress: read the body once, Tide's checks, keys, limits,
queue) -> the model replica via a DeploymentHandle (vLLM's own OpenAI layer on its engine) -> back through the
same hops. The ingress never re-encodes what the model replica wrote (serving/front/vllm_path.py). Errors leave
through `errors.to_error` only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from .coldstart import HoldGate, update_start_estimate
from .config import IngressModel, ServerConfig
from .errors import bad_request, error_body, model_not_found, to_error
from .faults import TIMEOUT_HEADER, request_deadline_s
from .gate.guard import Guard, Refused
from .patches.ray_loopback import bind_replica_grpc_to_node
from .httpio import error_response, read_json, replica_counts
from .observability.hub import get_hub
from .protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModelCard, ModelList
from .front.passthrough import DetokenizeRequest, ResponsesRequest, TokenizeRequest
from .validation import needs_vllm
from .front.vllm_path import VllmPath
from .observability.status import fleet_status, metrics_text
from .web import router as web_router
from .openapi_schema import install as install_openapi, request_body

logger = logging.getLogger("tide.ingress")
FRONT_GRACE_S = 20.0  # a stopping ingress's HAProxy finishes its requests this long (serving/app.py gives it time)
app = FastAPI(title="Tide", description="OpenAI-compatible LLM serving on Ray Serve + vLLM", docs_url=None)
app.include_router(web_router)  # the chat and status pages (plain static files)
install_openapi(app, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, TokenizeRequest, DetokenizeRequest,
                ResponsesRequest)  # request bodies in /openapi.json


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)


@app.exception_handler(Exception)
async def _any_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(to_error(exc))


# Note: serve.ingress captures the class when decorated, so every helper it uses must be defined above.
@serve.deployment
@serve.ingress(app)
class Ingress(VllmPath):
    """Routes by model name; holds one handle per model deployment."""

    def __init__(self, models: dict[str, DeploymentHandle], server: dict[str, Any], cold: dict[str, dict[str, Any]]):
        bind_replica_grpc_to_node()
        self.server = ServerConfig.model_validate(server)
        self.models = models
        self.streams = {name: h.options(stream=True) for name, h in models.items()}
        self.cards: dict[str, dict[str, Any]] = {}
        # what the ingress acts on per model (serving.config.IngressModel); the start estimate becomes what we measure
        self.cold = {n: IngressModel.model_validate(c) for n, c in cold.items()}
        self.gates = {n: HoldGate(c.max_held) for n, c in self.cold.items()}
        self.start_estimate = {n: c.start_s for n, c in self.cold.items()}
        self.counts: dict[str, tuple[int, int]] = {}
        self.rejected: dict[tuple[str, str], int] = {}  # (model, reason) -> count, for /metrics
        # API keys, per-key rate limits and each model's bounded queue (keys arrive as digests only)
        # LoRA: `base:adapter` requests go to the base model's deployment (cards as vLLM lists adapters)
        self.adapter_cards = {n: c.adapters for n, c in self.cold.items()}
        self.adapters = {n: [a["id"].rpartition(":")[2] for a in cards] for n, cards in self.adapter_cards.items()}
        self.guard = Guard(self.server.auth, {n: c.admission for n, c in self.cold.items()})
        self._hub: Any = None
        self._watch: asyncio.Task | None = None
        self.front: Any = None
        if os.environ.get("TIDE_FRONT") == "haproxy":  # HAProxy on the public port (serving/front/haproxy.py)
            from .front.haproxy_proc import start_front
            from .replica.reaper import start_reaper

            self._reaper = start_reaper()  # HAProxy dies with this replica, however it ends
            self.front = start_front(self.server, self.cold, self.guard.ring)

    async def __del__(self) -> None:
        if getattr(self, "front", None) is not None:  # its streams finish; a new front took the listener over
            await asyncio.to_thread(self.front.stop, FRONT_GRACE_S)

    async def _watch_replicas(self) -> None:
        try:
            me = serve.get_replica_context().replica_id.unique_id
        except Exception:
            me = "ingress"
        while True:
            self.counts = await asyncio.to_thread(replica_counts, list(self.models)) or self.counts
            if self.rejected and await self._hub_handle() is not None:
                self._hub.push_ingress.remote(me, dict(self.rejected))
            await asyncio.sleep(0.5)

    async def _hub_handle(self) -> Any:
        if self._hub is None:
            try:
                self._hub = await asyncio.to_thread(get_hub)
            except Exception:
                logger.debug("stats hub unreachable", exc_info=True)
        return self._hub

    async def _hub_data(self) -> dict[str, Any]:
        """The stats hub's latest numbers; empty when it cannot be reached (status stays up without it)."""
        try:
            hub = await self._hub_handle()
            return await asyncio.wait_for(hub.get.remote(), 2.0) if hub is not None else {}
        except Exception:
            return {}

    def _reject(self, model: str, reason: str) -> None:
        self.rejected[(model, reason)] = self.rejected.get((model, reason), 0) + 1

    def _refused(self, model: str, r: Refused) -> JSONResponse:
        self._reject(model, r.reason)
        return error_response(r.error, r.headers)

    def _locked(self, request: Request) -> JSONResponse | None:
        """The 401 for a protected non-model route called without a valid key, else None."""
        try:
            self.guard.check_key(request.url.path, request.headers)
        except Refused as r:
            return self._refused("*", r)
        return None

    def _is_cold(self, name: str) -> bool:
        """No running replica (scaled to zero, or all starting): requests are held, not failed."""
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_replicas())
        return self.counts.get(name, (1, 1))[0] == 0

    async def _capacity(self, model: str) -> int:
        """Requests the model's running replicas take at once (replicas x max_num_seqs); the replica count is
        asked of Serve before the model's first admission rather than guessed."""
        if model not in self.counts:
            self.counts = {**self.counts, **await asyncio.to_thread(replica_counts, [model])}
        return self.counts.get(model, (1, 1))[0] * self.cold[model].slots

    def _observed_start(self, name: str, t0: float) -> None:
        self.start_estimate[name] = update_start_estimate(self.start_estimate.get(name), time.monotonic() - t0)

    def _handle(self, name: str, stream: bool) -> DeploymentHandle:
        handles = self.streams if stream else self.models
        if name not in handles:
            raise model_not_found(name)
        return handles[name]

    async def _probe(self, name: str, timeout_s: float) -> str:
        try:
            await asyncio.wait_for(self.models[name].check_health.remote(), timeout_s)
            if name not in self.cards:
                self.cards[name] = await asyncio.wait_for(self.models[name].info.remote(), timeout_s)
            return "ready"
        except asyncio.TimeoutError:
            return "starting"
        except Exception:
            return "unavailable"

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """200 when every model's engine answers a health check (a model scaled to zero counts as healthy and
        is not woken), else 503 with each model's state."""
        counts = await asyncio.to_thread(replica_counts, list(self.models))
        cold = {n for n, (_, total) in counts.items() if total == 0}
        names = [n for n in self.models if n not in cold]
        states = await asyncio.gather(*(self._probe(n, 5.0) for n in names))
        models = {**dict(zip(names, states)), **{n: "scaled_to_zero" for n in cold}}
        ok = all(s == "ready" for s in states)
        return JSONResponse({"status": "ok" if ok else "degraded", "models": models}, status_code=200 if ok else 503)

    async def _status(self) -> tuple[dict[str, Any], dict[str, Any]]:
        counts, hub = await asyncio.gather(asyncio.to_thread(replica_counts, list(self.models)), self._hub_data())
        held = {n: g.held for n, g in self.gates.items()}
        admitted = {n: (g.in_flight, g.limit) for n, g in self.guard.gates.items()}
        shapes = {n: (c.workers, c.gpus) for n, c in self.cold.items()}
        return fleet_status(list(self.models), counts, hub, held, self.start_estimate, time.time(), admitted,
                            shapes), hub

    @app.get("/tide/status")
    async def status(self, request: Request) -> JSONResponse:
        """Per model: state, replicas desired/running, held requests, engine queue, tokens/s, TTFT p50."""
        if (refused := self._locked(request)) is not None:
            return refused
        return JSONResponse((await self._status())[0])

    @app.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        """Prometheus text: engines under vLLM's metric names (per model and replica) plus Tide's own."""
        if (refused := self._locked(request)) is not None:
            return refused
        status, hub = await self._status()
        return Response(metrics_text(status, hub), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> JSONResponse:
        if (refused := self._locked(request)) is not None:
            return refused
        missing = [n for n in self.models if n not in self.cards]
        if missing:  # learn max_model_len from warm models; never wake a cold one just to list it
            counts = await asyncio.to_thread(replica_counts, missing)
            warm = [n for n in missing if counts.get(n, (1, 1))[0] > 0]
            await asyncio.gather(*(self._probe(n, 1.0) for n in warm))
        cards = []
        for n in self.models:
            max_len = self.cards.get(n, {}).get("max_model_len")
            cards.append(ModelCard(id=n, root=self.cards.get(n, {}).get("model"), max_model_len=max_len))
            cards += [ModelCard(**a, max_model_len=max_len) for a in self.adapter_cards[n]]
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
    async def chat(self, request: Request) -> Response:
        return await self._serve(request, ChatCompletionRequest, "chat")

    @app.post("/v1/completions", openapi_extra=request_body(CompletionRequest))
    async def completions(self, request: Request) -> Response:
        return await self._serve(request, CompletionRequest, "completion")

    @app.post("/v1/embeddings", openapi_extra=request_body(EmbeddingRequest))
    async def embeddings(self, request: Request) -> Response:
        return await self._serve(request, EmbeddingRequest, "embed")

    @app.post("/v1/responses", openapi_extra=request_body(ResponsesRequest))
    async def responses(self, request: Request) -> Response:
        """OpenAI's Responses API, answered by vLLM's own layer in the model's replica."""
        return await self._serve(request, None, "vllm")

    @app.get("/v1/responses/{response_id}")
    async def get_response(self, request: Request, response_id: str) -> Response:
        """A stored response (any replica of any generating model reads the shared store)."""
        return await self._serve_stored(request, response_id)

    @app.post("/v1/responses/{response_id}/cancel")
    async def cancel_response(self, request: Request, response_id: str) -> Response:
        return await self._serve_stored(request, response_id)

    @app.post("/tokenize", openapi_extra=request_body(TokenizeRequest))
    async def tokenize(self, request: Request) -> Response:
        return await self._serve(request, None, "vllm")

    @app.post("/detokenize", openapi_extra=request_body(DetokenizeRequest))
    async def detokenize(self, request: Request) -> Response:
        return await self._serve(request, None, "vllm")

    # vLLM's pooling routes, where the model's task has them (vLLM's 404 otherwise): routed by the body's `model`
    @app.post("/pooling", include_in_schema=False)
    @app.post("/classify", include_in_schema=False)
    @app.post("/score", include_in_schema=False)
    @app.post("/v1/score", include_in_schema=False)
    @app.post("/rerank", include_in_schema=False)
    @app.post("/v1/rerank", include_in_schema=False)
    @app.post("/v2/rerank", include_in_schema=False)
    @app.post("/v2/embed", include_in_schema=False)
    async def pooling(self, request: Request) -> Response:
        return await self._serve(request, None, "vllm")

    def _check_task(self, model: str, kind: str) -> None:
        if (kind == "embed") != (self.cold[model].task == "embed"):
            what = "embeddings" if kind == "embed" else "chat or text completions"
            raise bad_request(f"Model `{model}` does not support {what}.", "model", "model_not_supported")

    def _retried(self, model: str) -> Any:
        def note(e: BaseException) -> None:
            self._reject(model, "retried_after_replica_death")
            logger.warning("replica of %s died before answering; retrying on another (%s)", model, type(e).__name__)
        return note

    async def _serve(self, request: Request, schema: type | None, kind: str) -> Response:
        """Every model request: Tide's checks and governance here, then vLLM's own OpenAI layer in a replica
        of the model (serving/front/vllm_path.py). `schema`: Tide's stricter model of the body, applied when the
        body stays inside it (a field vLLM adds, or a message shape beyond it, leaves the checks to vLLM)."""
        try:
            key = self.guard.check_key(request.url.path, request.headers)  # 401 before the body is read
            deadline_s = request_deadline_s(request.headers.get(TIMEOUT_HEADER), self.server.request_timeout_s)
            data = await read_json(request, self.server.max_body_bytes)
            if schema is not None and not needs_vllm(kind, data, frozenset(schema.model_fields)):
                try:
                    schema.model_validate(data)  # 400s naming the field, unknown roles and fields refused
                except ValidationError as e:
                    raise to_error(e) from None
            return await self._serve_vllm(request, data, key, deadline_s, kind)
        except Refused as r:  # a key refused before any model was read
            return self._refused("*", r)
        except Exception as e:
            return error_response(to_error(e))
