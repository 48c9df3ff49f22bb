"""The engine's own scheduler stats, kept fresh for the autoscaler (vLLM's stat-logger hook).

vLLM's Prometheus gauges can lag (seen at 0 during a burst on the CPU build); the scheduler stats reach
the frontend with every engine step, so this records them as they arrive. Imported only in replicas.
"""

from __future__ import annotations

from vllm.v1.metrics.loggers import StatLoggerBase


class EngineStats(StatLoggerBase):
    """Latest waiting/running counts and KV-cache usage of one engine."""

    def __init__(self, vllm_config=None, engine_index: int = 0):
        self.waiting = 0
        self.running = 0
        self.kv_cache_usage = 0.0

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if scheduler_stats is not None:
            self.waiting = scheduler_stats.num_waiting_reqs
            self.running = scheduler_stats.num_running_reqs
            self.kv_cache_usage = scheduler_stats.kv_cache_usage

    def log_engine_initialized(self):
        pass

    def snapshot(self, unfinished: int) -> dict[str, float]:
        """Stats clipped by the frontend's exact count of unfinished requests (0 once everything finished,
        even if the engine's last report predates the final step)."""
        waiting = min(self.waiting, unfinished)
        running = min(self.running, max(unfinished - waiting, 0))
        if unfinished > waiting + running:  # admitted by the frontend, not yet seen by the scheduler
            waiting = unfinished - running
        return {"tide_waiting": float(waiting), "tide_running": float(running),
                "tide_kv_cache_usage": float(self.kv_cache_usage if unfinished else 0.0)}
