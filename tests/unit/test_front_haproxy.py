"""The front's HAProxy config and replica table: the pure parts, and the config run by the real HAProxy binary.

The live tests start Ray's bundled HAProxy with the config Tide writes, in front of small HTTP servers that
say who they are (stand-ins for a replica's and the ingress's servers, so each routing rule can be checked
alone); the whole path with real replicas is tests/integration/test_front.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from serving.front.haproxy import (INGRESS, INGRESS_SLOTS, FrontModel, FrontSpec, Slot, backend, governor_commands,
                                   governor_order, maps, plan_slots, rejected_counts, render, write_files)
from serving.front.haproxy_proc import FrontLoop, HAProxy, haproxy_binary
from serving.launcher import free_port

KEY, LIMITED = "sk-fast", "sk-limited"


def spec(**kw) -> FrontSpec:
    models = (FrontModel("tiny", ("tiny", "tiny:sql"), 1, 1, 2), FrontModel("minilm", ("minilm",), 4, 0, 1))
    base = dict(host="127.0.0.1", port=free_port(), ingress="", models=models, auth=False)
    return FrontSpec(**{**base, **kw})


# ---- the replica table ----

def test_new_replicas_take_the_lowest_free_slots_and_keep_them():
    table, cmds = plan_slots({}, {"h:2": ("m0", False), "h:1": ("m0", False), "h:3": ("m1", False)},
                             {"m0": 2, "m1": 1})
    assert {a: s for a, (s, _) in table.items()} == {"h:1": Slot("m0", 1), "h:2": Slot("m0", 2), "h:3": Slot("m1", 1)}
    assert cmds == ["set server m0/r1 addr h port 1", "set server m0/r1 state ready",
                    "set server m0/r2 addr h port 2", "set server m0/r2 state ready",
                    "set server m1/r1 addr h port 3", "set server m1/r1 state ready"]
    again, cmds = plan_slots(table, {"h:1": ("m0", False), "h:2": ("m0", False), "h:3": ("m1", False)},
                             {"m0": 2, "m1": 1})
    assert again == table and cmds == []


def test_a_gone_replica_goes_to_maintenance_and_frees_its_slot():
    table, _ = plan_slots({}, {"h:1": ("m0", False), "h:2": ("m0", False)}, {"m0": 2})
    table, cmds = plan_slots(table, {"h:2": ("m0", False), "h:9": ("m0", False)}, {"m0": 2})
    assert cmds == ["set server m0/r1 state maint", "set server m0/r1 addr h port 9", "set server m0/r1 state ready"]
    assert table["h:9"][0] == Slot("m0", 1) and "h:1" not in table


def test_a_draining_replica_takes_no_new_requests_and_can_come_back():
    table, _ = plan_slots({}, {"h:1": ("m0", False)}, {"m0": 1})
    table, cmds = plan_slots(table, {"h:1": ("m0", True)}, {"m0": 1})
    assert cmds == ["set server m0/r1 state drain"]
    table, cmds = plan_slots(table, {"h:1": ("m0", False)}, {"m0": 1})
    assert cmds == ["set server m0/r1 state ready"]
    _, cmds = plan_slots({}, {"h:1": ("m0", True)}, {"m0": 1})
    assert cmds[-1] == "set server m0/r1 state drain"  # first seen while draining: never made ready


def test_more_replicas_than_slots_wait_for_one_to_free():
    table, cmds = plan_slots({}, {"h:1": ("m0", False), "h:2": ("m0", False)}, {"m0": 1})
    assert list(table) == ["h:1"] and len(cmds) == 2
    table, cmds = plan_slots(table, {"h:2": ("m0", False)}, {"m0": 1})
    assert table["h:2"][0] == Slot("m0", 1) and cmds[0] == "set server m0/r1 state maint"


def test_a_replica_reported_under_another_model_moves():
    table, _ = plan_slots({}, {"h:1": ("m0", False)}, {"m0": 1, "m1": 1})
    table, cmds = plan_slots(table, {"h:1": ("m1", False)}, {"m0": 1, "m1": 1})
    assert cmds == ["set server m0/r1 state maint", "set server m1/r1 addr h port 1", "set server m1/r1 state ready"]


# ---- the config ----

def test_the_governor_keeps_the_ingresses_in_address_order():
    """Keys with limits go to the first ingress up in this order: any two fronts that know the same ingresses
    hold them in the same slots, whatever order they learnt them in."""
    assert governor_order({"h:2", "h:1", "h:3"}) == ("h:1", "h:2", "h:3") == governor_order(("h:3", "h:1", "h:2"))
    assert len(governor_order({f"h:{i}" for i in range(40)})) == INGRESS_SLOTS
    assert governor_commands((), ("h:1", "h:2")) == [
        "set server governor/r1 addr h port 1", "set server governor/r1 state ready",
        "set server governor/r2 addr h port 2", "set server governor/r2 state ready"]
    assert governor_commands(("h:1", "h:2"), ("h:1", "h:2")) == []
    assert governor_commands(("h:1", "h:2"), ("h:2",)) == [  # the first left: the second moves up
        "set server governor/r1 addr h port 2", "set server governor/r1 state ready",
        "set server governor/r2 state maint"]
    assert governor_commands(("h:2",), ("h:0", "h:2")) == [
        "set server governor/r1 addr h port 0", "set server governor/r1 state ready",
        "set server governor/r2 addr h port 2", "set server governor/r2 state ready"]


def test_maps_name_every_model_and_adapter_and_only_fast_keys():
    m = maps(spec(auth=True, fast_keys=("ab" * 32,), limited_keys=("cd" * 32,)))
    assert m["models.map"] == "tiny m0\ntiny:sql m0\nminilm m1\n"
    assert m["keys.map"] == f"{'ab' * 32} 1\n"
    assert m["limited.map"] == f"{'cd' * 32} 1\n"
    assert m["retry.map"] == "m0 1\nm1 1\n"


@pytest.mark.parametrize("auth,limited", [(False, ()), (True, ()), (True, ("cd" * 32,))])
def test_haproxy_accepts_the_config(tmp_path: Path, auth: bool, limited: tuple[str, ...]):
    s = spec(auth=auth, ingress="127.0.0.1:9", socket=str(tmp_path / "api.sock"), limited_keys=limited,
             ingresses=("127.0.0.1:7", "127.0.0.1:8"))
    cfg = write_files(s, tmp_path)
    r = subprocess.run([haproxy_binary(), "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0 and "Warnings" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert f"bind 127.0.0.1:{s.port}" in render(s, tmp_path)


def test_error_pages_are_openai_error_objects(tmp_path: Path):
    write_files(spec(socket=str(tmp_path / "s")), tmp_path)
    for code in (502, 503, 504):
        head, body = (tmp_path / f"e{code}.http").read_bytes().decode().split("\r\n\r\n", 1)
        assert head.startswith(f"HTTP/1.1 {code} ") and json.loads(body)["error"]["message"]
        assert f"content-length: {len(body)}" in head


# ---- the live front ----

class Stub(ThreadingHTTPServer):
    """An HTTP server that answers with its name; `delay` holds each model request that long."""

    daemon_threads = True

    def __init__(self, name: str, delay: float = 0.0):
        self.name, self.delay, self.seen = name, delay, []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path != "/health":
            self.server.seen.append((self.path, body, dict(self.headers)))
            time.sleep(self.server.delay)
        out = json.dumps({"by": self.server.name}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer


def call(port: int, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={
        "content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def until(check, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
            if value:
                return value
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.fixture
def front():
    stubs = {"tiny": Stub("tiny-replica", delay=0.0), "minilm": Stub("minilm-replica"), "ingress": Stub("ingress")}
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    proxy = HAProxy(spec(auth=True, fast_keys=(digest,), ingress=stubs["ingress"].addr))
    proxy.start()
    _, cmds = plan_slots({}, {stubs["tiny"].addr: (backend(0), False), stubs["minilm"].addr: (backend(1), False),
                              stubs["ingress"].addr: (INGRESS, False)}, {"m0": 2, "m1": 1, INGRESS: INGRESS_SLOTS})
    proxy.command(cmds)
    port = proxy.spec.port
    until(lambda: call(port, "/v1/completions", {"model": "tiny"}, {"authorization": f"Bearer {KEY}"})[1]["by"]
          == "tiny-replica")
    yield proxy, port, stubs
    proxy.stop()
    for s in stubs.values():
        s.shutdown()


def test_a_model_request_goes_straight_to_its_replica(front):
    proxy, port, stubs = front
    auth = {"authorization": f"Bearer {KEY}"}
    assert call(port, "/v1/chat/completions", {"messages": [], "model": "tiny"}, auth)[1]["by"] == "tiny-replica"
    assert call(port, "/v1/completions", {"model": "tiny:sql", "prompt": "x"}, auth)[1]["by"] == "tiny-replica"
    assert call(port, "/v1/embeddings", {"model": "minilm", "input": "x"}, {"x-api-key": KEY})[1]["by"] == \
        "minilm-replica"
    path, body, headers = stubs["tiny"].seen[-1]
    assert path == "/v1/completions" and json.loads(body)["model"] == "tiny:sql"  # the body arrives untouched
    assert headers["x-tide-max-timeout"] == "600"


@pytest.mark.parametrize("body,headers,why", [
    ({"model": "nope"}, {"authorization": f"Bearer {KEY}"}, "an unknown model: the ingress's 404"),
    ({"model": "tiny"}, {}, "no key: the ingress's 401"),
    ({"model": "tiny"}, {"authorization": "Bearer sk-wrong"}, "a wrong key"),
    ({"model": "tiny"}, {"authorization": f"Bearer {LIMITED}"}, "a key with limits: settled by the ingress"),
    ({"prompt": "x" * 70000, "model": "tiny"}, {"authorization": f"Bearer {KEY}"}, "`model` past the buffer"),
])
def test_what_the_front_cannot_decide_goes_to_the_ingress(front, body, headers, why):
    _, port, _ = front
    assert call(port, "/v1/completions", body, headers)[1]["by"] == "ingress", why


def test_other_routes_go_to_the_ingress(front):
    _, port, _ = front
    assert call(port, "/v1/models")[1]["by"] == "ingress"
    assert call(port, "/v1/responses", {"model": "tiny"}, {"authorization": f"Bearer {KEY}"})[1]["by"] == "ingress"


def test_a_model_without_a_running_replica_goes_to_the_ingress(front):
    proxy, port, stubs = front
    proxy.command(["set server m1/r1 state maint"])
    assert call(port, "/v1/embeddings", {"model": "minilm"}, {"x-api-key": KEY})[1]["by"] == "ingress"


def test_a_full_queue_is_a_429_with_retry_after(front):
    proxy, port, stubs = front
    stubs["tiny"].delay = 1.5
    proxy.command([f"set map {proxy.folder}/retry.map m0 7"])
    auth = {"authorization": f"Bearer {KEY}"}
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(call(port, "/v1/completions", {"model": "tiny"}, auth)))
               for _ in range(2)]  # one replica x 1 slot + 1 queued
    for t in threads:
        t.start()
    time.sleep(0.5)
    status, body, headers = call(port, "/v1/completions", {"model": "tiny"}, auth)
    for t in threads:
        t.join()
    assert status == 429 and body["error"]["code"] == "model_overloaded" and headers["Retry-After"] == "7"
    assert [r[0] for r in results] == [200, 200]
    counted = rejected_counts(proxy.command(["show stat"]), {"m0": "tiny", "m1": "minilm"})
    assert counted == {"tiny": 1, "minilm": 0}  # what /metrics reports as tide_requests_rejected_total


def test_a_dead_replica_is_retried_on_another(front):
    proxy, port, stubs = front
    dead = free_port()  # nothing listens there: a replica that died before the front noticed
    proxy.command([f"set server m0/r2 addr 127.0.0.1 port {dead}", "set server m0/r2 state ready"])
    auth = {"authorization": f"Bearer {KEY}"}
    answers = [call(port, "/v1/completions", {"model": "tiny"}, auth) for _ in range(8)]
    assert all(a[0] == 200 and a[1]["by"] == "tiny-replica" for a in answers)


def test_prompts_that_begin_alike_go_to_the_same_replica(front):
    proxy, port, stubs = front
    other = Stub("tiny-other")
    proxy.command([f"set server m0/r2 addr 127.0.0.1 port {other.server_address[1]}", "set server m0/r2 state ready"])
    auth = {"authorization": f"Bearer {KEY}"}

    def idle() -> bool:  # the last request's replica connection is closed (bounded load counts open ones)
        rows = [r.split(",") for r in proxy.command(["show stat"]).splitlines() if r.startswith("m0,BACKEND")]
        return rows and rows[0][4] == "0"

    def by(body: dict) -> str:
        until(idle)
        return call(port, "/v1/chat/completions" if "messages" in body else "/v1/completions",
                    {"model": "tiny", **body}, auth)[1]["by"]

    until(lambda: len({by({"prompt": f"p{i}"}) for i in range(24)}) == 2)  # both replicas take requests
    for system in ("You are a pirate.", "You answer in French."):
        chats = {by({"messages": [{"role": "system", "content": system}, {"role": "user", "content": str(i)}]})
                 for i in range(6)}
        assert len(chats) == 1, chats  # one system prompt, one replica: its prefix cache is warm
    shared = "x" * 600  # beyond the head the front hashes, prompts may differ
    assert len({by({"prompt": shared + str(i)}) for i in range(6)}) == 1
    other.shutdown()


def _load(port: int, results: list, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            results.append(call(port, "/v1/models")[0])
        except OSError as e:
            results.append(repr(e))
        time.sleep(0.005)


def test_a_new_front_shares_the_old_ones_socket_and_stopping_the_old_loses_nothing():
    """An update starts the new ingress's front beside the old one: it asks the old one's process for the
    listening socket, so both accept from one queue, and the old one's soft stop refuses no connection."""
    ingress = Stub("ingress")
    s = spec(ingresses=(ingress.addr,))  # the ingress known at start is in the config: no 503 before the loop
    old, new = HAProxy(s), HAProxy(s)
    results: list = []
    stop = threading.Event()
    loaders = [threading.Thread(target=_load, args=(s.port, results, stop)) for _ in range(3)]
    old.start()
    try:
        for t in loaders:
            t.start()
        new.start()
        assert new.listener.taken and not old.listener.taken  # one socket, not two
        time.sleep(0.3)
        old.stop(grace_s=5.0)
        time.sleep(0.3)
        stop.set()
        for t in loaders:
            t.join()
        assert not old.alive() and len(results) > 20 and set(results) == {200}, [r for r in results if r != 200]
    finally:
        stop.set()
        old.stop()
        new.stop()
        ingress.shutdown()


