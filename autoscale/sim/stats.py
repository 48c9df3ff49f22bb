"""Latency histograms (log-spaced bins) and the result of one simulation run.

Per-request latencies come from weighted histograms, not lists: the simulator moves cohorts of requests, and
a day at internet scale is hundreds of millions of them. Bins are 1.5% wide, so percentiles are within ~1.5%.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EDGES = np.geomspace(1e-4, 1e5, 1401)  # 100 us .. 28 h
MIDS = np.sqrt(EDGES[:-1] * EDGES[1:])
_LOG_LO, _LOG_STEP = np.log(EDGES[0]), np.log(EDGES[1] / EDGES[0])


def bin_index(values: np.ndarray) -> np.ndarray:
    """Index into a Histogram's counts (= edges below the value), by arithmetic: cheaper than a search."""
    x = np.log(np.maximum(values, 1e-30))
    x -= _LOG_LO
    x /= _LOG_STEP
    np.ceil(x, out=x)
    np.clip(x, 0, len(EDGES), out=x)
    return x.astype(np.intp)


class Histogram:
    def __init__(self) -> None:
        self.counts = np.zeros(len(EDGES) + 1)

    def add(self, values: np.ndarray | float, weights: np.ndarray | float) -> None:
        v = np.atleast_1d(np.asarray(values, dtype=np.float64))
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), v.shape)
        self.counts += np.bincount(bin_index(v), w, minlength=len(self.counts))

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (bin midpoint), or None when empty."""
        if self.total <= 0:
            return None
        k = int(np.searchsorted(np.cumsum(self.counts), q / 100 * self.total))
        k = min(max(k, 1), len(MIDS))  # under/overflow bins clamp to the range
        return float(MIDS[k - 1])

    def share_at_most(self, limit: float) -> float:
        """Weight of values <= limit (to bin resolution), as a count."""
        return float(self.counts[: int(np.searchsorted(EDGES, limit, side="right"))].sum())


@dataclass
class Series:
    """Time series sampled every `sample_s` for the plot."""

    t: list[float] = field(default_factory=list)
    arrival_rate: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # requests in the system (queued + in engines)
    running: list[int] = field(default_factory=list)
    target: list[int] = field(default_factory=list)
    ttft_p50: list[float | None] = field(default_factory=list)
    ttft_p99: list[float | None] = field(default_factory=list)


@dataclass
class SimResult:
    policy: str
    trace: str
    duration_s: float
    arrived: float
    completed: float
    shed: float  # gave up waiting before any engine, or over the queue cap
    failed: float  # lost with a replica that failed or was stopped mid-request
    unfinished: float  # still queued or in an engine when the trace ended
    ttft: Histogram
    tpot: Histogram
    replica_s: float
    node_s: float
    max_running: int
    series: Series
    slo_ttft_s: float
    slo_tpot_s: float
    price_per_replica_h: float
    wall_s: float = 0.0
    replicas_max: int = 0
    scale_changes: int = 0  # ticks on which the policy changed the target
    prefix_hit_rate: float | None = None  # share of routed requests that found their prefix cached
    gpus_per_replica: int = 1  # a replica is its whole tensor/pipeline parallel group

    def summary(self) -> dict[str, float | str | None]:
        def ms(x: float | None) -> float | None:
            return None if x is None else x * 1000

        denom = max(self.arrived, 1e-9)
        return {
            "policy": self.policy, "trace": self.trace, "requests": self.arrived, "completed": self.completed,
            "shed": self.shed, "failed": self.failed,
            "unfinished": self.unfinished,
            "ttft_slo_pct": 100 * self.ttft.share_at_most(self.slo_ttft_s) / denom,
            "tpot_slo_pct": 100 * self.tpot.share_at_most(self.slo_tpot_s) / denom,
            "ttft_p50_ms": ms(self.ttft.percentile(50)), "ttft_p99_ms": ms(self.ttft.percentile(99)),
            "tpot_p50_ms": ms(self.tpot.percentile(50)), "tpot_p99_ms": ms(self.tpot.percentile(99)),
            "replica_h": self.replica_s / 3600, "gpu_h": self.replica_s / 3600 * self.gpus_per_replica,
            "node_h": self.node_s / 3600, "max_running": self.max_running,
            "scale_changes": self.scale_changes, "prefix_hit_rate": self.prefix_hit_rate,
            "cost_usd": self.replica_s / 3600 * self.price_per_replica_h, "wall_s": self.wall_s,
        }
