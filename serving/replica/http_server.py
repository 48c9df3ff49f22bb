"""A model replica's own HTTP server: the front (HAProxy, serving/front/haproxy.py) sends a model request here
directly, with no Ray call and no other Python process between the socket and the engine.

The server is uvicorn in the replica's own event loop, in front of vLLM's OpenAI app on the replica's AsyncLLM
(the same app `LLMServer.openai` drives). A thin ASGI gate keeps what Tide adds on the governed path: Tide's
stricter body checks, the model-task check, the per-request deadline (`X-Request-Timeout`, capped by the
server's limit, which the front sends), OpenAI-shaped error bodies, the answering replica's name, abort
counting, and a drain before the replica stops (the front stops sending first, in-flight requests finish).
A client that goes away is vLLM's own disconnect: its handler aborts the request in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from typing import Any

from ..errors import bad_request, engine_dead, error_body, error_event, to_error
from ..faults import TIMEOUT_HEADER, request_deadline_s
from .openai_app import CANCEL_AFTER_S  # one bound for a vLLM handler that never listens for the disconnect

logger = logging.getLogger("tide.replica.http")
PATH_KIND = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embed"}
MAX_TIMEOUT_HEADER = "x-tide-max-timeout"  # the server's request_timeout_s, set by the front on every request
MAX_BODY_HEADER = "x-tide-max-body"  # the server's max_body_bytes, set by the front on every request
MAX_BODY_BYTES = 4 * 1024 * 1024  # ServerConfig.max_body_bytes' default, for a caller without the header


def tide_checks(kind: str, data: dict[str, Any], task: str) -> None:
    """Tide's stricter checks of a chat, text-completion or embeddings body (the ingress's own, see
    serving/ingress.py `_serve`) of a body `read_json` accepted; raises a TideError naming the field."""
    from pydantic import ValidationError

    from ..protocol import EmbeddingRequest
    from ..validation import needs_vllm
    from ..protocol import ChatCompletionRequest, CompletionRequest

    schema = {"chat": ChatCompletionRequest, "completion": CompletionRequest, "embed": EmbeddingRequest}[kind]
    if not needs_vllm(kind, data, frozenset(schema.model_fields)):
        try:
            schema.model_validate(data)
        except ValidationError as e:
            raise to_error(e) from None
    if (kind == "embed") != (task == "embed"):
        what = "embeddings" if kind == "embed" else "chat or text completions"
        raise bad_request(f"Model `{data.get('model')}` does not support {what}.", "model", "model_not_supported")


async def _send_json(send: Any, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": raw, "more_body": False})


class ReplicaGate:
    """The ASGI app the replica's HTTP server runs. `server`: the LLMServer or EmbeddingServer it belongs to."""

    def __init__(self, server: Any):
        self.server = server
        self.refused = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        name = [(b"x-tide-replica", self.server._replica_name().encode())]
        if scope["path"] == "/health":  # the front's check
            ok = not self.server.engine.errored and not getattr(self.server, "draining", False)
            return await _send_json(send, 200 if ok else 503, {"status": "ok" if ok else "unavailable"}, name)
        if scope["path"] == "/tide/load":  # this engine's counts (LLMServer.load), for operators and tests
            return await _send_json(send, 200, await self.server.load(), name)
        kind = PATH_KIND.get(scope["path"])
        if kind is None or scope["method"] != "POST":
            return await _send_json(send, 404, error_body("Not found.", "not_found_error", None, "not_found"), name)
        self.in_flight += 1
        self.idle.clear()
        try:
            await self._serve(kind, scope, receive, send, name)
        except Exception as e:  # noqa: BLE001 - every failure leaves as an OpenAI error body
            err = to_error(e)
            with contextlib.suppress(Exception):
                await _send_json(send, err.status, err.body(), name)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    def refuse(self) -> None:
        """This replica's engine is dead: stop accepting connections, so the front marks it down at the next
        connection attempt (layer-4 observe) and sends that request elsewhere; open connections finish."""
        if self.refused:
            return
        self.refused = True
        http = getattr(self.server, "http", None)
        for listener in getattr(getattr(http, "uvicorn", None), "servers", None) or []:
            listener.close()
        logger.warning("engine dead: replica HTTP server stopped accepting")

    async def _serve(self, kind: str, scope: dict[str, Any], receive: Any, send: Any,
                     name: list[tuple[bytes, bytes]]) -> None:
        from starlette.requests import Request

        from ..httpio import read_json

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request = Request(scope, receive)
        data = await read_json(request, int(headers.get(MAX_BODY_HEADER) or MAX_BODY_BYTES))  # the ingress's checks
        body = await request.body()  # (read once above; Starlette keeps it)
        server = self.server
        tide_checks(kind, data, server.cfg.task)
        cap = float(headers.get(MAX_TIMEOUT_HEADER) or 600.0)
        left = request_deadline_s(headers.get(TIMEOUT_HEADER), cap)
        server._ensure_pusher()
        app = await server._openai_app()
        if server.engine.errored:
            self.refuse()
            raise engine_dead()
        await server._load_adapters()
        await self._run(app, scope, body, data, receive, send, name, left, data.get("stream") is True)

    async def _run(self, app: Any, scope: dict[str, Any], body: bytes, data: dict[str, Any], receive: Any,
                   send: Any, name: list[tuple[bytes, bytes]], left: float, stream: bool) -> None:
        from ..vllm_errors import openai_error_bytes

        gone = asyncio.Event()  # the deadline passed: the app is told its client left
        client = asyncio.ensure_future(receive())  # the client's http.disconnect, whenever it comes
        state = {"delivered": False, "started": False, "finished": False, "status": 0, "held": b"", "head": None}

        async def rx() -> dict[str, Any]:
            if not state["delivered"]:
                state["delivered"] = True
                return {"type": "http.request", "body": body, "more_body": False}
            waiter = asyncio.ensure_future(gone.wait())
            try:
                await asyncio.wait({client, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if client.done() and not state["finished"]:
                self.server.stats.counters.on_abort()
            return {"type": "http.disconnect"}

        async def tx(msg: dict[str, Any]) -> None:
            if gone.is_set():
                return  # the deadline's answer was sent instead
            if msg["type"] == "http.response.start":
                state["status"] = msg["status"]
                if msg["status"] >= 400:  # vLLM's error body becomes OpenAI's (held until it is whole)
                    state["head"] = msg
                    return
                state["started"] = True
                await send({**msg, "headers": [*msg.get("headers", []), *name]})
                return
            if msg["type"] != "http.response.body":
                return
            more = msg.get("more_body", False)
            if state["head"] is not None:
                state["held"] += msg.get("body", b"")
                if not more:
                    state["finished"] = True
                    if self.server.engine.errored:  # died under this request, before any byte left: the front
                        self.refuse()               # retries it elsewhere (retry-on 503, this listener closed)
                        state["status"], state["held"] = 503, json.dumps(engine_dead().body()).encode()
                    fixed = openai_error_bytes(state["status"], state["held"], scope["path"], data)
                    state["started"] = True
                    await send({"type": "http.response.start", "status": state["status"],
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(fixed)).encode()), *name]})
                    await send({"type": "http.response.body", "body": fixed, "more_body": False})
                return
            if not more:
                state["finished"] = True
            await send(msg)

        task = asyncio.ensure_future(app(scope, rx, tx))
        try:
            await asyncio.wait_for(asyncio.shield(task), left)
        except asyncio.TimeoutError:
            gone.set()  # vLLM's handler sees a disconnect and aborts the request in the engine
            asyncio.get_running_loop().call_later(CANCEL_AFTER_S, task.cancel)
            err = to_error(asyncio.TimeoutError())
            if not state["started"]:
                await _send_json(send, err.status, err.body(), name)
            elif stream and not state["finished"]:
                await send({"type": "http.response.body", "body": error_event(err.body()).encode(),
                            "more_body": False})
        finally:
            client.cancel()


