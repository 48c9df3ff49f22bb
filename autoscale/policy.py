"""Tide's autoscaling policy: replicas from engine queue depth, as a pure function.

No Ray, no clock, no I/O: the caller passes the time, each replica's engine stats and the state the last
call returned. Serve calls it through `autoscale.serve_policy` and `autoscale.controller.step`; the simulator calls the same step.

The model: a replica serves `replica_capacity` requests at once (its batch); requests beyond that wait in
the engine's queue. Demand = running + waiting (+ requests queued before any replica). We scale up fast
when the queue per replica passes `target_waiting_per_replica` (aiming the fleet at `target_utilization`
of its capacity, on demand projected one replica start ahead when it is rising: the start time measured on
the cluster when the caller passes it, else `replica_start_s`), and down slowly: only after demand has stayed
below the down threshold for `downscale_delay_s`, one replica per step. Two thresholds plus the delay are the
hysteresis: steady load never flaps. KV-cache usage above `kv_cache_high` also counts as pressure: the engine
is about to preempt even if its waiting queue still looks short.

Two steps, so that a fleet of 10,000 replicas can be summarised vectorised (the simulator) and still reach
the very same decision code: `summarize()` turns per-replica stats into one `Load`; `decide_load()` decides
on that `Load`. `decide()` is both in one call (what Serve uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, model_validator

FINISH_RATE_WINDOW_S = 10.0  # a replica's finish rate is over this long: recent enough to follow a crowd's start


class PolicyConfig(BaseModel):
    """Per-model autoscaling settings (the `autoscaling:` block of a model in the YAML)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    replica_capacity: PositiveFloat = Field(
        32, description="Requests one replica runs at once without queueing (about vLLM's max_num_seqs)."
    )
    target_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of capacity to aim the fleet at (0.9 with downscale_delay_s 30: "
        "tuned in the fleet simulator, see benchmarks/RESULTS.md).",
    )
    target_waiting_per_replica: NonNegativeFloat = Field(
        2.0, description="Engine-queue depth per replica that triggers a scale-up."
    )
    downscale_utilization: float = Field(
        0.5, gt=0, lt=1, description="Scale down only when demand fits in one replica fewer at this utilization."
    )
    upscale_delay_s: NonNegativeFloat = Field(2.0, description="Pressure must last this long before adding replicas.")
    downscale_delay_s: NonNegativeFloat = Field(
        30.0, description="Low demand must last this long before removing one (30: tuned in the fleet "
        "simulator; 60 kept a flash crowd's extra replicas longer for no SLO gain).",
    )
    scale_to_zero_idle_s: NonNegativeFloat = Field(
        300.0, description="With min_replicas 0: seconds without any request before going to zero."
    )
    smoothing: float = Field(
        0.3, gt=0, le=1, description="EWMA weight of the newest demand sample (1 = no smoothing)."
    )
    replica_start_s: NonNegativeFloat = Field(
        30.0, description="Expected seconds for a new replica to serve: how far ahead a rising demand is projected."
    )
    max_step_up: int = Field(4, ge=1, description="Most replicas added in one decision, for small fleets.")
    max_step_up_percent: NonNegativeFloat = Field(
        100.0, description="Most replicas added in one decision as a percent of the current fleet, when that is "
        "more than max_step_up (Kubernetes' HPA default: 4 pods or 100%). 0: max_step_up alone, which at "
        "10,000 replicas shed 0.47% of a day's requests in the simulator (benchmarks/RESULTS.md).",
    )
    backlog_drain_s: NonNegativeFloat = Field(
        60.0, description="Requests queued beyond what the fleet runs are sized to drain within this long "
        "(from the rate at which full replicas finish requests), not to run all at once: a flash crowd's backlog "
        "asks for the replicas that empty it in time, not one per batch of waiting requests. 0: the whole "
        "backlog at once (the rule before; benchmarks/RESULTS.md compares both).",
    )
    kv_cache_high: float = Field(
        0.9, gt=0, le=1, description="Mean KV-cache usage (0..1) of the reporting replicas above which the engines "
        "are about to preempt: counts as scale-up pressure (fleet sized to bring it back to this level).",
    )

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
    finish_rate: float = 0.0  # requests per second its engine finished lately


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


@dataclass(frozen=True)
class Load:
    """The fleet's load, summed over the replicas that reported: all the decision needs."""

    demand: float = 0.0  # requests running + waiting in engines + queued before any engine
    waiting: float = 0.0  # requests waiting in the engines' queues
    reporting: int = 0  # replicas that reported stats
    kv_sum: float = 0.0  # sum of the reporting replicas' KV-cache usage (0..1 each)
    running: float = 0.0  # requests in the engines' batches (demand - running is the backlog)
    finish_rate: float = 0.0  # requests per second the reporting replicas finish
    full: int = 0  # reporting replicas with a queue of their own or before them (they finish at their best rate)
    full_rate: float = 0.0  # requests per second those full replicas finish, summed

    @property
    def backlog(self) -> float:
        """Requests not in any batch: waiting in engines' queues or before any engine."""
        return max(self.demand - self.running, 0.0)


