"""Where a model replica's vLLM workers run: tensor and pipeline parallelism as Ray placement (pure).

A replica is one vLLM engine; with `tensor_parallel_size` x `pipeline_parallel_size` = N > 1 it has N workers,
and Ray reserves one bundle per worker, all at once, as the replica's placement group (the replica actor rides in
bundle 0, as in Ray Serve LLM). Which executor drives the workers:
- GPU replicas (`replicas.num_gpus > 0`): vLLM's Ray executor (`ray`) starts one Ray actor per worker inside the
  group, on whichever nodes Ray put the bundles; `mp` keeps every worker a child process on the replica's node.
- CPU replicas: `mp` only (vLLM's CPU platform has no Ray device, so its Ray executor refuses to start).
  Pipeline stages on other nodes are started there by the replica (serving/replica/stages.py), as
  `vllm serve --headless` does.
Tide's replicas are its data parallelism, so `data_parallel_size` stays 1: raise `replicas.max` instead.
Nothing here imports Ray or vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

STRATEGIES = ("auto", "STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD")
EXECUTORS = ("mp", "ray")


@dataclass(frozen=True)
class Placement:
    """What Serve reserves for one replica and how its engine is told to use it."""

    tp: int = 1
    pp: int = 1
    executor: str | None = None  # None: one worker, vLLM's default (in-process)
    bundles: list[dict[str, float]] = field(default_factory=list)  # empty: no placement group
    strategy: str | None = None
    actor_num_cpus: float = 1.0
    actor_num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources (replicas.resources)

    @property
    def world(self) -> int:
        return self.tp * self.pp

    @property
    def gpus(self) -> float:
        """GPUs one replica holds, all of its workers together (what a scale-up asks Ray for at once)."""
        if self.bundles:  # the replica actor's own GPUs are inside bundle 0
            return sum(b.get("GPU", 0.0) for b in self.bundles)
        return self.actor_num_gpus

    def deployment_options(self) -> dict[str, Any]:
        """The Serve deployment options that reserve this placement."""
        opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": self.actor_num_cpus,
                                                      "num_gpus": self.actor_num_gpus}}
        if self.resources and not self.bundles:
            opts["ray_actor_options"]["resources"] = dict(self.resources)
        if self.bundles:  # every worker's bundle asks for the custom resources: all land on such nodes
            opts["placement_group_bundles"] = [{**b, **self.resources} for b in self.bundles]
            opts["placement_group_strategy"] = self.strategy
        return opts

    def engine_args(self) -> dict[str, Any]:
        """Engine arguments the placement decides (merged under the model's own engine_args)."""
        return {"distributed_executor_backend": self.executor} if self.executor else {}


def _size(engine_args: Mapping[str, Any], key: str) -> int:
    value = engine_args.get(key, 1)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"engine_args.{key} must be a whole number >= 1, got {value!r}")
    return value


def parallel_sizes(engine_args: Mapping[str, Any]) -> tuple[int, int]:
    """(tensor_parallel_size, pipeline_parallel_size) of a model's engine args."""
    return _size(engine_args, "tensor_parallel_size"), _size(engine_args, "pipeline_parallel_size")


def parallel_problems(engine_args: Mapping[str, Any], num_gpus: float) -> list[str]:
    """What a model's parallel settings get wrong, each naming its field (checked at config load)."""
    try:
        tp, pp = parallel_sizes(engine_args)
    except ValueError as e:
        return [str(e)]
    problems = []
    if engine_args.get("data_parallel_size") not in (None, 1):
        problems.append("engine_args.data_parallel_size: Tide's replicas are its data parallelism (each with its "
                        "own share of the router); leave it at 1 and raise replicas.max instead")
    backend = engine_args.get("distributed_executor_backend")
    world = tp * pp
    if backend is not None and world > 1 and backend not in EXECUTORS:
        problems.append(f"engine_args.distributed_executor_backend: {backend!r} is not one Tide places; use "
                        f"{' or '.join(EXECUTORS)}")
    if world > 1 and backend == "ray" and num_gpus == 0:
        problems.append("engine_args.distributed_executor_backend: `ray` needs GPU replicas (vLLM's CPU platform "
                        "has no Ray device); use `mp` or set replicas.num_gpus")
    if world > 1 and num_gpus not in (0, world):
        problems.append(f"replicas.num_gpus: a replica of tensor_parallel_size {tp} x pipeline_parallel_size {pp} "
                        f"holds {world} GPUs (one per vLLM worker), so set it to {world} (or 0 on CPU nodes), "
                        f"not {num_gpus:g}")
    if world > 1 and num_gpus and backend == "mp" and pp > 1:
        problems.append("engine_args.distributed_executor_backend: GPU pipeline stages across nodes need vLLM's "
                        "Ray executor; leave it unset (`ray`) or use pipeline_parallel_size 1")
    return problems


def plan_placement(engine_args: Mapping[str, Any], num_cpus: float, num_gpus: float,
                   worker_num_cpus: float = 1.0, strategy: str = "auto",
                   resources: Mapping[str, float] | None = None) -> Placement:
    """The placement of one replica (call after `parallel_problems` found nothing)."""
    placed = _plan(engine_args, num_cpus, num_gpus, worker_num_cpus, strategy)
    return replace(placed, resources=dict(resources)) if resources else placed


