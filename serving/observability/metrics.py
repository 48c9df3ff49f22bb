"""Engine and fleet metrics as plain data: what replicas count, how the status pages summarise it, and the
Prometheus text for `/metrics` under vLLM's own metric names (so vLLM's Grafana dashboards work unchanged).

Pure: no Ray, no vLLM. Replicas fill an `EngineCounters` from vLLM's stat-logger hook and push its
`snapshot()` (a JSON-able dict) to the stats hub; the ingress turns the hub's contents into `/tide/status`
with `model_status()` and into Prometheus text with `render_prometheus()`.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from autoscale.policy import FINISH_RATE_WINDOW_S

# vLLM's default buckets (vllm/v1/metrics/buckets.py), copied so this module needs no vLLM import.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)


@dataclass
class Histogram:
    """Cumulative Prometheus-style histogram: counts[i] = observations <= buckets[i]; the last is +Inf."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "counts": list(self.counts), "sum": self.sum}


class EngineCounters:
    """What one engine has done since it started, plus a short window for rates and percentiles."""

    def __init__(self, window_s: float = 30.0, max_samples: int = 512) -> None:
        self.window_s = window_s
        self.waiting = 0
        self.running = 0
        self.kv_cache_usage = 0.0
        self.last_step = 0.0  # wall time of the engine's latest step (the stuck-engine check reads it)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.aborted = 0
        self.success: dict[str, int] = {}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.queue = Histogram(E2E_BUCKETS)
        self._ttft_recent: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._tokens_per_sec: deque[list[float]] = deque()  # [second, tokens]
        self._finished_per_sec: deque[list[float]] = deque()  # [second, requests finished]
        self._first_step: float | None = None

    def on_scheduler(self, waiting: int, running: int, kv_cache_usage: float) -> None:
        self.waiting, self.running, self.kv_cache_usage = waiting, running, kv_cache_usage

    def on_iteration(self, now: float, prompt_tokens: int, generation_tokens: int, preempted: int,
                     ttfts: Iterable[float], itls: Iterable[float],
                     finished: Iterable[tuple[str, float, float]]) -> None:
        """One engine step. `finished` holds (finish_reason, e2e_latency_s, queued_s) per finished request."""
        self.last_step = now
        if self._first_step is None:
            self._first_step = now
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens
        self.preemptions += preempted
        for t in ttfts:
            self.ttft.observe(t)
            self._ttft_recent.append((now, t))
        for t in itls:
            self.itl.observe(t)
        ended = 0
        for reason, e2e, queued in finished:
            self.success[reason] = self.success.get(reason, 0) + 1
            self.e2e.observe(e2e)
            self.queue.observe(queued)
            ended += 1
        _add_per_sec(self._tokens_per_sec, now, generation_tokens)
        _add_per_sec(self._finished_per_sec, now, ended)
        self._trim(now)

    def on_abort(self) -> None:
        self.aborted += 1

    def _trim(self, now: float) -> None:
        for q, window in ((self._tokens_per_sec, self.window_s), (self._finished_per_sec, FINISH_RATE_WINDOW_S)):
            while q and q[0][0] < now - window - 1:
                q.popleft()

    def finish_rate(self, now: float) -> float:
        """Requests per second finished over the last FINISH_RATE_WINDOW_S (or since the first step, if later)."""
        if self._first_step is None:
            return 0.0
        since = max(now - FINISH_RATE_WINDOW_S, math.floor(self._first_step))
        n = sum(c for sec, c in self._finished_per_sec if sec >= math.floor(since))
        return n / max(now - since, 1.0)

    def snapshot(self, now: float, unfinished: int | None = None) -> dict[str, Any]:
        """JSON-able state. With `unfinished` (the frontend's exact count), queue numbers are clipped so that
        an engine whose last scheduler report predates its final step shows no phantom queue."""
        self._trim(now)
        waiting, running = self.waiting, self.running
        if unfinished is not None:
            waiting = min(waiting, unfinished)
            running = min(running, max(unfinished - waiting, 0))
            if unfinished > waiting + running:  # admitted by the frontend, not yet seen by the scheduler
                waiting = unfinished - running
        recent = [t for (ts, t) in self._ttft_recent if ts >= now - self.window_s]
        tokens = sum(n for s, n in self._tokens_per_sec if s >= now - self.window_s)
        return {
            "time": now, "waiting": waiting, "running": running,
            "kv_cache_usage": self.kv_cache_usage if (unfinished is None or unfinished) else 0.0,
            "prompt_tokens": self.prompt_tokens, "generation_tokens": self.generation_tokens,
            "preemptions": self.preemptions, "aborted": self.aborted, "success": dict(self.success),
            "ttft": self.ttft.to_dict(), "itl": self.itl.to_dict(), "e2e": self.e2e.to_dict(),
            "queue": self.queue.to_dict(),
            "window_s": self.window_s, "window_tokens": tokens, "window_ttfts": recent,
            "finish_rate": self.finish_rate(now),
        }


def _add_per_sec(q: deque[list[float]], now: float, n: float) -> None:
    if not n:
        return
    sec = math.floor(now)
    if q and q[-1][0] == sec:
        q[-1][1] += n
    else:
        q.append([sec, n])


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no data."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def model_status(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One model's live numbers from its replicas' latest snapshots (None where no replica reported)."""
    if not snapshots:
        return {"waiting": None, "engine_running": None, "kv_cache_usage": None, "tokens_per_s": None,
                "ttft_p50_ms": None}
    ttfts = [t for s in snapshots for t in s.get("window_ttfts", [])]
    p50 = percentile(ttfts, 50)
    return {
        "waiting": int(sum(s["waiting"] for s in snapshots)),
        "engine_running": int(sum(s["running"] for s in snapshots)),
        "kv_cache_usage": round(sum(s["kv_cache_usage"] for s in snapshots) / len(snapshots), 4),
        "tokens_per_s": round(sum(s["window_tokens"] / s["window_s"] for s in snapshots), 1),
        "ttft_p50_ms": None if p50 is None else round(p50 * 1000, 1),
    }


def model_state(running: int, total: int) -> str:
    """A word for the status pages: scaled_to_zero, starting or ready."""
    if total == 0:
        return "scaled_to_zero"
    return "ready" if running > 0 else "starting"
