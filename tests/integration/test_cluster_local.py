"""`tide up` through Ray's own `ray up` over a real SSH connection, then `tide status`, an HTTP call, an update
with `tide deploy --cluster`, and `tide down`; and `tide build` output deployed by Ray's own `serve run`.

The SSH host is this machine (tests/integration/sshhost.py): sshd on 127.0.0.1, a throwaway key, a PID
namespace so the YAML's `ray stop` touches nothing of the test session's. The models deploy on the cluster's
head as `tide up` does it, with `ray exec ... tide deploy`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from serving.config import load_config
from serving.launcher import free_port, serve_env
from serving.loopback import LOOPBACK_ENV

from . import sshhost
from .headnode import ray_head as start_head, tide as _tide, tiny_config, wait_healthy

pytestmark = pytest.mark.integration


@pytest.fixture()
def ray_head():
    """A one-node Ray cluster started like the head of cluster/local.yaml; yields (address, models, port)."""
    with start_head() as head:
        yield head.address, head.models, head.http_port


@pytest.fixture()
def ssh_host():
    why = sshhost.missing()
    if why:
        if os.environ.get("TIDE_REQUIRE_SSHD"):  # .ci/run installs sshd: there, a skip would hide the test
            pytest.fail(why)
        pytest.skip(why)
    with sshhost.ssh_host() as host:
        yield host


def _admit_limit(url: str) -> int:
    return httpx.get(f"{url}/tide/status", timeout=30).json()["models"]["tiny"]["admit_limit"]


def test_tide_up_status_update_and_down_through_ray_up_over_ssh(ssh_host):
    data = tiny_config(free_port())
    models = ssh_host.tmp / "models.yaml"
    models.write_text(yaml.safe_dump(data))
    cluster = sshhost.local_cluster_yaml(ssh_host, serve_env(load_config(models)), ssh_host.tmp / "cluster.yaml")
    url = f"http://127.0.0.1:{data['server']['port']}"

    # A key the host does not accept: one line before anything runs, not a hang inside `ray up`.
    stranger = yaml.safe_load(cluster.read_text())
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_host.tmp / "stranger")], check=True)
    stranger["auth"]["ssh_private_key"] = str(ssh_host.tmp / "stranger")
    (ssh_host.tmp / "stranger.yaml").write_text(yaml.safe_dump(stranger))
    r = _tide("up", str(ssh_host.tmp / "stranger.yaml"), "--config", str(models), timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: tide up ") and "cannot log in to " in r.stderr, r.stderr
    assert "Permission denied" in r.stderr and "ray up" not in r.stderr

    r = _tide("up", str(cluster), "--config", str(models), "--timeout", "600", timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "[1/3] starting the cluster (ray up)" in r.stderr and "[3/3] deploying the models" in r.stderr
    assert "nothing to install" in r.stderr  # the setup is idempotent: this Python already has this Tide
    assert f"Tide is serving at {url}/v1" in r.stderr
    assert (ssh_host.home / "tide" / "serving" / "app.py").is_file()  # file_mounts synced the project over SSH

    from serving.sdk import TideClient

    with TideClient(url) as c:
        assert c.chat("tiny", [{"role": "user", "content": "hi"}], max_tokens=4).usage.completion_tokens >= 1
    status = _tide("status", "--url", url, timeout=60)
    assert status.returncode == 0, status.stderr
    assert [line.split()[0] for line in status.stdout.splitlines()] == ["MODEL", "tiny"]

    # An update from this machine: the models file copied to the head and deployed there; the ingress rolls.
    before = _admit_limit(url)
    data.setdefault("models")[0].setdefault("admission", {})["max_queued"] = 3
    changed = ssh_host.tmp / "models2.yaml"
    changed.write_text(yaml.safe_dump(data))
    r = _tide("deploy", str(changed), "--cluster", str(cluster), "--timeout", "600", timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    after = _admit_limit(url)
    assert after != before and after == before - load_config(models).models[0].admission.max_queued + 3
    with TideClient(url) as c:
        assert c.complete("tiny", "x", max_tokens=2).usage.completion_tokens >= 1

    r = _tide("down", str(cluster), timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)
    import psutil

    left = {psutil.Process(p).name() for p in ssh_host.namespace_pids() if psutil.pid_exists(p)}
    assert left <= {"sshd"}, f"left on the host after tide down: {left}"


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