def _plan(engine_args: Mapping[str, Any], num_cpus: float, num_gpus: float, worker_num_cpus: float,
          strategy: str) -> Placement:
    tp, pp = parallel_sizes(engine_args)
    world = tp * pp
    if world == 1:
        return Placement(actor_num_cpus=num_cpus, actor_num_gpus=num_gpus)
    gpu = num_gpus > 0
    executor = engine_args.get("distributed_executor_backend") or ("ray" if gpu else "mp")
    if gpu and executor == "mp":  # every worker a child of the replica: it must see all the GPUs itself
        bundle = {"CPU": num_cpus + world * worker_num_cpus, "GPU": float(world)}
        return Placement(tp, pp, executor, [bundle], "STRICT_PACK", num_cpus, float(world))
    worker = {"CPU": worker_num_cpus, **({"GPU": 1.0} if gpu else {})}
    bundles = [dict(worker) for _ in range(world)]
    bundles[0]["CPU"] = bundles[0]["CPU"] + num_cpus  # the replica actor lives in bundle 0
    if strategy == "auto":
        strategy = "STRICT_PACK" if pp == 1 else "PACK"
    return Placement(tp, pp, executor, bundles, strategy, num_cpus, 0.0)


def shape_problems(tp: int, pp: int, hf_config: Mapping[str, Any]) -> list[str]:
    """What the model's own shape (its config.json) rules out: vLLM's checks, before an engine is started."""
    cfg = hf_config.get("text_config") or hf_config
    heads, kv, layers = (cfg.get(k) for k in ("num_attention_heads", "num_key_value_heads", "num_hidden_layers"))
    problems = []
    if tp > 1 and isinstance(heads, int) and heads % tp:
        problems.append(f"engine_args.tensor_parallel_size: {tp} does not divide the model's {heads} attention "
                        f"heads")
    if tp > 1 and isinstance(kv, int) and kv % tp and tp % kv:
        problems.append(f"engine_args.tensor_parallel_size: {tp} and the model's {kv} KV heads must divide one "
                        f"another")
    if pp > 1 and isinstance(layers, int) and pp > layers:
        problems.append(f"engine_args.pipeline_parallel_size: {pp} stages for the model's {layers} layers")
    return problems


def _describe(node: Mapping[str, float]) -> str:
    return f"{node.get('CPU', 0):g} CPUs and {node.get('GPU', 0):g} GPUs"


def fit_problem(placement: Placement, nodes: Sequence[Mapping[str, float]], field_name: str) -> str | None:
    """Why no node (live, or a type the cluster autoscaler may add) can hold the placement; None if one can.

    Checked per bundle, and for STRICT_PACK for the whole group on one node (it may not split)."""
    if not nodes:
        return None
    if placement.bundles:
        groups: Iterable[Mapping[str, float]]
        if placement.strategy == "STRICT_PACK":
            groups = [_sum(placement.bundles)]
        else:
            groups = placement.bundles
    else:
        groups = [{"CPU": placement.actor_num_cpus, "GPU": placement.actor_num_gpus}]
    for need in groups:
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in need.items() if v) for node in nodes):
            largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
            what = "its workers on one node need" if placement.strategy == "STRICT_PACK" else "one worker needs"
            return (f"{field_name}: tensor_parallel_size {placement.tp} x pipeline_parallel_size {placement.pp}: "
                    f"{what} {_describe(need)}, more than any node has (the largest has {_describe(largest)})")
    if placement.strategy == "STRICT_SPREAD" and len(placement.bundles) > len(nodes):
        return (f"{field_name}: STRICT_SPREAD puts each of the {len(placement.bundles)} workers on its own node, "
                f"and the cluster has {len(nodes)}")
    return None


def _sum(bundles: Sequence[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + v
    return total


def node_groups(bundle_nodes: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Split a group's workers (bundle i = worker rank i) by the node Ray put them on, in rank order.

    vLLM's multi-node executor numbers nodes by rank blocks of equal size, so each node must hold one
    contiguous block, all blocks the same size; anything else raises with what Ray chose."""
    groups: list[tuple[str, list[int]]] = []
    for rank, node in enumerate(bundle_nodes):
        if groups and groups[-1][0] == node:
            groups[-1][1].append(rank)
        elif any(n == node for n, _ in groups):
            raise ValueError(f"workers of one node are not contiguous ranks: {list(bundle_nodes)}; use "
                             f"placement_strategy STRICT_SPREAD or STRICT_PACK")
        else:
            groups.append((node, [rank]))
    if len({len(r) for _, r in groups}) > 1:
        raise ValueError(f"nodes hold unequal numbers of workers ({[len(r) for _, r in groups]}); vLLM needs the "
                         f"same number on each: use placement_strategy STRICT_SPREAD or STRICT_PACK")
    return groups


def cpu_bind(cores: Sequence[int], first: int, count: int, from_end: bool) -> str:
    """vLLM's VLLM_CPU_OMP_THREADS_BIND for `count` local workers starting at slot `first`: one core each,
    taken from the end of the core list (the replica's node, where core 0 hosts Ray) or from the start (a
    stage's node, so stages sharing one machine, as in the tests, do not share cores)."""
    order = list(cores)[::-1] if from_end else list(cores)
    return "|".join(str(order[(first + i) % len(order)]) for i in range(count))


def bind_setting(cpu_bind_mode: str, env: Mapping[str, str], cores: Sequence[int], rank: int, local_workers: int,
                 from_end: bool = True) -> str | None:
    """The VLLM_CPU_OMP_THREADS_BIND a replica's (or a stage's) node gets for the model's `cpu_bind`; None leaves
    vLLM's own choice (`auto`, or the model's env sets it)."""
    if "VLLM_CPU_OMP_THREADS_BIND" in env or cpu_bind_mode == "auto":
        return None
    if cpu_bind_mode != "rank":
        return cpu_bind_mode
    return cpu_bind(cores, rank * local_workers, local_workers, from_end)
