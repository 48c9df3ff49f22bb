"""Pipeline stages on other nodes, for CPU replicas (vLLM's multiprocessing executor across nodes).

vLLM's CPU platform cannot use its Ray executor, so a replica whose placement group Ray spread over several
nodes runs vLLM's multi-node `mp` executor: the replica's engine is node rank 0, and on every other node of the
group a `StageHost` actor (in that node's first bundle) runs the headless workers of its ranks, exactly what
`vllm serve --headless --node-rank N` runs (vllm/entrypoints/cli/serve.py, `run_headless`). The torch.distributed
rendezvous is the replica's node address and a free port. A stage host belongs to its replica: it dies with it
(Ray kills actors whose owner died), its workers die with it (vLLM's death pipe), and the reaper covers the rest.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, get_current_placement_group, placement_group_table
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..loopback import free_port
from ..placement import bind_setting, node_groups

logger = logging.getLogger("tide.stages")


class StageHost:
    """The headless vLLM workers of one node of a replica's group."""

    def __init__(self, env: dict[str, str], cpu_bind_mode: str, rank: int, local_workers: int) -> None:
        os.environ.update(env)
        # From the first core: stages that share one machine with the replica (as in the tests) get other cores.
        bind = bind_setting(cpu_bind_mode, env, sorted(os.sched_getaffinity(0)), rank, local_workers, from_end=False)
        if bind is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
        os.environ["VLLM_HOST_IP"] = ray.util.get_node_ip_address()  # what its message queues advertise
        from .reaper import start_reaper

        self.reaper = start_reaper()
        self.error: str | None = None
        self.executor: Any = None

    def start(self, engine_kwargs: dict[str, Any]) -> None:
        """Start the workers in a thread: they wait for the replica's engine to join the rendezvous."""

        def run() -> None:
            try:
                from vllm.engine.arg_utils import AsyncEngineArgs
                from vllm.v1.executor.multiproc_executor import MultiprocExecutor

                config = AsyncEngineArgs(**engine_kwargs).create_engine_config(headless=True)
                self.executor = MultiprocExecutor(config, monitor_workers=False)
                self.executor.start_worker_monitor(inline=True)  # returns when a worker dies
                self.error = "a pipeline stage worker exited"
            except BaseException as e:  # reported by alive(), which fails the replica's health check
                self.error = f"pipeline stage failed: {type(e).__name__}: {e}"
                logger.exception("pipeline stage failed")

        threading.Thread(target=run, name="tide-stage", daemon=True).start()

    def alive(self) -> str | None:
        """None while the workers run; what went wrong otherwise."""
        return self.error

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()


def spread_stages(world: int, model_env: dict[str, str], cpu_bind_mode: str, replica_rank: int
                  ) -> tuple[dict[str, Any], list[tuple[Any, str]]]:
    """When the current replica's group spans nodes: the engine arguments that make this replica node rank 0,
    and the stage hosts started on the other nodes (not yet given their engine arguments)."""
    pg = get_current_placement_group()
    if pg is None:
        return {}, []
    table = placement_group_table(pg)["bundles_to_node_id"]
    groups = node_groups([table[i] for i in range(world)])
    if len(groups) == 1:
        return {}, []
    ip = ray.util.get_node_ip_address()
    os.environ["VLLM_HOST_IP"] = ip  # the address vLLM's message queues advertise to the other nodes
    local = len(groups[0][1])
    hosts = []
    for _, ranks in groups[1:]:
        hosts.append(_stage_actor(pg, ranks[0]).remote(dict(model_env), cpu_bind_mode, replica_rank, local))
    ips = ray.get([h.node_ip.remote() for h in hosts])
    args = {"nnodes": len(groups), "node_rank": 0, "master_addr": ip, "master_port": free_port()}
    logger.info("pipeline stages on %d nodes: %s", len(groups), [(n[:8], r) for n, r in groups])
    return args, list(zip(hosts, ips))


def _stage_actor(pg: PlacementGroup, bundle: int) -> Any:
    return ray.remote(num_cpus=0)(StageHost).options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=bundle),
        max_restarts=0)


def start_stages(hosts: list[tuple[Any, str]], engine_kwargs: dict[str, Any]) -> None:
    """Give each stage host the engine arguments with its own node rank (the replica's engine is rank 0)."""
    ray.get([h.start.remote({**engine_kwargs, "node_rank": rank}) for rank, (h, _ip) in enumerate(hosts, start=1)])


async def stage_problem(hosts: list[tuple[Any, str]]) -> str | None:
    """What went wrong on another node's stage (None when all run); a dead actor counts."""
    for h, ip in hosts:
        try:
            err = await h.alive.remote()
        except Exception as e:
            return f"pipeline stage on {ip} is gone ({type(e).__name__})"
        if err:
            return f"{err} (on {ip})"
    return None


def stop_stages(hosts: list[tuple[Any, str]]) -> None:
    for h, _ip in hosts:
        try:
            ray.kill(h)
        except Exception:
            logger.debug("stage kill failed", exc_info=True)
