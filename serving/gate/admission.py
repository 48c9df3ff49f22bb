"""Backpressure: a bounded queue per model at the ingress. Pure; the caller passes `now` and the capacity.

A model takes `capacity` requests at once (running replicas x the engine's max_num_seqs, the same figure as the
autoscaler's `replica_capacity`) plus `max_queued` waiting
for a slot; past that, a new request gets 429 with a Retry-After computed from the queue and how fast it
drains, so clients back off in proportion to the real overload instead of hammering a constant.

Drain rate: an exponentially weighted rate of releases (completed, failed or cancelled: each frees a slot),
with time constant `drain_window_s`, corrected for start-up bias so the first observations are not read as a
near-zero rate. Retry-After = ceil(requests ahead of this one / drain rate), clamped to
[1, retry_after_max_s]; only before any release has been seen is it the fixed `fallback_retry_after_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator


RETRY_AFTER_MIN_S = 1  # never 0: a client told "retry in 0 s" retries at once and makes the overload worse


class AdmissionConfig(BaseModel):
    """Bounded queueing for one model (goes on ModelConfig as `admission`)."""

    model_config = ConfigDict(extra="forbid")

    max_queued: NonNegativeInt = Field(
        256, description="Requests that may wait at the ingress beyond what the running replicas take at once "
        "(replicas x replica_capacity); more get 429 with Retry-After. Bounds the ingress's memory per model.",
    )
    drain_window_s: PositiveFloat = Field(
        10.0, description="Time constant (seconds) of the drain-rate average: larger is steadier, smaller follows "
        "changes faster.",
    )
    fallback_retry_after_s: PositiveInt = Field(
        5, description="Retry-After (seconds) sent before any request has finished, when no drain rate is known.",
    )
    retry_after_max_s: PositiveInt = Field(60, description="Largest Retry-After sent (seconds).")

    @model_validator(mode="after")
    def _bounds(self) -> "AdmissionConfig":
        if self.fallback_retry_after_s > self.retry_after_max_s:
            raise ValueError(f"fallback_retry_after_s ({self.fallback_retry_after_s}) must be <= "
                             f"retry_after_max_s ({self.retry_after_max_s})")
        return self


@dataclass(frozen=True)
class Admit:
    """The request may proceed; the caller must call `release` exactly once when it ends, however it ends."""

    in_flight: int


@dataclass(frozen=True)
class Reject:
    """The queue is full: answer 429 with `Retry-After: retry_after_s`. `estimated` is False for the fallback."""

    retry_after_s: int
    in_flight: int
    limit: int
    estimated: bool


class DrainRate:
    """Exponentially weighted rate of events per second, bias-corrected for its start."""

    def __init__(self, window_s: float):
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0 (got {window_s})")
        self.window_s = window_s
        self._level = 0.0  # sum of exp(-(t - t_i)/window) / window, as of self._last
        self._first: float | None = None
        self._last: float | None = None

    def observe(self, now: float, count: int = 1) -> None:
        if self._first is None:
            self._first = self._last = now
        self._level = self._decayed(now) + count / self.window_s
        self._last = max(self._last, now)

    def _decayed(self, now: float) -> float:
        dt = max(0.0, now - self._last) if self._last is not None else 0.0
        return self._level * math.exp(-dt / self.window_s)

    def rate(self, now: float) -> float | None:
        """Events per second, or None before any event or at the instant of the first one."""
        if self._first is None:
            return None
        age = now - self._first
        if age <= 0:
            return None
        return self._decayed(now) / (1.0 - math.exp(-age / self.window_s))


def retry_after_s(ahead: int, rate_per_s: float | None, cfg: AdmissionConfig) -> tuple[int, bool]:
    """(seconds, estimated): `ahead` requests must drain first at `rate_per_s`; the fallback when no rate yet."""
    if rate_per_s is None:
        return cfg.fallback_retry_after_s, False
    if rate_per_s <= 0:
        return cfg.retry_after_max_s, True
    return min(cfg.retry_after_max_s, max(RETRY_AFTER_MIN_S, math.ceil(ahead / rate_per_s))), True


class AdmissionGate:
    """One model's bounded queue: counts requests in flight at the ingress and admits up to the limit."""

    def __init__(self, cfg: AdmissionConfig, capacity: int):
        self.cfg = cfg
        self.in_flight = 0
        self.capacity = 0
        self.set_capacity(capacity)
        self.drain = DrainRate(cfg.drain_window_s)

    def set_capacity(self, capacity: int) -> None:
        """Requests the running replicas take at once (replicas x replica capacity); 0 while none runs."""
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0 (got {capacity})")
        self.capacity = capacity

    @property
    def limit(self) -> int:
        return self.capacity + self.cfg.max_queued

    @property
    def queued(self) -> int:
        """Requests waiting beyond the replicas' capacity."""
        return max(0, self.in_flight - self.capacity)

    def try_admit(self, now: float) -> Admit | Reject:
        if self.in_flight < self.limit:
            self.in_flight += 1
            return Admit(self.in_flight)
        ahead = self.queued + 1  # everything already waiting drains before this request would get a slot
        seconds, estimated = retry_after_s(ahead, self.drain.rate(now), self.cfg)
        return Reject(seconds, self.in_flight, self.limit, estimated)

    def release(self, now: float) -> None:
        """An admitted request ended (answered, failed or cancelled): its slot is free and counts as drain."""
        if self.in_flight <= 0:
            raise RuntimeError("release() without a matching admitted request")
        self.in_flight -= 1
        self.drain.observe(now)

    on_finish = release
