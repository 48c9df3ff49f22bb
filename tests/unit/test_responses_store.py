"""The cluster-wide store of Responses-API answers: bounded, newest kept, shared on write (pure parts)."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from serving.replica.responses_store import BoundedStore, SharedDict, fetch_previous, previous_response_id, stored_id


def test_bounded_store_keeps_the_newest_per_kind():
    s = BoundedStore(max_kept=2)
    for k in ("a", "b", "c"):
        s.put("response", k, k.upper())
    s.put("messages", "a", ["m"])
    assert s.get("a") == {"messages": ["m"]} and s.get("c") == {"response": "C"} and len(s) == 2
    s.put("response", "b", "B2")  # a rewrite counts as newest
    s.put("response", "d", "D")
    assert s.get("b") == {"response": "B2"} and s.get("c") == {} and len(s) == 2


def test_shared_dict_publishes_writes_keeps_fetches_quietly_and_stays_bounded():
    sent = []
    d = SharedDict(lambda k, v: sent.append((k, v)), {"old": 0}, max_kept=2)
    d["a"] = 1
    d.keep("b", 2)
    d["a"] = 3
    assert sent == [("a", 1), ("a", 3)] and list(d.items()) == [("b", 2), ("a", 3)]


def test_a_failed_publish_still_stores_locally():
    def boom(k, v):
        raise RuntimeError("actor gone")

    d = SharedDict(boom)
    d["x"] = 1
    assert d["x"] == 1


def test_previous_response_id_is_read_from_the_body():
    assert previous_response_id(b'{"previous_response_id": "resp_1"}') == "resp_1"
    for body in (b"{}", b"not json", b"[1]", b'{"previous_response_id": 5}', b'{"previous_response_id": ""}'):
        assert previous_response_id(body) is None


class _Remote:
    def __init__(self, found):
        self.found, self.calls = found, 0

    def remote(self, key):
        self.calls += 1
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(self.found)
        return fut


def test_fetch_previous_copies_what_another_replica_stored_once():
    class Serving:
        response_store = SharedDict(lambda k, v: None)
        msg_store = SharedDict(lambda k, v: None)

    class Store:
        get = _Remote({"response": pickle.dumps({"id": "r1"}), "messages": pickle.dumps(["hi"])})

    body = b'{"previous_response_id": "r1"}'
    asyncio.run(fetch_previous(Serving, Store, body))
    assert Serving.response_store["r1"] == {"id": "r1"} and Serving.msg_store["r1"] == ["hi"]
    asyncio.run(fetch_previous(Serving, Store, body))  # held locally now: no second fetch
    assert Store.get.calls == 1


@pytest.mark.parametrize("path, rid", [
    ("/v1/responses/resp_1", "resp_1"), ("/v1/responses/resp_1/cancel", "resp_1"), ("/v1/responses", None),
    ("/v1/responses/", None), ("/v1/responses/resp_1/other", None), ("/v1/chat/completions", None),
    ("/v1/responses/a/cancel/x", None),
])
def test_stored_id_reads_the_response_routes(path, rid):
    assert stored_id(path) == rid


def test_flush_waits_for_every_write_to_reach_the_shared_store():
    async def go():
        landed: list[str] = []

        async def put(key):
            await asyncio.sleep(0.05)  # the actor call takes a moment
            landed.append(key)

        d = SharedDict(lambda k, v: asyncio.ensure_future(put(k)))
        d["a"], d["b"] = 1, 2
        assert landed == [] and len(d.pending) == 2
        await d.flush()
        assert landed == ["a", "b"] and d.pending == []

        async def fails():
            raise RuntimeError("actor gone")

        bad = SharedDict(lambda k, v: asyncio.ensure_future(fails()))
        bad["x"] = 1
        await bad.flush()  # best effort: logged, never raised into the answer
        assert bad["x"] == 1 and bad.pending == []
    asyncio.run(go())
