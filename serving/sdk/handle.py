"""Call Tide's models from Python on the cluster, through Serve handles (no HTTP hop).

    from serving.sdk import get_model
    connect("auto")                                # or ray.init(address=...); not needed inside a Serve replica
    tiny = get_model("tiny")
    reply = tiny.chat([{"role": "user", "content": "Hi"}], max_tokens=16)   # -> openai ChatCompletion
    for chunk in tiny.chat_stream([...], max_tokens=16): ...                  # -> ChatCompletionChunk

Calls go straight to the model's deployment (`LLMServer.openai`: vLLM's own OpenAI layer in the replica), which
sends the same JSON and SSE the HTTP API does; they are parsed into the `openai` package's types, and errors
become the SDK's typed errors. Every field the HTTP API takes works here too (tools, response_format, ...).
Note: a handle call skips the ingress, so it is not held while a scaled-to-zero model starts; Serve queues it.
"""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ..config import APP_NAME, deployment_name
from ..vllm_errors import openai_error_bytes
from .errors import ConnectionFailed, ModelNotFound, TideAPIError, Unavailable, from_body, from_exception
from .wire import PATHS, Kind, SSEDecoder, build_request, chunks_from_events, event_chunk, parse_response

Messages = list[dict[str, Any]]
_JSON = {"content-type": "application/json"}
ErrorOf = Callable[[int, bytes], TideAPIError]  # (status, vLLM's error body) -> the typed error


def use_ray_token_auth() -> bool:
    """Opt this process into Ray's token auth when a token is available and no mode was chosen.

    Ray 2.60 turns token auth on by itself only for `address="auto"`; a driver given an explicit address
    would connect without the token and be refused by a cluster that (like Tide's) keeps auth on.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return os.environ["RAY_AUTH_MODE"].lower() == "token"
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config

        Config.initialize("")  # Ray caches its config at import: make this process see the new mode
        return True
    return False


def connect(address: str = "auto", **init_kwargs: Any) -> None:
    """Attach this process to a running Ray cluster (with its auth token), so `get_model` can find Tide."""
    import ray

    from ..loopback import joining

    use_ray_token_auth()
    joining(address)
    ray.init(address=address, log_to_driver=False, configure_logging=False, **init_kwargs)


def served_models(app_name: str = APP_NAME) -> list[str]:
    """Deployment names in the Tide app. Never starts Ray: without a connection it says how to make one."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        raise ConnectionFailed("not connected to a Ray cluster: call serving.sdk.connect(address) first "
                               "(or run this code on the cluster)")
    try:
        app = serve.status().applications.get(app_name)
    except Exception as e:  # no Serve controller on this cluster
        raise Unavailable(f"Ray Serve is not running on this cluster ({e})", 503, "service_unavailable_error",
                          None, "service_unavailable") from None
    return sorted(app.deployments) if app is not None else []


def get_model(name: str, app_name: str = APP_NAME) -> "ModelHandle":
    """A typed handle to model `name`; raises `ModelNotFound` when the Tide app does not serve it."""
    from ray import serve

    dep = deployment_name(name)
    deployments = served_models(app_name)
    if dep not in deployments:
        have = ", ".join(d.removeprefix("model-") for d in deployments if d.startswith("model-")) or "none"
        raise ModelNotFound(f"The model `{name}` does not exist (served: {have}).", 404, "invalid_request_error",
                            "model", "model_not_found")
    return ModelHandle(name, serve.get_deployment_handle(dep, app_name=app_name))


