"""The Serve glue of the prefix router: prompts from pending requests, queue lengths, Serve's ranked format,
the deployment options, and the router object itself on fake replicas (no Ray cluster)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest

from autoscale.routing import RouterConfig, prefix_blocks
from serving.config import ModelConfig
from serving.protocol import ChatCompletionRequest, CompletionRequest
from serving.router import (
    ROUTER_CLASS,
    TidePrefixRouter,
    chat_prompt,
    queue_lengths,
    ranked,
    request_prompt,
    routing_prompt,
    request_router_options,
    with_room,
)

SYSTEM = "You are a careful assistant for a shipping company. " * 30  # ~1,500 chars


def chat(*turns: tuple[str, str]) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="tiny", messages=[{"role": r, "content": c} for r, c in turns])


# ---- prompts -------------------------------------------------------------------------------------------------


def test_chat_prompt_is_roles_and_contents_in_order():
    req = chat(("system", "S"), ("user", "hi"), ("assistant", "yo"))
    assert request_prompt("chat", [req], {}) == "system\nS\nuser\nhi\nassistant\nyo\n"
    assert request_prompt("chat_stream", [req], {}) == request_prompt("chat", [req], {})


def test_content_parts_and_none_become_text():
    req = ChatCompletionRequest(model="tiny", messages=[
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None}])
    assert request_prompt("chat", [req], {}) == "user\nab\nassistant\n\n"


def test_conversations_with_one_system_prompt_share_its_blocks():
    cfg = RouterConfig()
    a = prefix_blocks(request_prompt("chat", [chat(("system", SYSTEM), ("user", "where is my parcel?"))], {}), cfg)
    b = prefix_blocks(request_prompt("chat", [chat(("system", SYSTEM), ("user", "refund please"))], {}), cfg)
    shared = len(f"system\n{SYSTEM}\nuser\n") // cfg.block_chars
    assert shared >= 20 and a[:shared] == b[:shared]


@pytest.mark.parametrize("prompt, expected", [
    ("def f():", "def f():"),
    ([5, 6, 7], [5, 6, 7]),
    (["first", "second"], "first"),
    ([[1, 2], [3]], [1, 2]),
])
def test_completion_prompt_forms(prompt, expected):
    req = CompletionRequest(model="tiny", prompt=prompt)
    assert request_prompt("completion", [req], {}) == expected
    assert request_prompt("completion_stream", [req], {}) == expected


@pytest.mark.parametrize("method", ["info", "load", "check_health", "__call__", "record_autoscaling_stats"])
def test_methods_without_a_prompt_fall_back(method):
    assert request_prompt(method, [chat(("user", "hi"))], {}) is None


def test_dicts_keywords_and_empty_calls():
    assert request_prompt("chat", [], {"req": {"messages": [{"role": "user", "content": "x"}]}}) == "user\nx\n"
    assert request_prompt("completion", [{"prompt": "abc"}], {}) == "abc"
    assert request_prompt("chat", [], {}) is None
    assert request_prompt("completion", [{"prompt": []}], {}) is None
    assert chat_prompt([]) == ""


# ---- queue lengths and Serve's format ------------------------------------------------------------------------


def test_queue_lengths_split_known_and_missing():
    cache = {"a": 3, "c": 0}
    known, missing = queue_lengths(["a", "b", "c"], lambda r: r, cache.get)
    assert known == {"a": 3, "c": 0} and missing == ["b"]


def test_full_replicas_are_left_out_unless_all_are_full():
    assert with_room({"a": 4, "b": 1}, {"a": 4, "b": 4}) == {"b": 1}
    assert with_room({"a": 4, "b": 5}, {"a": 4, "b": 4}) == {"a": 4, "b": 5}
    assert with_room({"a": 2}, {}) == {"a": 2}  # capacity unknown: treated as room


def test_ranked_puts_the_choice_first_then_the_rest():
    reps = {"a": "A", "b": "B", "c": "C"}
    assert ranked("b", reps) == [["B"], ["A", "C"]]
    assert ranked("a", {"a": "A"}) == [["A"]]


# ---- deployment options --------------------------------------------------------------------------------------


def model_cfg(**kw) -> ModelConfig:
    return ModelConfig(name="tiny", model="/m", **kw)


def test_options_default_to_the_prefix_router_with_settings():
    opts = request_router_options(model_cfg(routing={"imbalance_threshold": 3}))
    rc = opts["request_router_config"]
    assert isinstance(rc, RequestRouterConfig) and rc.request_router_class == ROUTER_CLASS
    assert rc.request_router_kwargs == RouterConfig(imbalance_threshold=3).model_dump()
    assert rc.get_request_router_class().__name__ == "TidePrefixRouter"


def test_options_empty_for_serves_router_and_bad_settings_rejected():
    assert request_router_options(model_cfg(router="serve")) == {}
    with pytest.raises(ValidationError):
        request_router_options(model_cfg(routing={"block_chars": 0}))
    with pytest.raises(ValidationError):
        request_router_options(model_cfg(routing={"no_such": 1}))


def test_model_deployment_carries_the_router():
    from serving.deployments import model_deployment

    cfg = model_deployment(model_cfg())._deployment_config.request_router_config
    assert cfg.request_router_class == ROUTER_CLASS
    plain = model_deployment(model_cfg(router="serve"))._deployment_config.request_router_config
    assert plain.is_default_request_router()


# ---- the router object on fake replicas ----------------------------------------------------------------------

DEP = DeploymentID(name="model-tiny", app_name="tide")


@dataclass
class FakeReplica:
    """What the router reads from a RunningReplica; get_queue_len answers like a replica would."""

    unique_id: str
    queue: int | None = 0
    max_ongoing_requests: int = 8
    node_id: str = "n"
    availability_zone: str | None = None
    multiplexed_model_ids: set = field(default_factory=set)
    probed: int = 0

    @property
    def replica_id(self) -> ReplicaID:
        return ReplicaID(unique_id=self.unique_id, deployment_id=DEP)

    async def get_queue_len(self, *, deadline_s: float) -> int:
        self.probed += 1
        if self.queue is None:
            await asyncio.sleep(10)  # never answers in time
        return self.queue


def pending(method: str, *args) -> PendingRequest:
    meta = RequestMetadata(request_id="r", internal_request_id="i", call_method=method)
    return PendingRequest(args=list(args), kwargs={}, metadata=meta)


def run(coro_fn):
    return asyncio.run(coro_fn())


def make_router(replicas: list[FakeReplica], **settings) -> TidePrefixRouter:
    r = TidePrefixRouter(deployment_id=DEP, handle_source=DeploymentHandleSource.UNKNOWN,
                         use_replica_queue_len_cache=True)
    r.initialize_state(**RouterConfig(**settings).model_dump())
    r.update_replicas(replicas)
    return r


def test_same_system_prompt_sticks_to_one_replica_and_uses_cached_queues():
    async def go():
        reps = [FakeReplica("a"), FakeReplica("b"), FakeReplica("c")]
        router = make_router(reps)
        await asyncio.sleep(0)  # update_replicas probes new replicas in the background
        first = await router.choose_replicas(reps, pending("chat", chat(("system", SYSTEM), ("user", "1"))))
        assert len(first[0]) == 1 and sorted(len(x) for x in first) == [1, 2]
        owner = first[0][0]
        probes = [r.probed for r in reps]
        for i in range(5):
            again = await router.choose_replicas(reps, pending("chat_stream", chat(("system", SYSTEM), ("user", str(i)))))
            assert again[0] == [owner]
        assert [r.probed for r in reps] == probes  # queue lengths came from Serve's cache
    run(go)


def test_busy_owner_loses_to_load():
    async def go():
        reps = [FakeReplica("a"), FakeReplica("b")]
        router = make_router(reps, imbalance_threshold=2)
        await asyncio.sleep(0)
        owner = (await router.choose_replicas(reps, pending("completion", CompletionRequest(model="t", prompt=SYSTEM))))[0][0]
        router.replica_queue_len_cache.update(owner.replica_id, 5)
        other = (await router.choose_replicas(reps, pending("completion", CompletionRequest(model="t", prompt=SYSTEM))))[0][0]
        assert other is not owner
    run(go)


def test_unknown_queue_is_probed_and_silent_replica_left_out():
    async def go():
        reps = [FakeReplica("a", queue=1), FakeReplica("b", queue=None)]
        router = make_router(reps)
        router.queue_len_response_deadline_s = router.max_queue_len_response_deadline_s = 0.01
        for _ in range(200):  # until the background probes of the new replicas have run (not a fixed sleep)
            if all(r.probed for r in reps):
                break
            await asyncio.sleep(0.01)
        assert all(r.probed for r in reps)
        router.replica_queue_len_cache.invalidate_key(reps[0].replica_id)
        out = await router.choose_replicas(reps, pending("completion", CompletionRequest(model="t", prompt="x" * 200)))
        assert out[0] == [reps[0]] and reps[0].probed >= 2
    run(go)


def test_no_prompt_uses_power_of_two():
    async def go():
        reps = [FakeReplica("a"), FakeReplica("b")]
        router = make_router(reps)
        out = await router.choose_replicas(reps, pending("info"))
        assert len(out) == 1 and sorted(r.unique_id for r in out[0]) == ["a", "b"]
        assert len(router.prefix) == 0
    run(go)


def test_gone_replicas_are_forgotten():
    async def go():
        reps = [FakeReplica("a"), FakeReplica("b")]
        router = make_router(reps)
        await asyncio.sleep(0)
        owner = (await router.choose_replicas(reps, pending("completion", CompletionRequest(model="t", prompt=SYSTEM))))[0][0]
        assert len(router.prefix) > 0
        survivor = [r for r in reps if r is not owner]
        router.update_replicas(survivor)
        assert len(router.prefix) == 0
        out = await router.choose_replicas(survivor, pending("completion", CompletionRequest(model="t", prompt=SYSTEM)))
        assert out == [[survivor[0]]]
        router.on_replica_actor_died(survivor[0].replica_id)
        assert len(router.prefix) == 0
    run(go)


def test_adapter_requests_do_not_share_prefixes_with_the_base_model():
    from serving.router import request_prompt

    msgs = [{"role": "system", "content": "You are helpful." * 20}]
    base = request_prompt("chat", [{"model": "tiny", "messages": msgs}], {})
    adapted = request_prompt("chat", [{"model": "tiny:sql", "messages": msgs}], {})
    assert isinstance(base, str) and adapted == "[tiny:sql]" + base


def test_prefix_follows_the_replica_serve_actually_used():
    async def go():
        reps = [FakeReplica("a"), FakeReplica("b")]
        router = make_router(reps)
        await asyncio.sleep(0)
        req = pending("completion", CompletionRequest(model="t", prompt=SYSTEM))
        picked = (await router.choose_replicas(reps, req))[0][0]
        other = next(r for r in reps if r is not picked)
        router.on_request_routed(req, other.replica_id, None)  # the pick was full; Serve used the other
        again = await router.choose_replicas(reps, pending("completion", CompletionRequest(model="t", prompt=SYSTEM)))
        assert again[0] == [other]
        router.on_request_routed(pending("info"), picked.replica_id, None)  # no prompt: nothing recorded
        assert (await router.choose_replicas(reps, req))[0] == [other]
    run(go)


# ---- calls to vLLM's layer in the replica (`openai(method, path, body, headers, prompt=...)`) ---------------


def test_openai_calls_route_on_the_prompt_keyword():
    body = b'{"model": "tiny", "prompt": "ignored: the router does not parse bodies"}'
    assert request_prompt("openai", ["POST", "/v1/completions", body, {}], {"prompt": "hello"}) == "hello"
    assert request_prompt("openai", ["POST", "/v1/completions", body, {}], {"prompt": [1, 2]}) == [1, 2]
    assert request_prompt("openai", ["POST", "/tokenize", body, {}], {}) is None
    assert request_prompt("openai", ["POST", "/tokenize", body, {}], {"prompt": None}) is None


def test_routing_prompt_reads_chat_and_completion_bodies_like_the_request_objects():
    turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert routing_prompt({"model": "tiny", "messages": turns}) == request_prompt("chat", [chat(*[
        (t["role"], t["content"]) for t in turns])], {})
    assert routing_prompt({"model": "tiny", "prompt": ["ab", "cd"]}) == "ab"
    assert routing_prompt({"model": "tiny:a", "prompt": "x"}) == "[tiny:a]x"  # adapters share no prefix


@pytest.mark.parametrize("data", [
    {"model": "tiny", "messages": [1, 2]}, {"model": "tiny", "messages": "hello"},
    {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, {"model": "tiny"}, {"model": "tiny", "prompt": 3},
])
def test_routing_prompt_of_a_body_it_cannot_read_is_none(data):
    assert routing_prompt(data) is None
