"""`tide deploy` onto a Ray cluster started the way the cluster YAMLs start a head (`ray start --head` on
127.0.0.1 with Tide's Serve settings), then `tide status`, an HTTP call, and an in-place update.

`tide up cluster/local.yaml` itself needs an sshd on 127.0.0.1 (Ray's local provider runs every command over
SSH); tests/unit/test_cluster_launch.py checks its validation, the exact commands it would run, and its
one-line refusal when no sshd answers. This test runs the part after `ray up`: the head's `ray start` and
`tide deploy`. It starts its own Ray (stopped by its own PID at the end), separate from the session cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from serving.loopback import LOOPBACK_ENV

from .headnode import ray_head as start_head, tide as _tide, wait_healthy

pytestmark = pytest.mark.integration


@pytest.fixture()
def ray_head():
    """A one-node Ray cluster started like the head of cluster/local.yaml; yields (address, models, port)."""
    with start_head() as head:
        yield head.address, head.models, head.http_port


def test_tide_deploy_status_and_update_on_a_ray_start_cluster(ray_head):
    address, models, http_port = ray_head
    r = _tide("deploy", str(models), "--address", address, "--timeout", "300")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == f"Tide is serving at http://127.0.0.1:{http_port}/v1"
    assert "warning" not in r.stderr  # the head has Tide's Serve settings: direct ingress on the port

    from serving.sdk import TideClient

    with TideClient(f"http://127.0.0.1:{http_port}") as c:
        assert c.chat("tiny", [{"role": "user", "content": "hi"}], max_tokens=4).usage.completion_tokens >= 1

    status = _tide("status", "--url", f"http://127.0.0.1:{http_port}", timeout=60)
    assert status.returncode == 0, status.stderr
    assert [line.split()[0] for line in status.stdout.splitlines()] == ["MODEL", "tiny"]

    # Update: the same Ray cluster keeps running. Under direct ingress the app restarts (a new ingress replica
    # cannot start while the old one holds the public port: Serve's NoAvailablePortError); behind HAProxy it rolls.
    data = yaml.safe_load(models.read_text())
    data["server"]["heartbeat_s"] = 2
    models.write_text(yaml.safe_dump(data))
    r = _tide("deploy", str(models), "--address", address, "--timeout", "300")
    assert r.returncode == 0, r.stderr[-3000:]
    rolls = data["server"].get("front") == "haproxy"
    assert ("restarting the app to update it" in r.stderr) is not rolls
    with TideClient(f"http://127.0.0.1:{http_port}") as c:
        assert c.complete("tiny", "x", max_tokens=2).usage.completion_tokens >= 1



def test_serve_run_of_a_tide_build_file_serves_the_same_app(ray_head):
    """`tide build` output deployed by Ray's own `serve run` (what KubeRay's RayService does with serveConfigV2)."""
    address, models, http_port = ray_head
    built = models.with_name("serve.yaml")
    r = _tide("build", str(models), "-o", str(built))
    assert r.returncode == 0, r.stderr
    env = {**os.environ, **LOOPBACK_ENV}  # Ray's own CLI, joining a loopback-only head, needs what its head had
    if (Path.home() / ".ray" / "auth_token").is_file():
        env["RAY_AUTH_MODE"] = "token"
    run = subprocess.run([str(Path(sys.executable).with_name("serve")), "run", str(built), "--address", address,
                          "--non-blocking"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    url = f"http://127.0.0.1:{http_port}"
    wait_healthy(url, 300)
    out = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 3}, timeout=60)
    assert out.status_code == 200, out.text
    assert out.json()["usage"]["completion_tokens"] == 3