def summarize(stats: Sequence[ReplicaStats | None], queued_outside: float = 0.0) -> Load:
    """Per-replica stats -> one Load. Silent replicas (None: starting, dead) add nothing."""
    live = [s for s in stats if s is not None]
    waiting = sum(max(s.waiting, 0.0) for s in live)
    running = sum(max(s.running, 0.0) for s in live)
    kv = sum(min(max(s.kv_cache_usage, 0.0), 1.0) for s in live)
    # Requests queued before any engine mean every replica holds all Serve sends it: all of them are full.
    full = [max(s.finish_rate, 0.0) for s in live if s.waiting > 0 or queued_outside > 0]
    return Load(running + waiting + max(queued_outside, 0.0), waiting, len(live), kv, running,
                sum(max(s.finish_rate, 0.0) for s in live), len(full), sum(full))


def demand_of(stats: Sequence[ReplicaStats | None], queued_outside: float) -> tuple[float, float, int]:
    """(total demand in requests, total waiting, replicas that reported). Silent replicas add nothing."""
    load = summarize(stats, queued_outside)
    return load.demand, load.waiting, load.reporting


def _smooth(prev: float | None, value: float, alpha: float) -> float:
    return value if prev is None else alpha * value + (1 - alpha) * prev


def replicas_for(demand: float, cfg: PolicyConfig) -> int:
    return math.ceil(demand / (cfg.replica_capacity * cfg.target_utilization) - 1e-9) if demand > 0 else 0


def drain_need(load: Load, trend: float, start_s: float, cfg: PolicyConfig) -> int | None:
    """Replicas that keep up with arrivals and empty the backlog within `backlog_drain_s` once the new ones
    serve, at target_utilization of a full replica's measured finish rate; None when no full replica reports a
    rate (then the backlog is sized as if it all ran at once)."""
    if cfg.backlog_drain_s <= 0 or load.full <= 0 or load.full_rate <= 0:
        return None
    per_replica = load.full_rate / load.full
    growth = max(trend, 0.0)  # requests/s the demand grows by: arrivals beyond what the fleet finishes
    backlog = load.backlog + growth * start_s  # what waits by the time a replica started now serves
    wanted = load.finish_rate + growth + backlog / cfg.backlog_drain_s
    return math.ceil(wanted / (per_replica * cfg.target_utilization) - 1e-9)


def step_up(current: int, cfg: PolicyConfig) -> int:
    """Most replicas one decision may add to a fleet of `current`: proportional to the fleet, at least
    max_step_up (a fixed step takes hours to grow a large fleet; a proportional one alone, minutes to leave 1)."""
    return max(cfg.max_step_up, math.ceil(current * cfg.max_step_up_percent / 100 - 1e-9))


def decide(
    now: float,
    current: int,
    stats: Sequence[ReplicaStats | None],
    cfg: PolicyConfig,
    state: Mapping[str, Any] | None = None,
    queued_outside: float = 0.0,
    start_s: float | None = None,
) -> Decision:
    """Desired replica count for one model. `state` is what the previous Decision returned (or None)."""
    return decide_load(now, current, summarize(stats, queued_outside), cfg, state, start_s)


