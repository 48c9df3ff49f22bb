"""Serve's custom autoscaling hook, calling Tide's pure controller step (autoscale/controller.py). Thin: read
the context, decide, log, export, return.

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
from .policy import Action, PolicyConfig, ReplicaStats, summarize

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

logger = logging.getLogger("ray.serve")

class _Metrics:
    """Prometheus metrics through Ray's own pipeline (scraped from each node's metrics export port, like
    every Ray/Serve metric). Created lazily: only inside a Ray worker (the Serve controller)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        keys = ("model",)
        self.desired = Gauge("tide_autoscaler_desired_replicas", "Replicas Tide's policy asks for.", tag_keys=keys)
        self.running = Gauge("tide_autoscaler_running_replicas", "Replicas serving.", tag_keys=keys)
        self.waiting = Gauge("tide_engine_waiting_requests", "Requests waiting in the engines' queues.", tag_keys=keys)
        self.active = Gauge("tide_engine_running_requests", "Requests in the engines' batches.", tag_keys=keys)
        self.decisions = Counter("tide_autoscaler_decisions_total", "Scaling decisions that changed the target.",
                                 tag_keys=("model", "action"))

    def record(self, model: str, desired: int, running: int, waiting: float, active: float, action: str) -> None:
        tags = {"model": model}
        self.desired.set(desired, tags)
        self.running.set(running, tags)
        self.waiting.set(waiting, tags)
        self.active.set(active, tags)
        if action != Action.HOLD.value:
            self.decisions.inc(1, {"model": model, "action": action})


class TidePolicy:
    """Serve policy object: holds the validated config; all state travels in Serve's policy_state."""

    def __init__(self, **kwargs: Any):
        self.cfg = PolicyConfig(**kwargs)
        self._metrics: _Metrics | None = None

    def _export(self, ctx: "AutoscalingContext", d: Any, stats: list[ReplicaStats | None]) -> None:
        try:
            import ray

            if not ray.is_initialized():
                return
            if self._metrics is None:
                self._metrics = _Metrics()
            live = [s for s in stats if s is not None]
            self._metrics.record(ctx.deployment_name, d.replicas, ctx.current_num_replicas,
                                 sum(s.waiting for s in live), sum(s.running for s in live), d.action.value)
            from serving.hub import publish_decision  # the live status pages and /metrics read it there

            publish_decision(ctx.deployment_name, d.replicas, ctx.current_num_replicas, d.action.value, d.reason)
        except Exception:  # metrics must never break scaling
            logger.debug("tide autoscaler metrics export failed", exc_info=True)

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
        self._export(ctx, d, stats)
        return d.replicas, state
