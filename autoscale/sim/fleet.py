"""The fleet simulator: a time-stepped, vectorised model of many engine replicas under one autoscaling policy.

Why time-stepped and fluid: a day of a 10,000-replica fleet is ~10^9 tokens; one event per token (or even per
request) cannot run in a minute in Python. Instead each tick (default 1 s, like Serve's metric push) moves
*cohorts*: numpy arrays over replicas hold requests in flight; the engine model is continuous batching in
the fluid limit:
  - a replica runs B = min(in flight, max_num_seqs, KV capacity / tokens per request) requests at once;
    the rest wait in its engine queue;
  - one decode step of B requests takes the profile's TPOT(B); prefill of entering requests takes
    prompt / prefill rate (capped by the step's token budget), so in dt a replica completes
    c = B dt / (O TPOT(B) + B P / prefill)  requests (O output, P prompt tokens);
  - requests wait before any engine (Serve's handle queue) when every replica has max_ongoing_requests;
    the router spreads admissions in proportion to free slots (the fluid limit of least-loaded routing);
  - TTFT = handle-queue wait (exact per cohort, FIFO) + engine-queue wait (Little: ahead / completion rate)
    + the profile's TTFT at B; TPOT = step time stretched by prefill interference.
Replicas start after `cold_start_s` (plus node provisioning when no node has room), fail at random (their
requests are lost, Serve restarts them) and drain on scale-down. The policy is called every tick with the
same inputs Serve gives it (see `policies.FleetView`). Optional: prefix-cache hits through the production
router (`prefix.py`). After the trace the fleet keeps serving (no arrivals) until empty or `drain_s`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ..policy import FINISH_RATE_WINDOW_S, Load
from .policies import FleetView, Policy
from .prefix import PrefixModel, PrefixWorkload
from .profile import Profile
from .stats import Histogram, Series, SimResult
from .traces import Trace

OFF, STARTING, UP, DRAINING = 0, 1, 2, 3


class FleetConfig(BaseModel):
    """The simulated cluster around the replicas."""

    model_config = ConfigDict(extra="forbid")

    replicas_min: NonNegativeInt = Field(1, description="Fewest replicas (policy bound).")
    replicas_max: PositiveInt = Field(8, description="Most replicas (policy bound and array size).")
    initial_replicas: NonNegativeInt | None = Field(None, description="Replicas up at t=0 (default: min).")
    max_ongoing_requests: PositiveInt = Field(256, description="Requests Serve sends one replica at once.")
    queue_timeout_s: PositiveFloat = Field(60.0, description="A request waiting this long before any engine "
                                                             "gives up (counted as shed).")
    max_queued_requests: NonNegativeInt = Field(0, description="Cap on requests waiting before any engine "
                                                               "(beyond it they are shed); 0 = no cap.")
    cold_start_s: PositiveFloat | None = Field(None, description="Replica start on a ready node (default: "
                                                                 "the profile's).")
    replicas_per_node: PositiveInt = Field(8, description="Replicas that fit on one node (e.g. 8 GPUs); "
                                                          "with gpus_per_node set, gpus_per_node // GPUs per replica.")
    gpus_per_replica: PositiveInt | None = Field(None, description="GPUs one replica holds (tensor x pipeline "
                                                                   "parallel); default: the profile's.")
    gpus_per_node: PositiveInt | None = Field(None, description="GPUs of one node; sets replicas_per_node from "
                                                                "the GPUs per replica.")
    price_per_gpu_h: NonNegativeFloat | None = Field(None, description="$ per GPU-hour; when set, a replica-hour "
                                                                       "costs this x its GPUs.")
    node_provision_s: NonNegativeFloat = Field(0.0, description="Seconds to add a node when none has room.")
    node_idle_timeout_s: NonNegativeFloat = Field(600.0, description="An idle node is released after this.")
    mtbf_h: NonNegativeFloat = Field(0.0, description="Mean hours between failures of one replica; 0 = none.")
    graceful_shutdown_s: PositiveFloat = Field(300.0, description="Draining replica's time to finish requests.")
    slo_ttft_s: PositiveFloat = Field(2.0, description="TTFT target for SLO attainment.")
    slo_tpot_s: PositiveFloat = Field(0.1, description="Time-per-output-token target for SLO attainment.")
    price_per_replica_h: NonNegativeFloat = Field(2.5, description="$ per replica-hour (cost column).")
    sample_s: PositiveFloat = Field(10.0, description="Time-series sampling period (plot).")
    drain_s: NonNegativeFloat = Field(600.0, description="After the trace: keep serving (no new arrivals) until "
                                                         "the fleet is empty, at most this long; replica-hours count.")
    seed: int = Field(0, description="Seed of failures.")


def placement(cfg: FleetConfig, profile: Profile) -> tuple[int, int, float]:
    """(GPUs per replica, replicas per node, $ per replica-hour): a replica is its whole parallel group."""
    gpus = cfg.gpus_per_replica or profile.gpus_per_replica
    if cfg.gpus_per_node is not None:
        if gpus > cfg.gpus_per_node:
            raise ValueError(f"a replica of {gpus} GPUs does not fit a node of {cfg.gpus_per_node} (gpus_per_node)")
        per_node = cfg.gpus_per_node // gpus
    else:
        per_node = cfg.replicas_per_node
    price = cfg.price_per_gpu_h * gpus if cfg.price_per_gpu_h is not None else cfg.price_per_replica_h
    return gpus, per_node, price


class Fleet:
    """Replica arrays plus the handle queue; `tick()` advances one step."""

    def __init__(self, cfg: FleetConfig, profile: Profile, dt: float, prefix: PrefixWorkload | None = None):
        self.cfg, self.prof, self.dt = cfg, profile, dt
        self.prefix = PrefixModel(prefix) if prefix else None
        self.cold_start_s = cfg.cold_start_s or profile.cold_start_s
        self.gpus, self.per_node, self.price_h = placement(cfg, profile)
        r = cfg.replicas_max
        self.state = np.zeros(r, np.int8)
        self.ready_at = np.zeros(r)
        self.drain_since = np.zeros(r)
        self.inflight = np.zeros(r)
        self.rate = np.zeros(r)  # requests/s each replica finished lately (an EWMA over the replicas' window)
        self.hi = 0  # replicas [hi:] were never used: skipped by every array op
        self.queue: deque[list[float]] = deque()  # [arrival time, count], FIFO
        self.queued = 0.0
        self.nodes: list[float] = []  # ready time of each node
        self.node_idle_since: float | None = None
        self.rng = np.random.default_rng(cfg.seed)
        self.shed = self.failed = self.completed = 0.0
        self._cap, self._kv_per_req = float(profile.max_num_seqs), 1.0
        self._up = self._mid = np.zeros(0)
        n0 = cfg.initial_replicas if cfg.initial_replicas is not None else max(cfg.replicas_min, 1)
        self._start(min(n0, r), now=-self.cold_start_s - cfg.node_provision_s)  # up at t=0

    # --- replica lifecycle -------------------------------------------------------------------------------
    def allocated(self) -> int:
        s = self.state[: self.hi]
        return int(np.count_nonzero(s != OFF))

    def _start(self, k: int, now: float) -> None:
        if k <= 0:
            return
        idx = np.flatnonzero(self.state == OFF)[:k]
        self.rate[idx] = 0.0
        base = self.allocated()
        per = self.per_node
        for j, i in enumerate(idx):  # replica number base+j lives on node (base+j) // per
            node = (base + j) // per
            while node >= len(self.nodes):
                self.nodes.append(now + self.cfg.node_provision_s)
            self.ready_at[i] = max(now, self.nodes[node]) + self.cold_start_s
        self.state[idx] = STARTING
        self.hi = max(self.hi, int(idx[-1]) + 1 if len(idx) else 0)

    def _stop(self, k: int, now: float) -> None:
        """Cancel starting replicas first (latest first), then drain the least-loaded serving ones."""
        s = self.state[: self.hi]
        starting = np.flatnonzero(s == STARTING)
        cancel = starting[np.argsort(-self.ready_at[starting])][:k]
        self.state[cancel] = OFF
        k -= len(cancel)
        if k > 0:
            up = np.flatnonzero(s == UP)
            drain = up[np.argsort(self.inflight[up], kind="stable")][:k]
            self.state[drain] = DRAINING
            self.drain_since[drain] = now

    def set_target(self, target: int, now: float) -> None:
        s = self.state[: self.hi]
        active = int(np.count_nonzero(s == STARTING) + np.count_nonzero(s == UP))
        if target > active:
            self._start(target - active, now)
        elif target < active:
            self._stop(active - target, now)

    def _lifecycle(self, now: float) -> None:
        s, hi = self.state[: self.hi], self.hi
        s[(s == STARTING) & (self.ready_at[:hi] <= now)] = UP
        if self.cfg.mtbf_h > 0:
            up = np.flatnonzero(s == UP)
            k = min(int(self.rng.poisson(len(up) * self.dt / (self.cfg.mtbf_h * 3600))), len(up))
            if k:
                dead = self.rng.choice(up, k, replace=False)
                self.failed += float(self.inflight[dead].sum())
                self.inflight[dead] = 0.0
                self.rate[dead] = 0.0
                s[dead] = STARTING  # Serve replaces a dead replica on its node
                self.ready_at[dead] = now + self.cold_start_s
        draining = s == DRAINING
        finished = self.inflight[:hi] < 1e-3
        done = draining & (finished | (now - self.drain_since[:hi] >= self.cfg.graceful_shutdown_s))
        self.failed += float(self.inflight[:hi][done & ~finished].sum())  # cut off by the graceful timeout
        self.inflight[:hi][done] = 0.0
        s[done] = OFF
        # nodes: release idle ones after the timeout
        need = math.ceil(self.allocated() / self.per_node)
        if len(self.nodes) > need:
            self.node_idle_since = now if self.node_idle_since is None else self.node_idle_since
            if now - self.node_idle_since >= self.cfg.node_idle_timeout_s:
                del self.nodes[need:]
                self.node_idle_since = None
        else:
            self.node_idle_since = None

    # --- requests ------------------------------------------------------------------------------------------
    def _enqueue(self, now: float, n: float) -> None:
        if n > 0:
            self.queue.append([now, n])
            self.queued += n
        cap = self.cfg.max_queued_requests
        while cap and self.queued > cap and self.queue:  # over the cap: the newest are shed
            drop = min(self.queue[-1][1], self.queued - cap)
            self.queue[-1][1] -= drop
            self.queued -= drop
            self.shed += drop
            if self.queue[-1][1] <= 1e-9:
                self.queue.pop()
        while self.queue and self.queue[0][0] < now - self.cfg.queue_timeout_s:  # gave up waiting
            t, c = self.queue.popleft()
            self.queued -= c
            self.shed += c

    def _dequeue(self, n: float, now: float) -> float:
        """Take n requests from the head of the handle queue; returns their mean wait."""
        waited, left = 0.0, n
        while left > 1e-9 and self.queue:
            head = self.queue[0]
            take = min(head[1], left)
            waited += take * (now - head[0])
            head[1] -= take
            left -= take
            if head[1] <= 1e-9:
                self.queue.popleft()
        self.queued = max(self.queued - n, 0.0)
        return waited / n if n > 0 else 0.0

    def tick(self, now: float, arrivals: float, prompt: float, output: float, tpot: Histogram,
             window: Histogram) -> None:
        """One step: lifecycle, arrivals, admission, service, latency accounting (TTFT into `window`)."""
        self._lifecycle(now)
        self._enqueue(now, arrivals)
        hi, prof, dt = self.hi, self.prof, self.dt
        s, inflight = self.state[:hi], self.inflight[:hi]
        up = s == UP
        free = self.cfg.max_ongoing_requests - inflight
        free *= up
        np.maximum(free, 0.0, out=free)
        total_free = float(free.sum())
        admit = min(self.queued, total_free)
        kv_per_req = prompt + output / 2
        cap = min(prof.max_num_seqs, prof.kv_cache_tokens / kv_per_req)
        self._up, self._cap, self._kv_per_req = up, cap, kv_per_req
        alpha = min(dt / FINISH_RATE_WINDOW_S, 1.0)
        if admit <= 0 and not inflight.any():
            self._mid = inflight
            self.rate[:hi] *= 1.0 - alpha
            return
        if self.prefix is not None:  # cached prefix tokens skip prefill (they still occupy KV)
            hit = self.prefix.step(arrivals, up, inflight)
            prompt = prompt - hit * min(self.prefix.wl.prefix_tokens, prompt)
        if admit > 0:
            free *= admit / total_free  # the admissions, per replica
            qwait = self._dequeue(admit, now)
            inflight += free
        batch = np.minimum(inflight, cap)
        step = np.interp(batch, prof.batch, prof.tpot_s)  # clamps below the first batch size
        pf: float | np.ndarray = prof.prefill_tokens_per_s
        if (prof.max_num_batched_tokens - cap) / max(prof.tpot_s) < pf:  # the step's token budget binds
            pf = np.minimum(pf, np.maximum(prof.max_num_batched_tokens - batch, 1.0) / step)
        prefill_s = batch * prompt / pf  # per dt of decode: prefill time of as many entering requests
        done = batch * dt / (output * step + prefill_s)
        np.minimum(done, inflight, out=done)
        if admit > 0:  # TTFT of this tick's admissions: handle queue + engine queue (Little) + first token
            ahead = inflight - batch - free / 2
            np.maximum(ahead, 0.0, out=ahead)
            first = ahead * dt / np.maximum(done, 1e-12)
            first += np.interp(batch, prof.batch, prof.ttft_s)
            first += qwait + max(prompt - prof.profile_prompt_tokens, 0.0) / prof.prefill_tokens_per_s
            window.add(first, free)
        # decode time stretched by the share of time spent in prefill
        share = 1.0 - done * (prompt / dt) / pf
        np.clip(share, 0.05, 1.0, out=share)
        tpot.add(step / share, done)
        self._mid = inflight - done / 2  # what a replica reports, on average over the tick
        inflight -= done
        self.rate[:hi] += alpha * (done / dt - self.rate[:hi])
        self.completed += float(done.sum())

    def view(self, now: float) -> FleetView:
        """What the policy sees: the same facts Serve's AutoscalingContext gives Tide's hook."""
        up = self._up
        infl = self._mid if len(self._mid) == len(up) else self.inflight[: self.hi]
        n_up = int(np.count_nonzero(up))
        in_engines = float(infl @ up) if n_up else 0.0
        running = float(np.minimum(infl, self._cap) @ up) if n_up else 0.0
        rate = self.rate[: len(up)]
        full = up & ((infl > self._cap + 1e-6) | (self.queued > 1e-6))
        load = Load(demand=in_engines + self.queued, waiting=in_engines - running, reporting=n_up,
                    kv_sum=running * self._kv_per_req / self.prof.kv_cache_tokens, running=running,
                    finish_rate=float(rate @ up) if n_up else 0.0, full=int(np.count_nonzero(full)),
                    full_rate=float(rate[full].sum()))
        active = n_up + int(np.count_nonzero(self.state[: self.hi] == STARTING))
        return FleetView(now, active, n_up, load, in_engines + self.queued)


def simulate(trace: Trace, profile: Profile, policy: Policy, policy_name: str, cfg: FleetConfig,
             progress: Callable[[float], None] | None = None, prefix: PrefixWorkload | None = None) -> SimResult:
    """Run one policy over one trace (optionally with prefix-cache routing, see `prefix`)."""
    t0 = time.perf_counter()
    fleet = Fleet(cfg, profile, trace.dt, prefix)
    ttft, tpot, window = Histogram(), Histogram(), Histogram()
    series = Series()
    state: dict[str, Any] = {}
    replica_s = node_s = 0.0
    max_running = changes = 0
    next_sample, arrived_in_window, arrived = cfg.sample_s, 0.0, 0.0
    n = len(trace.arrivals)
    report_every = max(n // 10, 1)
    for i in range(n + int(cfg.drain_s / trace.dt)):
        now = i * trace.dt
        j = min(i, n - 1)  # past the trace: no arrivals, the last request sizes, until the fleet is empty
        if i >= n:
            a = 0.0
            if fleet.queued + float(fleet.inflight[: fleet.hi].sum()) < 1e-6:
                break
        elif trace.clients is None:
            a = float(trace.arrivals[i])
        else:  # closed loop: every client not waiting for an answer sends its next request now
            a = max(float(trace.clients[i]) - fleet.queued - float(fleet.inflight[: fleet.hi].sum()), 0.0)
        arrived += a
        fleet.tick(now, a, float(trace.prompt_tokens[j]), float(trace.output_tokens[j]), tpot, window)
        view = fleet.view(now)
        target, state = policy(view, state)
        changes += target != view.target
        fleet.set_target(target, now)
        replica_s += fleet.allocated() * trace.dt
        node_s += len(fleet.nodes) * trace.dt
        max_running = max(max_running, view.running)
        arrived_in_window += a
        if now + trace.dt >= next_sample:
            series.t.append(now)
            series.arrival_rate.append(arrived_in_window / cfg.sample_s)
            series.load.append(view.total_requests)
            series.running.append(view.running)
            series.target.append(target)
            series.ttft_p50.append(window.percentile(50))
            series.ttft_p99.append(window.percentile(99))
            ttft.counts += window.counts
            window, arrived_in_window, next_sample = Histogram(), 0.0, next_sample + cfg.sample_s
        if progress and i % report_every == report_every - 1:
            progress((i + 1) / n)
    ttft.counts += window.counts
    return SimResult(policy_name, trace.name, trace.duration_s, arrived, fleet.completed,
                     fleet.shed, fleet.failed, fleet.queued + float(fleet.inflight.sum()), ttft, tpot, replica_s, node_s, max_running, series,
                     cfg.slo_ttft_s, cfg.slo_tpot_s, fleet.price_h, time.perf_counter() - t0,
                     cfg.replicas_max, changes, fleet.prefix.hit_rate if fleet.prefix else None, fleet.gpus)