def decide_load(
    now: float,
    current: int,
    load: Load,
    cfg: PolicyConfig,
    state: Mapping[str, Any] | None = None,
    start_s: float | None = None,
) -> Decision:
    """`decide()` on an already summarised Load. `start_s`: measured replica start time (None: the config's)."""
    st = dict(state or {})
    demand, waiting, reporting = load.demand, load.waiting, load.reporting
    last_t = st.get("t")
    dt = max(now - last_t, 1e-6) if last_t is not None else None
    smoothed = _smooth(st.get("ewma"), demand, cfg.smoothing)
    # Trend of the smoothed demand, smoothed again (slowly): noise averages out, a real ramp persists.
    # Its memory is at least half a replica start: the trend is multiplied by the start time, so a longer
    # start needs a steadier trend (else Poisson noise x a 3-minute start reads as a ramp and flaps).
    start_s = cfg.replica_start_s if start_s is None else start_s
    slope = 0.0 if dt is None or st.get("ewma") is None else (smoothed - st["ewma"]) / dt
    trend = _smooth(st.get("trend"), slope, min(cfg.smoothing / 3, (dt or 1.0) / max(start_s / 2, 1.0)))
    if demand > 0:
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
    drain = drain_need(load, trend, start_s, cfg)
    if drain is not None:  # a backlog drained in time, not held all at once (never more than that rule)
        need = min(need, drain)
    queue_per_replica = waiting / max(reporting, 1)
    kv_mean = load.kv_sum / reporting if reporting else 0.0
    kv_hot = kv_mean > cfg.kv_cache_high
    if kv_hot:  # enough replicas to bring the mean KV usage back to kv_cache_high
        need = max(need, math.ceil(load.kv_sum / cfg.kv_cache_high - 1e-9))
    pressured = queue_per_replica > cfg.target_waiting_per_replica or need > current or kv_hot
    if pressured and need > current:
        since = st.setdefault("up_since", now)
        if now - since >= cfg.upscale_delay_s:
            target = min(need, current + step_up(current, cfg))
            _learn_from_reversal(st, now, current, target, start_s, cfg)
            return out(target, Action.UP, f"demand {demand:.0f} (projected {projected:.0f} in {start_s:.0f}s), "
                                          f"{queue_per_replica:.1f} waiting/replica, KV {kv_mean:.0%} -> {target} replicas")
        st.pop("down_since", None)
        return out(current, Action.HOLD, f"pressure for {now - since:.1f}s < upscale_delay_s")
    st.pop("up_since", None)

    # Scale to zero: nothing at all for scale_to_zero_idle_s.
    if cfg.min_replicas == 0 and demand == 0:
        st.setdefault("first_seen", now)
        idle = now - st.get("last_busy", st["first_seen"])
        if idle >= cfg.scale_to_zero_idle_s:
            st.pop("last_down", None)  # waking from zero later is no verdict on that scale-down
            return out(0, Action.ZERO, f"idle for {idle:.0f}s")

    # Scale-down: smoothed demand fits in one replica fewer at downscale_utilization, for long enough. Where a
    # reversed scale-down measured what one replica fewer could not hold, stay below target_utilization of that.
    peak = max(smoothed, demand)
    configured = (current - 1) * cfg.replica_capacity * cfg.downscale_utilization
    learned = (st.get("overflowed") or {}).get(str(current - 1))
    limit = configured if learned is None else min(configured, learned * cfg.target_utilization)
    fits = peak <= limit and not kv_hot
    if current > max(cfg.min_replicas, 1) and fits:
        since = st.setdefault("down_since", now)
        if now - since >= cfg.downscale_delay_s:
            st["last_down"] = [now, current, peak]
            return out(current - 1, Action.DOWN, f"demand {smoothed:.1f} fits in {current - 1} replica(s) "
                                                 f"for {now - since:.0f}s")
        return out(current, Action.HOLD, f"low demand for {now - since:.0f}s < downscale_delay_s")
    st.pop("down_since", None)
    why = "" if limit == configured else f"; demand {learned:.0f} overflowed {current - 1} replica(s) before"
    return out(current, Action.HOLD, f"demand {demand:.0f} within {current} replica(s){why}")


def _learn_from_reversal(st: dict[str, Any], now: float, current: int, target: int, start_s: float,
                         cfg: PolicyConfig) -> None:
    """A scale-up that undoes the last scale-down within one replica start proves that scale-down wrong.

    Why: the scale-down test assumes demand (requests in flight) stays the same when a replica goes, so that
    it fits in one replica fewer as long as it is below their capacity x downscale_utilization. It does not:
    in flight = arrival rate x time per request, and the time per request grows with the batch (a longer
    decode step, and every joining request's prefill stalls the batch). Once the arrival rate passes what one
    replica fewer can *complete*, the queue grows without bound, whatever the batch size. So a fleet whose
    demand looks like half of one replica fewer may still not fit in it: on the H100 profiles at 1-2 replicas
    (512-token prompts: ~28 requests/s per replica at most, 256 in flight) two replicas hold ~100 requests,
    "fits in one" (128), one replica then queues for a whole cold start, and the fleet flapped 2 -> 1 -> 5 -> 1
    every ~4 minutes (128 target changes, 71% TTFT <= 2 s on the 20,000-user diurnal hour).

    The policy sees no completion rate, so it learns from the outcome: the demand at which it left `n`
    replicas, measured on those `n`, overflowed `n - 1`; from then on `n` replicas go to `n - 1` only while
    demand stays below target_utilization of that (a measured limit needs no downscale_utilization guess:
    1 - target_utilization is the margin for noise, and downscale_delay_s still applies; x downscale_utilization
    kept 4% more replica-hours on the simulated 24 h day). Only that fleet size is affected, only for scale-down,
    and never beyond the configured test: a wrong lesson (a real ramp right after a scale-down) keeps at most one
    replica longer, while demand stays near the level it was taken at. Lessons are kept (a few numbers in the
    state): one more reversal at a lower demand replaces one.

    Only a marginal scale-down teaches: one taken at no less than half the configured limit, straight back up
    from the size it went to. A scale-down taken while (nearly) idle that a new burst undoes says nothing about
    what n - 1 replicas hold; learning from it would pin a limit near zero for good."""
    last = st.get("last_down")
    if last is None or current >= last[1] or target < last[1] or now - last[0] > start_s:
        return
    st.pop("last_down", None)
    n = int(last[1])
    if current != n - 1 or last[2] < 0.5 * (n - 1) * cfg.replica_capacity * cfg.downscale_utilization:
        return
    overflowed = dict(st.get("overflowed") or {})
    overflowed[str(int(last[1]) - 1)] = float(last[2])
    st["overflowed"] = overflowed
