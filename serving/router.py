"""Tide's prefix-cache-aware request router, plugged into Ray Serve's request-router hook.

Why: vLLM skips the prefill of prompt blocks an engine has already cached (shared system prompts, chat
history). Serve's default router (power of two choices) scatters a conversation over replicas, so each turn
pays the full prefill again. This router sends a prompt where its longest prefix went before, unless that
replica is much busier (autoscale.routing.PrefixRouter decides; this module is only the glue).

The glue is three small steps, each tested without Ray: the prompt of a pending request (`request_prompt`),
the queue lengths of the candidates (`queue_lengths`), the ranked answer Serve expects (`ranked`).
Requests without a prompt (`info`, `load`, ...) go through Serve's own power-of-two choice.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Mapping, Sequence, TypeVar

from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import LocalityMixin, MultiplexMixin, PendingRequest, RequestRouter, RunningReplica

from autoscale.routing import PrefixRouter, RouterConfig

if TYPE_CHECKING:
    from .config import ModelConfig

logger = logging.getLogger("tide.router")

ROUTER_CLASS = "serving.router:TidePrefixRouter"
PROMPT_METHODS = frozenset({"chat", "completion", "chat_stream", "completion_stream"})

Prompt = str | list[int]
R = TypeVar("R")


# ---- pure steps ----------------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    """A message's content as text: a string, None, or a list of text parts (objects or dicts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, Mapping) else getattr(p, "text", "") for p in content)


def chat_prompt(messages: Iterable[Any]) -> str:
    """Roles and contents in order, so conversations that share a system prompt share prefix blocks."""
    parts = []
    for m in messages:
        role = m.get("role", "") if isinstance(m, Mapping) else m.role
        content = m.get("content") if isinstance(m, Mapping) else m.content
        parts.append(f"{role}\n{_text(content)}\n")
    return "".join(parts)