class ModelHandle:
    """One model's deployment, with OpenAI-typed calls: sync, async and streaming variants."""

    def __init__(self, name: str, handle: Any):
        self.name = name
        self._handle = handle
        self._stream = handle.options(stream=True)

    def __repr__(self) -> str:
        return f"ModelHandle({self.name!r})"

    # ---- whole responses ----
    def chat(self, messages: Messages, **params: Any) -> ChatCompletion:
        """Chat completion; `params` are the request fields of the HTTP API (max_tokens, temperature, tools, ...)."""
        return self._call("chat", {"messages": messages, **params})

    def complete(self, prompt: Any, **params: Any) -> Completion:
        """Text completion of a string, token ids, or a list of either."""
        return self._call("completion", {"prompt": prompt, **params})

    async def achat(self, messages: Messages, **params: Any) -> ChatCompletion:
        return await self._acall("chat", {"messages": messages, **params})

    async def acomplete(self, prompt: Any, **params: Any) -> Completion:
        return await self._acall("completion", {"prompt": prompt, **params})

    # ---- streams ----
    def chat_stream(self, messages: Messages, **params: Any) -> Iterator[ChatCompletionChunk]:
        """Yields chunks as the engine produces them; ends after the last one (the server's [DONE])."""
        return chunks_from_events("chat", _events(self._open("chat", True, {"messages": messages, **params})))

    def complete_stream(self, prompt: Any, **params: Any) -> Iterator[Completion]:
        return chunks_from_events("completion", _events(self._open("completion", True, {"prompt": prompt, **params})))

    def achat_stream(self, messages: Messages, **params: Any) -> AsyncIterator[ChatCompletionChunk]:
        return _achunks("chat", self._open("chat", True, {"messages": messages, **params}))

    def acomplete_stream(self, prompt: Any, **params: Any) -> AsyncIterator[Completion]:
        return _achunks("completion", self._open("completion", True, {"prompt": prompt, **params}))

    # ---- plumbing ----
    def _open(self, kind: Kind, stream: bool, fields: dict[str, Any]) -> tuple[Any, ErrorOf]:
        """Start the call: (status, headers) first, then the body's bytes (a bad argument raises before)."""
        from ..router import routing_prompt

        data = build_request(kind, self.name, stream, **fields)
        gen = self._stream.openai.remote("POST", PATHS[kind], json.dumps(data).encode(), _JSON,
                                         prompt=routing_prompt(data))
        return gen, lambda status, body: from_body(status, json.loads(openai_error_bytes(status, body, PATHS[kind],
                                                                                          data)))

    def _call(self, kind: Kind, fields: dict[str, Any]) -> Any:
        gen, error = self._open(kind, False, fields)
        try:
            items = iter(gen)
            status, _ = next(items)
            body = b"".join(items)
        except Exception as e:
            raise from_exception(e) from None
        if status >= 400:
            raise error(status, body)
        return parse_response(kind, body)

    async def _acall(self, kind: Kind, fields: dict[str, Any]) -> Any:
        gen, error = self._open(kind, False, fields)
        try:
            status, _ = await gen.__anext__()
            body = b"".join([c async for c in gen])
        except Exception as e:
            raise from_exception(e) from None
        if status >= 400:
            raise error(status, body)
        return parse_response(kind, body)


def _texts(chunks: Iterable[bytes]) -> Iterator[str]:
    utf8 = codecs.getincrementaldecoder("utf-8")()
    for chunk in chunks:
        yield utf8.decode(chunk)


def _events(opened: tuple[Any, ErrorOf]) -> Iterator[str]:
    gen, error = opened
    decoder = SSEDecoder()
    try:
        items = iter(gen)
        status, _ = next(items)
        if status >= 400:
            raise error(status, b"".join(items))
        for text in _texts(items):
            yield from decoder.feed(text)
    except TideAPIError:
        raise
    except Exception as e:
        raise from_exception(e) from None
    finally:
        _cancel(gen)  # stops the engine's work when the caller stops early
    last = decoder.close()
    if last is not None:
        yield last


async def _achunks(kind: Kind, opened: tuple[Any, ErrorOf]) -> AsyncIterator[Any]:
    gen, error = opened
    decoder, utf8 = SSEDecoder(), codecs.getincrementaldecoder("utf-8")()
    try:
        status, _ = await gen.__anext__()
        if status >= 400:
            raise error(status, b"".join([c async for c in gen]))
        async for chunk in gen:
            for data in decoder.feed(utf8.decode(chunk)):
                chunk_ = event_chunk(kind, data)
                if chunk_ is None:
                    return
                yield chunk_
    except TideAPIError:
        raise
    except Exception as e:
        raise from_exception(e) from None
    finally:
        _cancel(gen)
    raise TideAPIError("the stream ended before [DONE] (replica died?)", 502, "server_error")


def _cancel(gen: Any) -> None:
    try:
        gen.cancel()
    except Exception:  # already finished or its replica is gone: nothing left to stop
        pass
