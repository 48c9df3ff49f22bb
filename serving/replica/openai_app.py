"""vLLM's own OpenAI server app, built inside the model replica on the replica's AsyncLLM and called in-process.

What `vllm serve` answers (tools and tool choice, `response_format`, logprobs, `echo`, `/v1/responses`,
`/tokenize`, `/detokenize`, vLLM's sampling extensions, ...) comes from vLLM's own handlers, with its OpenAI
error shapes, instead of a copy Tide would have to keep current. The app is vLLM's FastAPI app
(`build_app` + `init_app_state`, as Ray Serve LLM's `build_asgi_app` does), but no socket is opened: the
replica drives it as an ASGI callable, one request at a time, and streams its bytes back to the ingress.
A caller that goes away cancels the call, which vLLM sees as a client disconnect and aborts in the engine.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any, AsyncIterator, Mapping

Head = tuple[int, list[tuple[str, str]]]  # (status, headers) of an ASGI response
CANCEL_AFTER_S = 10.0


def vllm_args(model: str, served_name: str, server_args: Mapping[str, Any]) -> Any:
    """The Namespace `vllm serve MODEL` would have, with the model's server options (ModelConfig.server_args)
    applied. Engine options are not repeated here: the engine already runs, and build_openai_app copies what
    the OpenAI layer reads of them from the engine's own config."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", model])
    known = vars(args)
    for key, value in server_args.items():
        if key not in known:
            raise ValueError(f"unknown vLLM server option {key!r}")
        setattr(args, key, value)
    args.served_model_name = [served_name]
    args.disable_fastapi_docs = True
    return args


async def build_openai_app(engine: Any, args: Any, loras: Mapping[str, Any] | None = None) -> Any:
    """vLLM's FastAPI app on `engine`, its serving state initialised for the tasks the engine supports.

    `loras`: public name (`base:adapter`) -> the LoRARequest Tide's own path uses, so both paths share one
    adapter slot in the engine (same `lora_int_id`)."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app

    tasks = await engine.get_supported_tasks()
    args.structured_outputs_config = engine.vllm_config.structured_outputs_config  # reasoning parser, backend
    app = build_app(args, supported_tasks=tasks, model_config=engine.model_config)
    await init_app_state(engine, app.state, args, supported_tasks=tasks)
    # vLLM's engine-error handler flips `state.server.should_exit` (uvicorn's); there is no uvicorn here, and
    # Serve replaces a replica whose engine died through its health check.
    app.state.server = types.SimpleNamespace(should_exit=False)
    import msgspec

    models = app.state.openai_serving_models
    for name, req in (loras or {}).items():
        models.lora_requests[name] = msgspec.structs.replace(req, lora_name=name)  # answers name the model as asked
    return app


def _scope(method: str, path: str, query: str, headers: Mapping[str, str]) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": query.encode(), "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
    }


async def call_app(app: Any, method: str, path: str, body: bytes, headers: Mapping[str, str],
                   query: str = "", gap_s: float = 0.0) -> AsyncIterator[Head | bytes]:
    """Run one request through the ASGI `app`: yields (status, headers) first, then the body's chunks.

    `gap_s`: from the second chunk on, wait this long after each and send what the app wrote meanwhile as
    one chunk (the first token is never delayed). Each yield is one Ray streaming item, so under load this cuts
    the per-token hops (ModelConfig.stream_batch_ms). Closing or cancelling the iterator disconnects the
    client: vLLM's handlers then stop and abort."""
    sent: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await sent.put(message)

    async def run() -> None:
        try:
            await app(_scope(method, path, query, headers), receive, send)
        finally:
            await sent.put(None)

    task = asyncio.get_running_loop().create_task(run())
    held: list[Any] = []  # a message taken early while merging chunks
    chunks = 0
    try:
        while True:
            msg = held.pop() if held else await sent.get()
            if msg is None:
                task.result()  # re-raise what the app raised (FastAPI answers errors itself)
                return
            if msg["type"] == "http.response.start":
                yield msg["status"], [(k.decode("latin-1"), v.decode("latin-1")) for k, v in msg.get("headers", [])]
                continue
            if msg["type"] != "http.response.body":
                continue
            parts, more = [msg.get("body") or b""], msg.get("more_body", False)
            while more and not sent.empty():  # what the app wrote meanwhile travels as one chunk
                nxt = sent.get_nowait()
                if nxt is None or nxt["type"] != "http.response.body":
                    held.append(nxt)  # the app ended: the loop's next turn sees it
                    break
                parts.append(nxt.get("body") or b"")
                more = nxt.get("more_body", False)
            chunk = b"".join(parts)
            if chunk:
                yield chunk
                chunks += 1
            if not more:
                return
            if gap_s and chunks > 1:  # a chat stream's first event is the role alone: the first token follows
                await asyncio.sleep(gap_s)
    finally:
        # The app sees the client leave (vLLM's handlers listen for it and abort in the engine). Cancelling the
        # app's task instead would orphan the handler task vLLM's `with_cancellation` runs beside its listener.
        gone.set()
        if not task.done():
            asyncio.get_running_loop().call_later(CANCEL_AFTER_S, task.cancel)  # a handler that never listens
