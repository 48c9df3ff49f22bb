"""Call Tide's models from Python on the cluster, through Serve handles (no HTTP hop).

    from serving.sdk import get_model
    connect("auto")                                # or ray.init(address=...); not needed inside a Serve replica
    tiny = get_model("tiny")
    reply = tiny.chat([{"role": "user", "content": "Hi"}], max_tokens=16)   # -> protocol.ChatCompletion
    for chunk in tiny.chat_stream([...], max_tokens=16): ...                  # -> ChatCompletionChunk

Calls go straight to the model's deployment (`LLMServer`), which renders the same JSON and SSE the HTTP API
sends; they are parsed back into the protocol's pydantic models, and errors become the SDK's typed errors.
Note: a handle call skips the ingress, so it is not held while a scaled-to-zero model starts; Serve queues it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from ..engine import APP_NAME, deployment_name
from ..protocol import ChatCompletion, ChatCompletionChunk, Completion
from .errors import ConnectionFailed, ModelNotFound, TideAPIError, Unavailable, from_exception
from .wire import Kind, SSEDecoder, build_request, chunks_from_events, event_chunk, parse_response

Messages = list[dict[str, Any]]


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
        """Chat completion; `params` are the request fields of the HTTP API (max_tokens, temperature, ...)."""
        return self._call("chat", "chat", {"messages": messages, **params})

    def complete(self, prompt: Any, **params: Any) -> Completion:
        """Text completion of a string, token ids, or a list of either."""
        return self._call("completion", "completion", {"prompt": prompt, **params})

    async def achat(self, messages: Messages, **params: Any) -> ChatCompletion:
        return await self._acall("chat", "chat", {"messages": messages, **params})

    async def acomplete(self, prompt: Any, **params: Any) -> Completion:
        return await self._acall("completion", "completion", {"prompt": prompt, **params})

    # ---- streams ----
    def chat_stream(self, messages: Messages, **params: Any) -> Iterator[ChatCompletionChunk]:
        """Yields chunks as the engine produces them; ends after the last one (the server's [DONE])."""
        return self._iter("chat", "chat_stream", {"messages": messages, **params})

    def complete_stream(self, prompt: Any, **params: Any) -> Iterator[Completion]:
        return self._iter("completion", "completion_stream", {"prompt": prompt, **params})

    def achat_stream(self, messages: Messages, **params: Any) -> AsyncIterator[ChatCompletionChunk]:
        return self._aiter("chat", "chat_stream", {"messages": messages, **params})

    def acomplete_stream(self, prompt: Any, **params: Any) -> AsyncIterator[Completion]:
        return self._aiter("completion", "completion_stream", {"prompt": prompt, **params})

    # ---- plumbing ----
    def _call(self, kind: Kind, method: str, fields: dict[str, Any]) -> Any:
        req = build_request(kind, self.name, False, **fields)
        try:
            body = getattr(self._handle, method).remote(req).result()
        except Exception as e:
            raise from_exception(e) from None
        return parse_response(kind, body)

    async def _acall(self, kind: Kind, method: str, fields: dict[str, Any]) -> Any:
        req = build_request(kind, self.name, False, **fields)
        try:
            body = await getattr(self._handle, method).remote(req)
        except Exception as e:
            raise from_exception(e) from None
        return parse_response(kind, body)

    def _iter(self, kind: Kind, method: str, fields: dict[str, Any]) -> Iterator[Any]:
        req = build_request(kind, self.name, True, **fields)  # raises before the generator starts
        gen = getattr(self._stream, method).remote(req)
        return chunks_from_events(kind, _events(gen))

    def _aiter(self, kind: Kind, method: str, fields: dict[str, Any]) -> AsyncIterator[Any]:
        req = build_request(kind, self.name, True, **fields)
        gen = getattr(self._stream, method).remote(req)
        return _achunks(kind, gen)


def _events(gen: Any) -> Iterator[str]:
    decoder = SSEDecoder()
    try:
        for text in gen:
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


async def _achunks(kind: Kind, gen: Any) -> AsyncIterator[Any]:
    decoder = SSEDecoder()
    try:
        async for text in gen:
            for data in decoder.feed(text):
                chunk = event_chunk(kind, data)
                if chunk is None:
                    return
                yield chunk
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
