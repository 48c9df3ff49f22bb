"""Tide's autoscaling policy: replicas from engine queue depth, as a pure function.

No Ray, no clock, no I/O: the caller passes the time, each replica's engine stats and the state the last
call returned. Serve calls it through `autoscale.serve_policy`; the simulator can call the same function.

The model: a replica serves `replica_capacity` requests at once (its batch); requests beyond that wait in
the engine's queue. Demand = running + waiting (+ requests queued before any replica). We scale up fast
when the queue per replica passes `target_waiting_per_replica` (aiming the fleet at `target_utilization`
of its capacity, on demand projected `replica_start_s` ahead when it is rising), and down slowly: only
after demand has stayed below the down threshold for `downscale_delay_s`, one replica per step.
Two thresholds plus the delay are the hysteresis: steady load never flaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, model_validator


class PolicyConfig(BaseModel):
    """Per-model autoscaling settings (the `autoscaling:` block of a model in the YAML)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    replica_capacity: PositiveFloat = Field(
        32, description="Requests one replica runs at once without queueing (about vLLM's max_num_seqs)."
    )
    target_utilization: float = Field(0.8, gt=0, le=1, description="Share of capacity to aim the fleet at.")
    target_waiting_per_replica: NonNegativeFloat = Field(
        2.0, description="Engine-queue depth per replica that triggers a scale-up."
    )
    downscale_utilization: float = Field(
        0.5, gt=0, lt=1, description="Scale down only when demand fits in one replica fewer at this utilization."
    )
    upscale_delay_s: NonNegativeFloat = Field(2.0, description="Pressure must last this long before adding replicas.")
    downscale_delay_s: NonNegativeFloat = Field(60.0, description="Low demand must last this long before removing one.")
    scale_to_zero_idle_s: NonNegativeFloat = Field(
        300.0, description="With min_replicas 0: seconds without any request before going to zero."
    )
    smoothing: float = Field(
        0.3, gt=0, le=1, description="EWMA weight of the newest demand sample (1 = no smoothing)."
    )
    replica_start_s: NonNegativeFloat = Field(
        30.0, description="Expected seconds for a new replica to serve: how far ahead a rising demand is projected."
    )
    max_step_up: int = Field(4, ge=1, description="Most replicas added in one decision.")

    @model_validator(mode="after")
    def _check(self) -> "PolicyConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if self.downscale_utilization >= self.target_utilization:
            raise ValueError(
                f"downscale_utilization ({self.downscale_utilization}) must be < target_utilization "
                f"({self.target_utilization}), or the policy would flap"
            )
        return self


