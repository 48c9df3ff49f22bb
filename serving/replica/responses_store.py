"""Stored Responses-API answers that every replica of every model can read, so `previous_response_id` works
whichever replica a follow-up lands on (and after the replica that answered first is gone).

vLLM's `OpenAIServingResponses` keeps two plain dicts per engine process (`response_store` and `msg_store`),
which never shrink and which no other replica sees. Here both become `SharedDict`s: a write is also sent to
one small named actor (`ResponsesStore`), and before a request that names a `previous_response_id` the
replica copies that response in from the actor when it does not hold it (`fetch_previous`). The actor keeps
the newest `MAX_KEPT` responses (`BoundedStore`, pure), so memory stays bounded where vLLM's leaks.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections import OrderedDict
from typing import Any, Callable

import ray

logger = logging.getLogger("tide.responses")

STORE_NAME = "tide-responses"
STORE_NAMESPACE = "tide"
MAX_KEPT = 10_000  # responses kept cluster-wide (oldest dropped first)
KINDS = ("response", "messages")


class BoundedStore:
    """The newest `max_kept` entries per kind, oldest written first out. Pure: the actor wraps it."""

    def __init__(self, max_kept: int = MAX_KEPT) -> None:
        self.max_kept = max_kept
        self.data: dict[str, OrderedDict[str, Any]] = {k: OrderedDict() for k in KINDS}

    def put(self, kind: str, key: str, value: Any) -> None:
        entries = self.data[kind]
        entries.pop(key, None)
        entries[key] = value
        while len(entries) > self.max_kept:
            entries.popitem(last=False)

    def get(self, key: str) -> dict[str, Any]:
        """What is kept under `key`, by kind (absent kinds left out)."""
        return {k: self.data[k][key] for k in KINDS if key in self.data[k]}

    def __len__(self) -> int:
        return len(self.data["response"])


class SharedDict(dict):
    """A dict that also hands every write to `publish(key, value)` (`keep` stores without publishing) and keeps
    only its newest `max_kept` entries (vLLM's own dicts never shrink). What `publish` returns (an awaitable:
    the actor call) is kept until `flush`, so an answer leaves the replica only once every replica can read it."""

    def __init__(self, publish: Callable[[str, Any], Any], initial: Any = (), max_kept: int = MAX_KEPT) -> None:
        super().__init__(initial)
        self._publish, self._max_kept = publish, max_kept
        self.pending: list[Any] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.keep(key, value)
        try:
            sent = self._publish(key, value)
            if sent is not None:
                self.pending.append(sent)
        except Exception:  # noqa: BLE001 - sharing is best effort; this replica still answers follow-ups
            logger.warning("could not share stored response %s", key, exc_info=True)

    async def flush(self) -> None:
        """Wait until the writes so far reached the shared store (a follow-up may land on any replica at once)."""
        while self.pending:
            sent, self.pending = self.pending, []
            for s in sent:
                try:
                    await s
                except Exception:  # noqa: BLE001 - best effort, as above
                    logger.warning("could not share a stored response", exc_info=True)

    def keep(self, key: str, value: Any) -> None:
        self.pop(key, None)
        super().__setitem__(key, value)
        while len(self) > self._max_kept:
            del self[next(iter(self))]


def previous_response_id(body: bytes) -> str | None:
    """The `previous_response_id` a Responses-API body names (None when absent or not a string)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    rid = data.get("previous_response_id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and rid else None


# ---- Ray glue ------------------------------------------------------------------------------------------------


@ray.remote(num_cpus=0, max_restarts=-1)
class ResponsesStore:
    def __init__(self) -> None:
        self.store = BoundedStore()

    def put(self, kind: str, key: str, value: Any) -> None:
        self.store.put(kind, key, value)

    def get(self, key: str) -> dict[str, Any]:
        return self.store.get(key)

    def size(self) -> int:
        return len(self.store)


def get_store() -> Any:
    """The store actor's handle, created by whoever asks first. Blocking: call it off the event loop."""
    from ..observability.hub import on_head

    return ResponsesStore.options(name=STORE_NAME, namespace=STORE_NAMESPACE, lifetime="detached",
                                  get_if_exists=True, **on_head()).remote()


def kill_store() -> None:
    try:
        ray.kill(ray.get_actor(STORE_NAME, namespace=STORE_NAMESPACE))
    except Exception:  # noqa: BLE001 - never created, or Ray is going away
        pass


def share(serving: Any, store: Any) -> None:
    """Turn on vLLM's response store in this replica's `OpenAIServingResponses` and share what it stores."""
    serving.enable_store = True  # OpenAI's default is to store; vLLM's needs VLLM_ENABLE_RESPONSES_API_STORE
    def publisher(kind: str) -> Callable[[str, Any], None]:  # pickled here: the actor never imports vLLM
        return lambda key, value: store.put.remote(kind, key, pickle.dumps(value))

    serving.response_store = SharedDict(publisher("response"), serving.response_store)
    serving.msg_store = SharedDict(publisher("messages"), serving.msg_store)


def stored_id(path: str) -> str | None:
    """The response id of `/v1/responses/{id}` or `/v1/responses/{id}/cancel` (None for other paths)."""
    parts = path.strip("/").split("/")
    if parts[:2] != ["v1", "responses"] or len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "cancel"):
        return None
    return parts[2] or None


async def flush(serving: Any) -> None:
    """Every stored response and message list this replica wrote so far is in the shared store."""
    for d in (serving.response_store, serving.msg_store):
        if isinstance(d, SharedDict):
            await d.flush()


async def fetch_previous(serving: Any, store: Any, body: bytes) -> None:
    """Copy the response a follow-up continues into this replica's stores when another replica wrote it."""
    rid = previous_response_id(body)
    if rid is not None:
        await fetch_stored(serving, store, rid)


async def fetch_stored(serving: Any, store: Any, rid: str) -> None:
    """Copy response `rid` into this replica's stores when another replica wrote it (absent: vLLM's 404)."""
    if rid in serving.response_store:
        return
    found = await store.get.remote(rid)
    if "messages" in found:
        serving.msg_store.keep(rid, pickle.loads(found["messages"]))
    if "response" in found:  # last: vLLM looks the response up first, then its messages
        serving.response_store.keep(rid, pickle.loads(found["response"]))
