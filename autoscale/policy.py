"""Tide's autoscaling policy: replicas from engine queue depth, as a pure function.

No Ray, no clock, no I/O: the caller passes the time, each replica's engine stats and the state the last
call returned. Serve calls it through `autoscale.serve_policy` and `autoscale.controller.step`; the
simulator calls the same step.

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
on that `Load`, through named steps (observe, bounds, wake from zero, scale up, scale to zero, scale down).
`decide()` is both in one call. The types (stats, Load, Decision, the typed state) are in autoscale/load.py.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, model_validator

from .load import Action, Decision, LastDown, Load, PolicyState, ReplicaStats, demand_of, summarize

FINISH_RATE_WINDOW_S = 10.0  # a replica's finish rate is over this long: recent enough to follow a crowd's start


class PolicySettings(BaseModel):
    """A model's `autoscaling:` block in the YAML (its bounds come from `replicas`)."""

    model_config = ConfigDict(extra="forbid")

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

    @model_validator(mode="before")
    @classmethod
    def _bounds_elsewhere(cls, data: Any) -> Any:
        if cls is PolicySettings and isinstance(data, Mapping) and {"min_replicas", "max_replicas"} & set(data):
            raise ValueError("set min/max under `replicas`, not here")
        return data

    @model_validator(mode="after")
    def _check_band(self) -> "PolicySettings":
        if self.downscale_utilization >= self.target_utilization:
            raise ValueError(
                f"downscale_utilization ({self.downscale_utilization}) must be < target_utilization "
                f"({self.target_utilization}), or the policy would flap"
            )
        return self


