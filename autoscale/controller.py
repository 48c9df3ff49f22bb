"""One control-loop tick of Tide's autoscaler, pure: engine stats from Serve's metrics in, a decision out.

Serve's hook (autoscale/serve_policy.py) and the fleet simulator (autoscale/sim/) both call `step`, so they
run the same policy path; this module imports no Ray.
"""

from __future__ import annotations

from typing import Any

from .policy import Decision, Load, PolicyConfig, ReplicaStats, decide_load
from .startup import measured_start_s, track_start

WAITING, RUNNING, KV, FINISH = "tide_waiting", "tide_running", "tide_kv_cache_usage", "tide_finish_rate"
STATE_KEY = "tide"
START_KEY = "tide_start"  # the replica start-time tracker (autoscale.startup), beside the policy's own state


def stats_from_metrics(metrics: dict[str, dict[Any, float]] | None, replicas: list[Any]) -> list[ReplicaStats | None]:
    """Per running replica: its engine stats, or None when it has not reported (starting, dead)."""
    metrics = metrics or {}
    out: list[ReplicaStats | None] = []
    for r in replicas:
        if r not in metrics.get(WAITING, {}) and r not in metrics.get(RUNNING, {}):
            out.append(None)
            continue
        out.append(ReplicaStats(waiting=metrics.get(WAITING, {}).get(r, 0.0),
                                running=metrics.get(RUNNING, {}).get(r, 0.0),
                                kv_cache_usage=metrics.get(KV, {}).get(r, 0.0),
                                finish_rate=metrics.get(FINISH, {}).get(r, 0.0)))
    return out


def step(cfg: PolicyConfig, policy_state: dict[str, Any] | None, now: float, target: int, running: int,
         load: Load) -> tuple[Decision, dict[str, Any]]:
    """One control-loop tick, pure: measure replica starts, decide against the current target.

    Serve's hook and the fleet simulator both call this, so they run the same policy path."""
    prev = policy_state or {}
    starts = track_start(prev.get(START_KEY), now, target, running)
    d = decide_load(now, target, load, cfg, prev.get(STATE_KEY), start_s=measured_start_s(starts))
    starts = track_start(starts, now, d.replicas, running)  # a start is timed from its decision
    return d, {STATE_KEY: d.state.to_dict(), START_KEY: starts}
