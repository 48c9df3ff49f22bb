"""A one-node Ray cluster started the way cluster/local.yaml starts a head (`ray start --head` on 127.0.0.1
with Tide's Serve settings), separate from the test session's cluster, stopped by its own PID at the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from serving.launcher import free_port, serve_env
from serving.loopback import LOOPBACK_ENV

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Head:
    address: str  # the GCS address to pass as --address
    models: Path  # the Tide config written for it
    http_port: int
    tmp: Path  # holds Ray's temp dir (its logs are under tmp/ray)
    pid: int = 0  # the `ray start --block` process: this head's Ray processes are its descendants
    env: dict[str, str] | None = None  # the environment its Ray was started with


# `ray start` for a second node on this host's loopback. A loopback-only head (serving/loopback.py) makes Ray's
# CLI refuse to join another node, and allowing it makes Ray swap 127.0.0.1 for the routable address; so the
# CLI's one check is lifted in this process only, 127.0.0.1 is kept, and the node's processes stay loopback-only.
_JOIN = ("import sys; import ray._private.ray_constants as c, ray._private.services as s; "
         "c.ENABLE_RAY_CLUSTER = True; s.resolve_ip_for_localhost = lambda host: host; "
         "from ray.scripts.scripts import main; sys.argv = ['ray', 'start'] + sys.argv[1:]; main()")


@contextmanager
def ray_node(head: Head, num_cpus: int) -> Iterator[int]:
    """A second Ray node (its own raylet and resources) on this machine, joined to `head`; yields its PID."""
    env = {**(head.env or os.environ), **LOOPBACK_ENV}
    if (Path.home() / ".ray" / "auth_token").is_file():  # the head made one: Ray 2.60 heads use token auth
        env["RAY_AUTH_MODE"] = "token"
    log = open(head.tmp / "node.log", "w")  # kept with the head's logs (TIDE_KEEP_TEST_TMP=1)
    node = subprocess.Popen(
        [sys.executable, "-c", _JOIN, "--block", f"--address={head.address}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={num_cpus}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait = ("import ray, time; ray.init(address=%r, logging_level='ERROR'); t = time.monotonic()\n"
                "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.monotonic() - t < 60: time.sleep(0.5)\n"
                "assert sum(n['Alive'] for n in ray.nodes()) >= 2, 'the second node did not join'") % head.address
        done = subprocess.run([sys.executable, "-c", wait], timeout=120, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        yield node.pid
    finally:
        _stop(node)
        log.close()


def controller_log_lines(ray_tmp: Path) -> Iterator[str]:
    """Every line of the Serve controller's logs under a head's Ray temp dir (`Head.tmp / "ray"`), oldest first."""
    for f in sorted(ray_tmp.glob("session_*/logs/serve/controller_*.log")):
        yield from f.read_text(errors="replace").splitlines()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM a `ray start --block` (it stops every process it started); SIGKILL its group after a minute."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tide(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the `tide` CLI as a user would."""
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def wait_healthy(url: str, limit_s: float = 180.0) -> None:
    """Until Tide's /health answers 200 (every engine ready), at most `limit_s`."""
    import httpx

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not become healthy within {limit_s:.0f}s")


def tiny_config(http_port: int, **model: Any) -> dict[str, Any]:
    """examples/tiny.yaml's chat model alone (its embedding model left out: one engine per head is enough here)
    on `http_port`, the model's fields updated with `model`."""
    data = yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())
    data["server"]["port"] = http_port
    data["server"]["front"] = os.environ.get("TIDE_TEST_FRONT", data["server"].get("front", "haproxy"))
    if data["server"]["front"] == "haproxy":
        data["server"]["ingress_port"] = free_port()
    data["models"] = data["models"][:1]
    data["models"][0].update({"model": str(ROOT / ".models" / "tiny-llama"), **model})
    data["models"][0]["replicas"]["num_cpus"] = 0.5
    return data


FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # ray.autoscaler._private.fake_multi_node.node_provider's head id


def fake_autoscaler_config(gcs_address: str, head_cpus: int, node_types: dict[str, Any],
                           idle_timeout_minutes: float) -> dict[str, Any]:
    """A cluster config for Ray's fake multi-node provider: Ray's real autoscaler, whose "nodes" are raylets it
    starts on this machine (as Ray's own AutoscalingCluster test harness sets it up)."""
    return {
        "cluster_name": "tide-fake", "max_workers": sum(t.get("max_workers", 0) for t in node_types.values()),
        "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes,
        # No SSH and no setup on fake nodes; nodes are told apart by id, since all of them are 127.0.0.1.
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "use_node_id_as_ip": True},
        "auth": {"ssh_user": "unused"}, "head_node_type": "ray.head.default",
        "available_node_types": {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {},
                                                      "max_workers": 0}, **node_types},
        **{k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                           "setup_commands", "head_setup_commands", "worker_setup_commands",
                           "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {}, "file_mounts_sync_continuously": False,
    }


@contextmanager
def ray_head(data: dict[str, Any] | None = None, num_cpus: int = 2,
             node_types: dict[str, Any] | None = None, idle_timeout_minutes: float = 0.1) -> Iterator[Head]:
    """Start a head for the config `data` (default: tiny.yaml on a free port); stop it, by PID, on exit.
    With `node_types`, Ray's autoscaler runs on it with the fake multi-node provider and adds and removes nodes
    of those types (local raylets, children of the head's monitor, stopped with it)."""
    from serving.config import load_config

    gcs_port = free_port()
    data = data or tiny_config(free_port())
    tmp = Path(tempfile.mkdtemp(prefix="tide-", dir="/tmp"))  # short: Ray's socket paths live under it
    models = tmp / "models.yaml"
    models.write_text(yaml.safe_dump(data))
    # As cluster/local.yaml's head starts Ray: Tide's Serve settings plus no port quarantine.
    env = {**os.environ, **serve_env(load_config(models)), **LOOPBACK_ENV, "RAY_SERVE_PORT_QUARANTINE_S": "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    argv = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={gcs_port}", f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats",
            f"--temp-dir={tmp / 'ray'}"]
    if node_types:
        autoscaler = tmp / "autoscaler.json"
        autoscaler.write_text(json.dumps(fake_autoscaler_config(f"127.0.0.1:{gcs_port}", num_cpus, node_types,
                                                                idle_timeout_minutes)))
        argv.append(f"--autoscaling-config={autoscaler}")
        env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID})
    head = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"127.0.0.1:{gcs_port}"
    try:
        wait_port(gcs_port, 60)
        yield Head(address, models, int(data["server"]["port"]), tmp, head.pid, env)
    finally:
        # Stop the engines cleanly, then this head (its SIGTERM handler stops every process it started).
        subprocess.run([sys.executable, "-c", "from ray import serve; from serving.sdk import connect; "
                        f"connect({address!r}); serve.shutdown()"],
                       capture_output=True, timeout=120)
        _stop(head)
        if node_types:  # the fake nodes' raylets are the monitor's children, in the head's process group
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not os.environ.get("TIDE_KEEP_TEST_TMP"):  # keep Ray's logs to debug a failure
            shutil.rmtree(tmp, ignore_errors=True)
