"""The engine's own stats, kept fresh in the replica through vLLM's stat-logger hook.

vLLM's Prometheus gauges can lag (seen at 0 during a burst on the CPU build), and they live in each replica
process where nobody scrapes them; the stat logger sees every engine step, so this records the steps into
`serving.observability.metrics.EngineCounters`. Feeds the autoscaler (queue depth) and the stats hub. Imported only in replicas.
"""

from __future__ import annotations

import time

from vllm.v1.metrics.loggers import StatLoggerBase

from .metrics import EngineCounters


class EngineStats(StatLoggerBase):
    """Latest waiting/running counts and KV-cache usage of one engine, plus counters and latency histograms."""

    def __init__(self, vllm_config=None, engine_index: int = 0):
        self.counters = EngineCounters()

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        c = self.counters
        if scheduler_stats is not None:
            c.on_scheduler(scheduler_stats.num_waiting_reqs, scheduler_stats.num_running_reqs,
                           scheduler_stats.kv_cache_usage)
        if iteration_stats is not None:
            it = iteration_stats
            c.on_iteration(time.time(), it.num_prompt_tokens, it.num_generation_tokens, it.num_preempted_reqs,
                           it.time_to_first_tokens_iter, it.inter_token_latencies_iter,
                           [(str(f.finish_reason), f.e2e_latency, f.queued_time) for f in it.finished_requests])

    def log_engine_initialized(self):
        pass

    def snapshot(self, unfinished: int) -> dict[str, float]:
        """The autoscaler's view, clipped by the frontend's exact count of unfinished requests (0 once
        everything finished, even if the engine's last report predates the final step)."""
        s = self.counters.snapshot(time.time(), unfinished)
        return {"tide_waiting": float(s["waiting"]), "tide_running": float(s["running"]),
                "tide_kv_cache_usage": float(s["kv_cache_usage"]), "tide_finish_rate": float(s["finish_rate"])}
