"""Serve's custom autoscaling hook, calling Tide's pure policy. Thin: read the context, decide, log, return.

Serve instantiates `TidePolicy(**policy_kwargs)` once per deployment in its controller and calls it every
control-loop tick with an AutoscalingContext. Replicas feed `aggregated_metrics` through their
`record_autoscaling_stats()` (engine waiting/running/KV usage). Serve applies its own bounds and delays
afterwards; Tide sets Serve's delays to 0 so that the hysteresis lives in one place, the policy.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .policy import Action, PolicyConfig, ReplicaStats, decide

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

logger = logging.getLogger("ray.serve")

WAITING, RUNNING, KV = "tide_waiting", "tide_running", "tide_kv_cache_usage"
STATE_KEY = "tide"


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
                                kv_cache_usage=metrics.get(KV, {}).get(r, 0.0)))
    return out


class TidePolicy:
    """Serve policy object: holds the validated config; all state travels in Serve's policy_state."""

    def __init__(self, **kwargs: Any):
        self.cfg = PolicyConfig(**kwargs)

    def __call__(self, ctx: "AutoscalingContext") -> tuple[int, dict[str, Any]]:
        stats = stats_from_metrics(ctx.aggregated_metrics, list(ctx.running_replicas))
        reported = sum(s.running + s.waiting for s in stats if s is not None)
        # Requests Serve counts that no engine reports yet: queued at handles or in transit to a replica.
        outside = max(float(ctx.total_num_requests or 0) - reported, 0.0)
        prev = (ctx.policy_state or {}).get(STATE_KEY)
        now = ctx.current_time if ctx.current_time is not None else time.time()
        # Decide against the current *target*: replicas still starting count, or a hold would undo a scale-up.
        target = ctx.target_num_replicas
        d = decide(now, target, stats, self.cfg, prev, queued_outside=outside)
        if d.action != Action.HOLD:
            logger.info("tide autoscaler %s/%s: %s %d -> %d (%s; %d running)", ctx.app_name, ctx.deployment_name,
                        d.action.value, target, d.replicas, d.reason, ctx.current_num_replicas)
        return d.replicas, {STATE_KEY: d.state}