def test_an_haproxy_that_dies_is_restarted_on_the_same_socket_and_what_arrived_meanwhile_is_answered():
    ingress = Stub("ingress")
    hub = {"ingresses": {"a": {"http": ingress.addr, "time": time.time()}}, "replicas": {}}
    loop = FrontLoop(HAProxy(spec()), lambda: hub, lambda: None, lambda model, rate: 1)
    try:
        loop.step()
        port, first = loop.front.spec.port, loop.front.proc.pid
        assert call(port, "/v1/models")[1]["by"] == "ingress"
        loop.front.proc.kill()
        loop.front.proc.wait()
        with ThreadPoolExecutor(4) as pool:  # sent while no HAProxy runs: they wait in the socket's queue
            waiting = [pool.submit(call, port, "/v1/models") for _ in range(4)]
            time.sleep(0.3)
            hub["ingresses"]["a"]["time"] = time.time()
            loop.step()  # the loop notices and starts HAProxy again
            assert loop.front.proc.pid != first
            assert [f.result(timeout=10)[0] for f in waiting] == [200] * 4
    finally:
        loop.stop()
        ingress.shutdown()


def test_a_front_sends_the_governed_path_to_every_ingress_and_outlives_its_own():
    """An update replaces the ingress: the fronts learn the new one from the hub, and when the old one closes its
    listener, requests it would have had are retried on the new one. Not one fails."""
    old, new = Stub("old-ingress"), Stub("new-ingress")
    replica = Stub("tiny-replica")
    now = time.time
    hub = {"ingresses": {"a": {"http": old.addr, "time": now()}}, "replicas": {
        ("tiny", "r"): {"http": replica.addr, "time": now(), "success": {}}}}
    loop = FrontLoop(HAProxy(spec()), lambda: hub, lambda: None, lambda model, rate: 1)
    try:
        loop.step()  # no ingress of its own yet: the hub's is enough to start on
        port = loop.front.spec.port
        assert loop.front.alive() and loop.backup == old.addr
        assert call(port, "/v1/models")[1]["by"] == "old-ingress"
        assert call(port, "/v1/completions", {"model": "tiny"})[1]["by"] == "tiny-replica"
        sent: list[list[str]] = []
        command = loop.front.command
        loop.front.command = lambda cmds: (sent.append(cmds), command(cmds))[1]
        for snap in [*hub["ingresses"].values(), *hub["replicas"].values()]:
            snap["time"] = now()  # (reports stay fresh however slow this machine is)
        loop.step()  # nothing changed: only the counters are read
        assert sent == [["show stat"]], sent
        hub["ingresses"]["b"] = {"http": new.addr, "time": now()}
        loop.step()
        seen = {call(port, "/v1/models")[1]["by"] for _ in range(20)}
        assert seen == {"old-ingress", "new-ingress"}, seen  # both in the table
        old.shutdown()
        old.server_close()  # the old ingress stops listening (its entry in the hub has not aged out yet)
        answers = [call(port, "/v1/models") for _ in range(30)]
        assert all(status == 200 and body["by"] == "new-ingress" for status, body, _ in answers), answers
        hub["ingresses"] = {"b": hub["ingresses"]["b"]}
        hub["replicas"] = {}  # no replica: a model request goes to the ingress, which holds it
        loop.step()
        assert loop.backup == new.addr
        assert call(port, "/v1/completions", {"model": "tiny"})[1]["by"] == "new-ingress"
    finally:
        loop.stop()
        for stub in (new, replica):
            stub.shutdown()


