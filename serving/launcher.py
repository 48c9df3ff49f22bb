"""Start or join Ray, deploy Tide, and wait, showing progress, until every engine has answered.

Shared by `tide serve` and the test fixtures, so tests start the system exactly as users do.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Callable

from .config import ConfigError, TideConfig
from .loopback import free_port, loopback_only  # free_port: also imported from here by tests
from .ray_env import serve_env  # also imported from here by tests and the cluster CLI

Printer = Callable[[str], None]


class DeployError(RuntimeError):
    """The app failed to deploy or did not become ready in time; the message says which model and why."""


def cluster_env(names: list[str]) -> dict[str, str | None]:
    """The variables as Ray's worker processes on the connected cluster see them (inherited from `ray start`)."""
    import ray

    @ray.remote(num_cpus=0)
    def read(keys: list[str]) -> dict[str, str | None]:
        return {k: os.environ.get(k) for k in keys}

    return ray.get(read.remote(names), timeout=120)


def start_ray(cfg: TideConfig, address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS); otherwise start a local one bound to 127.0.0.1.

    Returns True when this process started Ray (and so owns its shutdown).
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        from .sdk.handle import connect

        connect(address)  # with Ray's auth token, which Ray 2.60 sends by itself only for address="auto"
        # Whether the cluster's replicas serve HTTP themselves comes from how its Ray was started, not from
        # this process: deploy() must not put Serve's proxy on the public port when they do.
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = cluster_env(["RAY_SERVE_ENABLE_DIRECT_INGRESS"]).get(
            "RAY_SERVE_ENABLE_DIRECT_INGRESS") or "0"
        return False
    os.environ.update(serve_env(cfg))  # the local raylet, and so every worker, inherits these
    # ... but not raw API keys: they are hashed in this process (build_app); no Ray process may inherit them.
    keys_var = cfg.server.auth.keys_env
    raw_keys = os.environ.pop(keys_var, None) if keys_var else None
    loopback_only()
    try:
        ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            num_cpus=num_cpus or os.cpu_count(),
            log_to_driver=False,
            configure_logging=False,
        )
    finally:
        if raw_keys is not None:
            os.environ[keys_var] = raw_keys
    # This driver calls handles from sync code too (SDK, tests): its own router needs a loop of its own.
    os.environ["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] = "1"
    return True


def deploy(cfg: TideConfig, timeout_s: float = 900.0, say: Printer = print) -> str:
    """Deploy the app and block until `/health` reports every model ready. Returns the endpoint URL."""
    from ray import serve

    from .app import APP_NAME, build_app

    direct = os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1"
    # With direct ingress the ingress replica owns the public port; Serve's proxy moves to a free loopback port.
    proxy_port = free_port(cfg.server.host) if direct else cfg.server.port
    try:
        app = build_app(cfg)
    except ConfigError as e:  # a replica no node can hold
        raise DeployError(str(e)) from None
    serve.start(http_options={"host": cfg.server.host, "port": proxy_port})
    serve._run(app, _blocking=False, name=APP_NAME, route_prefix="/")
    url = f"http://{cfg.server.host}:{cfg.server.port}"
    started = time.monotonic()
    last = ""
    while True:
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            raise DeployError(f"Tide was not ready after {timeout_s:.0f}s (last state: {last or 'unknown'})")
        state, detail = _app_state(APP_NAME)
        if state == "DEPLOY_FAILED":
            raise DeployError(f"deploy failed: {detail}")
        line = f"[{elapsed:5.0f}s] {detail}"
        if detail != last:
            say(line)
            last = detail
        if state == "RUNNING" and _healthy(url):
            say(f"[{elapsed:5.0f}s] every engine answered its health check")
            return url
        time.sleep(1.0)


def _app_state(name: str) -> tuple[str, str]:
    from ray import serve

    app = serve.status().applications.get(name)
    if app is None:
        return "NOT_STARTED", "waiting for the Serve controller"
    parts = []
    for dep_name, dep in app.deployments.items():
        running = dep.replica_states.get("RUNNING", 0)
        total = sum(dep.replica_states.values())
        parts.append(f"{dep_name}: {dep.status.value} {running}/{total} replicas running")
        if dep.status.value == "DEPLOY_FAILED" or (dep.message and "failed" in dep.message.lower()):
            parts[-1] += f" ({dep.message.strip().splitlines()[-1][:300]})"
        elif dep.message and "to be scheduled" in dep.message:  # Serve's note on a replica that finds no room
            parts[-1] += (" (a new replica is waiting for resources: an update starts it before the old one "
                          "stops, see replicas.max_surge_percent)")
    return app.status.value, "; ".join(parts) or app.status.value


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
            return r.status == 200 and json.loads(r.read()).get("status") == "ok"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def shutdown(owns_ray: bool, serve_timeout_s: float = 5.0, ray_timeout_s: float = 3.0) -> None:
    """Tear down the Serve app (engines stop with their replicas) and Ray when we started it.

    On a cluster we only joined, Serve's shutdown is waited for in full. When this process owns Ray, every step
    is bounded (Serve's own wait is 30 s per controller call, and it hangs outright once a signal to the whole
    process group has taken the GCS down): Serve gets `serve_timeout_s`, Ray `ray_timeout_s`, then whatever of the
    local Ray still runs is killed. Engines whose replica died first are killed by their reaper.

    A caller that goes on living (a test session, a benchmark) must give Ray's own shutdown time to finish:
    a driver whose GCS is killed under it exits the whole process with code 1 a minute later (Ray's core
    worker does, from C++), whatever Python is doing then."""
    import threading

    import ray
    from ray import serve

    from .observability.hub import kill_hub
    from .replica.responses_store import kill_store

    def graceful() -> None:
        try:
            serve.shutdown()
            kill_hub()
            kill_store()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - Ray is stopped next (Ray raises SystemExit then)
            print(f"Serve did not shut down cleanly: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    if not owns_ray:
        graceful()
        return
    from .proctree import descendants

    ours = descendants(os.getpid())  # before Ray stops: its agents outlive the raylet otherwise
    if _local_ray_alive():
        for step, limit in ((graceful, serve_timeout_s), (ray.shutdown, ray_timeout_s)):
            t = threading.Thread(target=step, name=f"tide-stop-{step.__name__}", daemon=True)
            t.start()
            t.join(limit)
            if t.is_alive():
                print(f"{step.__name__} still running after {limit:g} s; killing the local Ray",
                      file=sys.stderr, flush=True)
    _kill_own_processes(ours)


def _local_ray_alive() -> bool:
    """Whether the GCS and raylet this process started still run (a signal to our group may have ended them)."""
    import psutil

    names = set()
    for c in psutil.Process().children():
        try:
            if c.status() != psutil.STATUS_ZOMBIE:
                names.add(c.name())
        except psutil.Error:
            pass
    return {"gcs_server", "raylet"} <= names


def _kill_own_processes(known: list | None = None, grace_s: float = 1.5) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, every process below this one (the local Ray we started), and those
    of `known` (seen below it earlier, perhaps re-parented since) that still run."""
    import psutil

    from .proctree import descendants

    procs = descendants(os.getpid())
    procs += [p for p in known or [] if p not in procs and p.is_running()]
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def progress_printer(stream=sys.stderr) -> Printer:
    def say(msg: str) -> None:
        print(msg, file=stream, flush=True)

    return say