class PolicyConfig(PolicySettings):
    """What the policy decides with: a model's settings and its replica bounds."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")

    @model_validator(mode="after")
    def _check(self) -> "PolicyConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self


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


State = PolicyState | Mapping[str, Any] | None


def decide(
    now: float,
    current: int,
    stats: Sequence[ReplicaStats | None],
    cfg: PolicyConfig,
    state: State = None,
    queued_outside: float = 0.0,
    start_s: float | None = None,
) -> Decision:
    """Desired replica count for one model. `state` is what the previous Decision returned (or None)."""
    return decide_load(now, current, summarize(stats, queued_outside), cfg, state, start_s)


def decide_load(now: float, current: int, load: Load, cfg: PolicyConfig, state: State = None,
                start_s: float | None = None) -> Decision:
    """`decide()` on an already summarised Load. `start_s`: measured replica start time (None: the config's).
    The named steps in order; the first that decides, decides."""
    st = PolicyState.of(state)
    start_s = cfg.replica_start_s if start_s is None else start_s
    trend = observe(st, now, load.demand, start_s, cfg)
    outcome = (out_of_bounds(current, cfg) or from_zero(current, load.demand, cfg)
               or scale_up(st, now, current, load, trend, start_s, cfg) or to_zero(st, now, load.demand, cfg)
               or scale_down(st, now, current, load, cfg))
    n, action, reason = outcome
    n = max(cfg.min_replicas, min(cfg.max_replicas, n))
    if action in (Action.UP, Action.WAKE, Action.DOWN, Action.ZERO) and n != current:
        st.up_since = st.down_since = None
    return Decision(n, action if n != current else Action.HOLD, reason, st)


Outcome = tuple[int, Action, str]  # replicas, action, reason (bounds applied by decide_load)


def observe(st: PolicyState, now: float, demand: float, start_s: float, cfg: PolicyConfig) -> float:
    """Smooth the demand and its trend into `st`; returns the trend (requests/s). The trend is smoothed again,
    slowly: noise averages out, a real ramp persists. Its memory is at least half a replica start: the trend is
    multiplied by the start time, so a longer start needs a steadier trend (else Poisson noise x a 3-minute start
    reads as a ramp and flaps)."""
    dt = max(now - st.t, 1e-6) if st.t is not None else None
    smoothed = _smooth(st.ewma, demand, cfg.smoothing)
    slope = 0.0 if dt is None or st.ewma is None else (smoothed - st.ewma) / dt
    trend = _smooth(st.trend, slope, min(cfg.smoothing / 3, (dt or 1.0) / max(start_s / 2, 1.0)))
    if demand > 0:
        st.last_busy = now
    st.t, st.demand, st.ewma, st.trend = now, demand, smoothed, trend
    return trend


def out_of_bounds(current: int, cfg: PolicyConfig) -> Outcome | None:
    if current < cfg.min_replicas:
        return cfg.min_replicas, Action.UP, f"below min_replicas ({cfg.min_replicas})"
    if current > cfg.max_replicas:
        return cfg.max_replicas, Action.DOWN, f"above max_replicas ({cfg.max_replicas})"
    return None


def from_zero(current: int, demand: float, cfg: PolicyConfig) -> Outcome | None:
    """At zero, any request waiting anywhere wakes the model at once (the cold start is the delay)."""
    if current != 0:
        return None
    if demand > 0:
        return max(1, replicas_for(demand, cfg)), Action.WAKE, f"{demand:.0f} request(s) waiting at zero"
    return 0, Action.HOLD, "idle at zero"


def scale_up(st: PolicyState, now: float, current: int, load: Load, trend: float, start_s: float,
             cfg: PolicyConfig) -> Outcome | None:
    """Queue pressure or capacity shortfall on demand projected one replica start ahead, held for
    upscale_delay_s; a backlog is sized to drain in time (drain_need), KV pressure to bring usage back down."""
    demand, waiting, reporting = load.demand, load.waiting, load.reporting
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
    if not (pressured and need > current):
        st.up_since = None
        return None
    if st.up_since is None:
        st.up_since = now
    if now - st.up_since >= cfg.upscale_delay_s:
        target = min(need, current + step_up(current, cfg))
        learn_from_reversal(st, now, current, target, start_s, cfg)
        return target, Action.UP, (f"demand {demand:.0f} (projected {projected:.0f} in {start_s:.0f}s), "
                                   f"{queue_per_replica:.1f} waiting/replica, KV {kv_mean:.0%} -> {target} replicas")
    st.down_since = None
    return current, Action.HOLD, f"pressure for {now - st.up_since:.1f}s < upscale_delay_s"


def to_zero(st: PolicyState, now: float, demand: float, cfg: PolicyConfig) -> Outcome | None:
    """With min_replicas 0: nothing at all for scale_to_zero_idle_s."""
    if cfg.min_replicas != 0 or demand != 0:
        return None
    if st.first_seen is None:
        st.first_seen = now
    idle = now - (st.last_busy if st.last_busy is not None else st.first_seen)
    if idle < cfg.scale_to_zero_idle_s:
        return None
    st.last_down = None  # waking from zero later is no verdict on that scale-down
    return 0, Action.ZERO, f"idle for {idle:.0f}s"


def scale_down(st: PolicyState, now: float, current: int, load: Load, cfg: PolicyConfig) -> Outcome:
    """The smoothed demand fits in one replica fewer at downscale_utilization, for downscale_delay_s. Where a
    reversed scale-down measured what one replica fewer could not hold, stay below target_utilization of that.
    Else hold."""
    smoothed = st.ewma if st.ewma is not None else load.demand
    peak = max(smoothed, load.demand)
    kv_hot = (load.kv_sum / load.reporting if load.reporting else 0.0) > cfg.kv_cache_high
    configured = (current - 1) * cfg.replica_capacity * cfg.downscale_utilization
    learned = st.overflowed.get(str(current - 1))
    limit = configured if learned is None else min(configured, learned * cfg.target_utilization)
    if current > max(cfg.min_replicas, 1) and peak <= limit and not kv_hot:
        if st.down_since is None:
            st.down_since = now
        if now - st.down_since >= cfg.downscale_delay_s:
            st.last_down = LastDown(now, current, peak)
            return current - 1, Action.DOWN, (f"demand {smoothed:.1f} fits in {current - 1} replica(s) "
                                              f"for {now - st.down_since:.0f}s")
        return current, Action.HOLD, f"low demand for {now - st.down_since:.0f}s < downscale_delay_s"
    st.down_since = None
    why = "" if limit == configured else f"; demand {learned:.0f} overflowed {current - 1} replica(s) before"
    return current, Action.HOLD, f"demand {load.demand:.0f} within {current} replica(s){why}"


def learn_from_reversal(st: PolicyState, now: float, current: int, target: int, start_s: float,
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
    last = st.last_down
    if last is None or current >= last.replicas or target < last.replicas or now - last.at > start_s:
        return
    st.last_down = None
    n = last.replicas
    if current != n - 1 or last.peak < 0.5 * (n - 1) * cfg.replica_capacity * cfg.downscale_utilization:
        return
    st.overflowed = {**st.overflowed, str(n - 1): float(last.peak)}


__all__ = ["Action", "Decision", "LastDown", "Load", "PolicyConfig", "PolicySettings", "PolicyState", "ReplicaStats",
           "decide",
           "decide_load", "demand_of", "drain_need", "replicas_for", "step_up", "summarize"]