@dataclass(frozen=True)
class ReplicaStats:
    """What one replica's engine reports. None for a replica that reported nothing (starting or dead)."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0


class Action(str, Enum):
    UP = "scale_up"
    DOWN = "scale_down"
    HOLD = "hold"
    ZERO = "scale_to_zero"
    WAKE = "scale_from_zero"


@dataclass(frozen=True)
class Decision:
    replicas: int
    action: Action
    reason: str
    state: dict[str, Any] = field(default_factory=dict)


def demand_of(stats: Sequence[ReplicaStats | None], queued_outside: float) -> tuple[float, float, int]:
    """(total demand in requests, total waiting, replicas that reported). Silent replicas add nothing."""
    live = [s for s in stats if s is not None]
    waiting = sum(max(s.waiting, 0.0) for s in live)
    engine = sum(max(s.running, 0.0) + max(s.waiting, 0.0) for s in live)
    return engine + max(queued_outside, 0.0), waiting, len(live)


def _smooth(prev: float | None, value: float, alpha: float) -> float:
    return value if prev is None else alpha * value + (1 - alpha) * prev


def replicas_for(demand: float, cfg: PolicyConfig) -> int:
    return math.ceil(demand / (cfg.replica_capacity * cfg.target_utilization) - 1e-9) if demand > 0 else 0


def decide(
    now: float,
    current: int,
    stats: Sequence[ReplicaStats | None],
    cfg: PolicyConfig,
    state: Mapping[str, Any] | None = None,
    queued_outside: float = 0.0,
) -> Decision:
    """Desired replica count for one model. `state` is what the previous Decision returned (or None)."""
    st = dict(state or {})
    demand, waiting, reporting = demand_of(stats, queued_outside)
    last_t = st.get("t")
    dt = max(now - last_t, 1e-6) if last_t is not None else None
    smoothed = _smooth(st.get("ewma"), demand, cfg.smoothing)
    # Trend of the smoothed demand, smoothed again (slowly): noise averages out, a real ramp persists.
    slope = 0.0 if dt is None or st.get("ewma") is None else (smoothed - st["ewma"]) / dt
    trend = _smooth(st.get("trend"), slope, cfg.smoothing / 3)
    start_s = cfg.replica_start_s
    if demand > 0 or queued_outside > 0:
        st["last_busy"] = now
    st.update({"t": now, "demand": demand, "ewma": smoothed, "trend": trend})

    def out(n: int, action: Action, reason: str) -> Decision:
        n = max(cfg.min_replicas, min(cfg.max_replicas, n))
        if action in (Action.UP, Action.WAKE, Action.DOWN, Action.ZERO) and n != current:
            st.pop("up_since", None)
            st.pop("down_since", None)
        return Decision(n, action if n != current else Action.HOLD, reason, st)

    if current < cfg.min_replicas:
        return out(cfg.min_replicas, Action.UP, f"below min_replicas ({cfg.min_replicas})")
    if current > cfg.max_replicas:
        return out(cfg.max_replicas, Action.DOWN, f"above max_replicas ({cfg.max_replicas})")

    # From zero: any request waiting anywhere wakes the model at once (the cold start is the delay).
    if current == 0:
        if demand > 0:
            return out(max(1, replicas_for(demand, cfg)), Action.WAKE, f"{demand:.0f} request(s) waiting at zero")
        return out(0, Action.HOLD, "idle at zero")

    # Scale-up: queue pressure or capacity shortfall on demand projected one replica start ahead.
    projected = demand + min(max(trend, 0.0) * start_s, demand)  # look ahead, at most doubling
    need = replicas_for(projected, cfg)
    queue_per_replica = waiting / max(reporting, 1)
    pressured = queue_per_replica > cfg.target_waiting_per_replica or need > current
    if pressured and need > current:
        since = st.setdefault("up_since", now)
        if now - since >= cfg.upscale_delay_s:
            target = min(need, current + cfg.max_step_up)
            return out(target, Action.UP, f"demand {demand:.0f} (projected {projected:.0f} in {start_s:.0f}s), "
                                          f"{queue_per_replica:.1f} waiting/replica -> {target} replicas")
        st.pop("down_since", None)
        return out(current, Action.HOLD, f"pressure for {now - since:.1f}s < upscale_delay_s")
    st.pop("up_since", None)

    # Scale to zero: nothing at all for scale_to_zero_idle_s.
    if cfg.min_replicas == 0 and demand == 0:
        st.setdefault("first_seen", now)
        idle = now - st.get("last_busy", st["first_seen"])
        if idle >= cfg.scale_to_zero_idle_s:
            return out(0, Action.ZERO, f"idle for {idle:.0f}s")

    # Scale-down: smoothed demand fits in one replica fewer at downscale_utilization, for long enough.
    fits = max(smoothed, demand) <= (current - 1) * cfg.replica_capacity * cfg.downscale_utilization
    if current > max(cfg.min_replicas, 1) and fits:
        since = st.setdefault("down_since", now)
        if now - since >= cfg.downscale_delay_s:
            return out(current - 1, Action.DOWN, f"demand {smoothed:.1f} fits in {current - 1} replica(s) "
                                                 f"for {now - since:.0f}s")
        return out(current, Action.HOLD, f"low demand for {now - since:.0f}s < downscale_delay_s")
    st.pop("down_since", None)
    return out(current, Action.HOLD, f"demand {demand:.0f} within {current} replica(s)")
