"""What the autoscaling policy reads and returns, as types (pure): per-replica stats, the fleet's Load, the
Decision and the typed state one decision hands the next."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Mapping, Sequence


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


@dataclass
class LastDown:
    """The last scale-down: when, from how many replicas, and the demand it was taken at."""

    at: float
    replicas: int
    peak: float


@dataclass
class PolicyState:
    """What one decision hands the next. Serve keeps it between ticks in its policy_state, as `to_dict()`."""

    t: float | None = None  # when the last decision was taken
    demand: float = 0.0  # the demand it saw
    ewma: float | None = None  # demand, smoothed
    trend: float | None = None  # requests/s the smoothed demand grows by, smoothed again
    last_busy: float | None = None  # the last time any demand was seen
    first_seen: float | None = None  # the first idle decision (scale to zero counts from here if never busy)
    up_since: float | None = None  # pressure to scale up, since
    down_since: float | None = None  # room to scale down, since
    last_down: LastDown | None = None  # the last scale-down, until a reversal judged it or it aged
    overflowed: dict[str, float] = field(default_factory=dict)  # fleet size -> demand that overflowed it

    @classmethod
    def of(cls, value: "PolicyState | Mapping[str, Any] | None") -> "PolicyState":
        """A fresh copy of `value`: a state, its `to_dict()`, or nothing (the first decision)."""
        if value is None:
            return cls()
        data = value.to_dict() if isinstance(value, PolicyState) else dict(value)
        last = data.get("last_down")
        return cls(**{**data, "last_down": None if last is None else LastDown(**last),
                      "overflowed": dict(data.get("overflowed") or {})})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what Serve stores and the simulator carries)."""
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    replicas: int
    action: Action
    reason: str
    state: PolicyState = field(default_factory=PolicyState)


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
