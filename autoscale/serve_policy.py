"""Serve's custom autoscaling hook, calling Tide's pure controller step (autoscale/controller.py). Thin: read
the context, decide, log, tell the stats hub, return.

Serve instantiates `TidePolicy(**policy_kwargs)` once per deployment in its controller and calls it every
control-loop tick with an AutoscalingContext. Replicas feed `aggregated_metrics` through their
`record_autoscaling_stats()` (engine waiting/running/KV usage/finish rate). Serve applies its own bounds and delays
afterwards; Tide sets Serve's delays to 0 so that the hysteresis lives in one place, the policy.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .controller import stats_from_metrics, step
from .policy import Action, PolicyConfig, summarize

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

logger = logging.getLogger("ray.serve")


class TidePolicy:
    """Serve policy object: holds the validated config; all state travels in Serve's policy_state."""

    def __init__(self, **kwargs: Any):
        self.cfg = PolicyConfig(**kwargs)

    def _export(self, ctx: "AutoscalingContext", d: Any) -> None:
        """The decision to the stats hub: `/metrics` (tide_replicas_desired, tide_autoscaler_decisions_total) and
        the status pages read it there, the one pipeline for Tide's numbers."""
        try:
            import ray

            if not ray.is_initialized():
                return
            from serving.observability.hub import publish_decision

            publish_decision(ctx.deployment_name, d.replicas, ctx.current_num_replicas, d.action.value, d.reason)
        except Exception:  # reporting must never break scaling
            logger.debug("tide autoscaler decision export failed", exc_info=True)

    def __call__(self, ctx: "AutoscalingContext") -> tuple[int, dict[str, Any]]:
        stats = stats_from_metrics(ctx.aggregated_metrics, list(ctx.running_replicas))
        reported = sum(s.running + s.waiting for s in stats if s is not None)
        # Requests Serve counts that no engine reports yet: queued at handles or in transit to a replica.
        outside = max(float(ctx.total_num_requests or 0) - reported, 0.0)
        now = ctx.current_time if ctx.current_time is not None else time.time()
        # Decide against the current *target*: replicas still starting count, or a hold would undo a scale-up.
        target = ctx.target_num_replicas
        d, state = step(self.cfg, ctx.policy_state, now, target, ctx.current_num_replicas, summarize(stats, outside))
        if d.action != Action.HOLD:
            logger.info("tide autoscaler %s/%s: %s %d -> %d (%s; %d running)", ctx.app_name, ctx.deployment_name,
                        d.action.value, target, d.replicas, d.reason, ctx.current_num_replicas)
        self._export(ctx, d)
        return d.replicas, state
