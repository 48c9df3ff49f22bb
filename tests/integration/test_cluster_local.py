"""`tide deploy` onto a Ray cluster started the way the cluster YAMLs start a head (`ray start --head` on
127.0.0.1 with Tide's Serve settings), then `tide status`, an HTTP call, and an in-place update.

`tide up cluster/local.yaml` itself needs an sshd on 127.0.0.1 (Ray's local provider runs every command over
SSH); tests/unit/test_cluster_launch.py checks its validation, the exact commands it would run, and its
one-line refusal when no sshd answers. This test runs the part after `ray up`: the head's `ray start` and
`tide deploy`. It starts its own Ray (stopped by its own PID at the end), separate from the session cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from serving.launcher import free_port, serve_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _tide(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@pytest.fixture()
def ray_head():
    """A one-node Ray cluster started like the head of cluster/local.yaml; yields (address, models file)."""
    from serving.config import load_config

    gcs_port, http_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="tide-", dir="/tmp"))  # short: Ray's socket paths live under it
    data = yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())
    data["server"]["port"] = http_port
    data["models"][0]["model"] = str(ROOT / ".models" / "tiny-llama")
    data["models"][0]["replicas"]["num_cpus"] = 0.5
    models = tmp / "models.yaml"
    models.write_text(yaml.safe_dump(data))
    # As cluster/local.yaml's head starts Ray: Tide's Serve settings plus no port quarantine.
    env = {**os.environ, **serve_env(load_config(models)), "RAY_SERVE_PORT_QUARANTINE_S": "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs_port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={tmp / 'ray'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{gcs_port}"
    try:
        _wait_port(gcs_port, 60)
        yield address, models, http_port
    finally:
        # Stop the engines cleanly, then this head (its SIGTERM handler stops every process it started).
        subprocess.run([sys.executable, "-c", "from ray import serve; from serving.sdk import connect; "
                        f"connect({address!r}); serve.shutdown()"],
                       capture_output=True, timeout=120)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(tmp, ignore_errors=True)


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
    # cannot start while the old one holds the public port: Serve's NoAvailablePortError).
    data = yaml.safe_load(models.read_text())
    data["server"]["heartbeat_s"] = 2
    models.write_text(yaml.safe_dump(data))
    r = _tide("deploy", str(models), "--address", address, "--timeout", "300")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "restarting the app to update it" in r.stderr
    with TideClient(f"http://127.0.0.1:{http_port}") as c:
        assert c.complete("tiny", "x", max_tokens=2).usage.completion_tokens >= 1