def test_keys_with_limits_go_to_one_ingress_from_every_front():
    """Two fronts, each with its own ingress, that learnt the two in opposite orders (so their slots differ): a
    key with rate limits goes, on every route, to the same ingress from both (whose buckets then count it once);
    other governed requests spread over both. When that one stops listening, both send such keys to the other."""
    a, b = Stub("ingress-a"), Stub("ingress-b")
    hubs = [{"ingresses": {"x": {"http": s.addr, "time": time.time()}}, "replicas": {}} for s in (a, b)]
    fast, limited = (hashlib.sha256(k.encode()).hexdigest() for k in (KEY, LIMITED))
    loops = [FrontLoop(HAProxy(spec(auth=True, fast_keys=(fast,), limited_keys=(limited,))), lambda hub=hub: hub,
                     lambda own=own: own, lambda model, rate: 1) for hub, own in zip(hubs, (a.addr, b.addr))]
    bearer, header = {"authorization": f"Bearer {LIMITED}"}, {"x-api-key": LIMITED}
    routes = [("/v1/completions", {"model": "tiny"}, bearer), ("/v1/models", None, bearer),
              ("/v1/chat/completions", {"model": "tiny", "messages": []}, header),
              ("/v1/responses", {"model": "tiny"}, bearer)] * 3
    try:
        for loop, hub in zip(loops, hubs):
            loop.step()  # its own ingress in slot 1
            hub["ingresses"] = {k: {"http": s.addr, "time": time.time()} for k, s in (("a", a), ("b", b))}
            loop.step()  # the other one in slot 2
        assert {addr: slot.index for addr, (slot, _) in loops[0].ingress_table.items()} == {a.addr: 1, b.addr: 2}
        assert {addr: slot.index for addr, (slot, _) in loops[1].ingress_table.items()} == {b.addr: 1, a.addr: 2}
        ports = [loop.front.spec.port for loop in loops]
        chosen = {call(port, path, body, h)[1]["by"] for port in ports for path, body, h in routes}
        assert len(chosen) == 1, chosen  # one ingress, from both fronts, on every route
        for port in ports:
            spread = {call(port, "/v1/models", None, {"authorization": "Bearer sk-wrong"})[1]["by"] for _ in range(8)}
            assert spread == {a.name, b.name}  # the rest of the governed path: every ingress
        gone, other = (a, b) if chosen == {a.name} else (b, a)
        gone.shutdown()
        gone.server_close()  # it stops listening; its report has not aged out of the hubs yet
        for port in ports:
            if port == ports[(a, b).index(gone)]:
                continue  # (a front goes with its own ingress: the ingress's reaper stops it)
            assert all(call(port, "/v1/models", None, bearer)[1]["by"] == other.name for _ in range(10))
    finally:
        for loop in loops:
            loop.stop()
        for stub in (a, b):
            stub.shutdown()
            stub.server_close()
