"""The stats hub: one small named Ray actor where model replicas, the autoscaler and the ingress leave their
latest numbers, so `/tide/status`, `/metrics`, the status page and `tide status` all read the same data.

Thin glue: it stores what it is sent and ages it out; summaries are computed by `serving.observability.metrics` and
`serving.observability.prometheus`. Created on first use (`get_if_exists`), so `tide serve`, `serve run` of a built
config and KubeRay all get one without a deploy step. Publishing never raises: numbers are best effort.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

logger = logging.getLogger("tide.hub")

HUB_NAME = "tide-stats"
HUB_NAMESPACE = "tide"
STALE_S = 10.0  # a replica silent this long is gone (dead or scaled away)


@ray.remote(num_cpus=0, max_restarts=-1)
class StatsHub:
    def __init__(self) -> None:
        self.replicas: dict[tuple[str, str], dict[str, Any]] = {}
        self.decisions: dict[str, dict[str, Any]] = {}
        self.decision_counts: dict[str, dict[str, int]] = {}
        self.ingress: dict[str, dict[tuple[str, str], int]] = {}
        self.ingresses: dict[str, dict[str, Any]] = {}  # ingress replica -> {"http": its own address, "time"}

    def push_replica(self, model: str, replica: str, snapshot: dict[str, Any]) -> None:
        self.replicas[(model, replica)] = snapshot

    def push_decision(self, deployment: str, desired: int, running: int, action: str, reason: str) -> None:
        self.decisions[deployment] = {"desired": desired, "running": running, "action": action, "reason": reason,
                                      "time": time.time()}
        if action != "hold":
            counts = self.decision_counts.setdefault(deployment, {})
            counts[action] = counts.get(action, 0) + 1

    def push_ingress(self, ingress: str, rejected: dict[tuple[str, str], int]) -> None:
        self.ingress[ingress] = rejected

    def push_ingress_address(self, ingress: str, address: str) -> None:
        """Where an ingress replica's own server listens (the fronts send it what they cannot decide)."""
        self.ingresses[ingress] = {"http": address, "time": time.time()}

    def get(self) -> dict[str, Any]:
        now = time.time()
        for key in [k for k, s in self.replicas.items() if now - s["time"] > STALE_S]:
            del self.replicas[key]
        for name in [k for k, s in self.ingresses.items() if now - s["time"] > STALE_S]:
            del self.ingresses[name]
        rejected: dict[tuple[str, str], int] = {}
        for counts in self.ingress.values():
            for k, n in counts.items():
                rejected[k] = rejected.get(k, 0) + n
        return {"replicas": dict(self.replicas), "decisions": dict(self.decisions),
                "decision_counts": {k: dict(v) for k, v in self.decision_counts.items()}, "rejected": rejected,
                "ingresses": dict(self.ingresses)}


_hub: Any = None


def on_head() -> dict[str, Any]:
    """Actor options that place a cluster-wide helper actor on the head node, as Serve pins its controller.

    Why: whoever asks first creates these actors, often a model replica on a GPU node; an actor left there keeps
    that node busy, so Ray's autoscaler never releases it after the model scales to zero."""
    # Ray's head marker (Ray Train pins its state actor so). "DEFAULT": not in the placement group of the replica
    # that asks (a TP/PP replica's children are captured by it; the group's bundles have no head marker, and the
    # actor would die with the group).
    return {"resources": {"node:__internal_head__": 0.001}, "scheduling_strategy": "DEFAULT"}


def get_hub() -> Any:
    """The hub's handle, creating the actor if nobody has yet. Blocking: call it off the event loop."""
    global _hub
    if _hub is None:
        _hub = StatsHub.options(name=HUB_NAME, namespace=HUB_NAMESPACE, lifetime="detached",
                                get_if_exists=True, **on_head()).remote()
    return _hub


def publish_decision(deployment: str, desired: int, running: int, action: str, reason: str) -> None:
    try:
        get_hub().push_decision.remote(deployment, desired, running, action, reason)
    except Exception:
        logger.debug("stats hub unreachable", exc_info=True)


def kill_hub() -> None:
    global _hub
    try:
        ray.kill(ray.get_actor(HUB_NAME, namespace=HUB_NAMESPACE))
    except Exception:
        pass
    _hub = None