class ReplicaHttp:
    """uvicorn serving a ReplicaGate on this node's address, in the replica's event loop."""

    def __init__(self, server: Any):
        self.gate = ReplicaGate(server)
        self.uvicorn: Any = None
        self.task: asyncio.Task | None = None
        self.address = ""

    async def start(self) -> str:
        import ray
        import uvicorn

        host = ray.util.get_node_ip_address()  # 127.0.0.1 where Ray is bound to loopback
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(lambda: self.gate, factory=True, host=host, port=port, lifespan="off",
                                access_log=False, log_level=None, log_config=None, timeout_keep_alive=60)
        self.uvicorn = uvicorn.Server(config)
        self.uvicorn.capture_signals = contextlib.nullcontext  # Ray owns this process's signals
        self.uvicorn.install_signal_handlers = lambda: None
        self.task = asyncio.get_running_loop().create_task(self.uvicorn.serve(sockets=[sock]))
        self.address = f"{host}:{port}"
        logger.info("replica HTTP server on %s", self.address)
        return self.address

    async def drain(self, front_delay_s: float, timeout_s: float) -> None:
        """Wait `front_delay_s` (the front takes this replica out), then for in-flight requests, then stop."""
        await asyncio.sleep(front_delay_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.gate.idle.wait(), timeout_s)
        if self.uvicorn is not None:
            self.uvicorn.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.task), 5.0)