def completion_prompt(prompt: Any) -> Prompt | None:
    """A completion's prompt: text or token ids; for a batch, its first prompt (they usually share a prefix)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, int):
            return list(prompt)
        if isinstance(first, (str, list)):
            return completion_prompt(first)
    return None


def request_prompt(method: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Prompt | None:
    """The prompt a model-deployment call carries, or None (no prompt: use Serve's default choice).

    The ingress calls `chat(req)`, `completion(req)` and their `_stream` twins with one request object
    (serving.protocol), passed positionally; dicts of the same shape work too (other callers, tests).
    An `openai(...)` call (vLLM's layer in the replica) carries the prompt the ingress read of its body as
    the `prompt` keyword (`routing_prompt`), so the body is not parsed again here.
    """
    if method == "openai":
        prompt = kwargs.get("prompt")
        return prompt if isinstance(prompt, (str, list)) else None
    if method not in PROMPT_METHODS:
        return None
    req = args[0] if args else next(iter(kwargs.values()), None)
    if req is None:
        return None
    get = req.get if isinstance(req, Mapping) else lambda k: getattr(req, k, None)
    prompt = chat_prompt(get("messages")) if get("messages") is not None else completion_prompt(get("prompt"))
    model = get("model")
    if isinstance(model, str) and ":" in model and isinstance(prompt, str):
        prompt = f"[{model}]{prompt}"  # vLLM's prefix cache is per LoRA adapter: `base:a` shares nothing with base
    return prompt


def routing_prompt(data: Mapping[str, Any]) -> Prompt | None:
    """What the router keys a chat or text completion body on (see `request_prompt`); None for a body whose
    shape it cannot read (vLLM's layer answers that one, usually with a 400)."""
    try:
        return request_prompt("chat" if "messages" in data else "completion", [data], {})
    except (AttributeError, TypeError):
        return None


def queue_lengths(replicas: Iterable[R], key: Callable[[R], Hashable],
                  lookup: Callable[[Hashable], int | None]) -> tuple[dict[Hashable, int], list[R]]:
    """Known queue lengths by replica id (from Serve's cache), and the replicas whose length is unknown."""
    known: dict[Hashable, int] = {}
    missing: list[R] = []
    for r in replicas:
        q = lookup(key(r))
        if q is None:
            missing.append(r)
        else:
            known[key(r)] = q
    return known, missing


def with_room(queues: Mapping[Hashable, int], capacity: Mapping[Hashable, int]) -> dict[Hashable, int]:
    """Candidates below their max_ongoing_requests; all of them if every one is full (Serve then backs off)."""
    room = {r: q for r, q in queues.items() if q < capacity.get(r, q + 1)}
    return room or dict(queues)


def ranked(chosen: Hashable, replicas: Mapping[Hashable, R]) -> list[list[R]]:
    """Serve's answer format: the chosen replica alone first, then the rest (Serve takes the least loaded)."""
    rest = [r for rid, r in replicas.items() if rid != chosen]
    return [[replicas[chosen]]] + ([rest] if rest else [])


# ---- the Serve hook ------------------------------------------------------------------------------------------


class TidePrefixRouter(LocalityMixin, MultiplexMixin, RequestRouter):
    """Serve's RequestRouter around PrefixRouter. No FIFOMixin on purpose: the replica chosen for a prompt
    must go to that request, not to whichever request waited longest."""

    def initialize_state(self, **kwargs: Any) -> None:
        """Serve passes RequestRouterConfig.request_router_kwargs here (a RouterConfig dump)."""
        self.prefix = PrefixRouter(RouterConfig.model_validate(kwargs))

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        prompt = None
        if pending_request is not None and not pending_request.metadata.multiplexed_model_id:
            prompt = request_prompt(pending_request.metadata.call_method, pending_request.args,
                                    pending_request.kwargs)
        if prompt is None or not candidate_replicas:
            return await PowerOfTwoChoicesRequestRouter.choose_replicas(self, candidate_replicas, pending_request)
        pending_request.routing_context.should_backoff = True  # no hot loop while every replica is full
        by_id = {r.replica_id: r for r in candidate_replicas}
        known, missing = queue_lengths(candidate_replicas, lambda r: r.replica_id,
                                       self._replica_queue_len_cache.get)
        for r, q in await self._probe_queue_lens(missing, 0) if missing else []:
            if q is not None:  # no answer in time: leave it out this round
                known[r.replica_id] = q
        if not known:
            return [candidate_replicas]
        queues = with_room(known, {rid: r.max_ongoing_requests for rid, r in by_id.items()})
        route = self.prefix.choose(prompt, queues)
        logger.debug("route %s -> %s (%s)", pending_request.metadata.request_id, route.replica, route.reason)
        return ranked(route.replica, by_id)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: Any, result: Any) -> None:
        """Serve accepted the request on `replica_id`, possibly not the one ranked first: its prefix lives there."""
        if pending_request.metadata.multiplexed_model_id:
            return
        prompt = request_prompt(pending_request.metadata.call_method, pending_request.args, pending_request.kwargs)
        if prompt is not None:
            self.prefix.record(prompt, replica_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        """Forget the prefixes of replicas that went away (scale-down, replacement)."""
        before = set(self._replica_id_set)
        super().update_replicas(replicas)
        for gone in before - set(self._replica_id_set):
            self.prefix.forget_replica(gone)

    def on_replica_actor_died(self, replica_id: Any) -> None:
        super().on_replica_actor_died(replica_id)
        self.prefix.forget_replica(replica_id)


def request_router_options(cfg: "ModelConfig") -> dict[str, Any]:
    """Deployment `.options(...)` for the model's router: Tide's prefix router unless `router: serve`."""
    if cfg.router == "serve":
        return {}
    from ray.serve.config import RequestRouterConfig

    return {"request_router_config": RequestRouterConfig(request_router_class=ROUTER_CLASS,
                                                         request_router_kwargs=cfg.routing.model_dump())}
