"""Assemble the fleet's live status (`/tide/status`, the status page, `tide status`) and `/metrics` from the
Serve controller's replica counts and the stats hub's contents. Pure: plain data in, plain data out."""

from __future__ import annotations

from typing import Any, Mapping

from .metrics import model_state, model_status
from .prometheus import render_prometheus


def _deployment(model: str) -> str:
    from ..config import deployment_name

    return deployment_name(model)


def fleet_status(models: list[str], counts: Mapping[str, tuple[int, int]], hub: Mapping[str, Any],
                 held: Mapping[str, int], expected_start_s: Mapping[str, float], now: float,
                 admitted: Mapping[str, tuple[int, int]] | None = None,
                 shapes: Mapping[str, tuple[int, float]] | None = None) -> dict[str, Any]:
    """Per model: state, desired/running/total replicas, held requests, queue depth, tokens/s, TTFT p50, from
    `admitted` (model -> (in flight, limit) at this ingress) the bounded queue's fill, and from `shapes`
    (model -> (vLLM workers, GPUs) per replica) what a replica holds: a parallel replica counts as its group."""
    replicas = hub.get("replicas", {})
    decisions = hub.get("decisions", {})
    out: dict[str, Any] = {}
    for name in models:
        running, total = counts.get(name, (0, 0))
        snaps = [s for (m, _), s in replicas.items() if m == name]
        decision = decisions.get(_deployment(name))
        out[name] = {
            "state": model_state(running, total),
            "desired": decision["desired"] if decision else total,
            "running": running,
            "replicas": total,
            "held": held.get(name, 0),
            **({"in_flight": admitted[name][0], "admit_limit": admitted[name][1]}
               if admitted and name in admitted else {}),
            "expected_start_s": round(expected_start_s.get(name, 0.0), 1),
            **({"workers_per_replica": shapes[name][0], "gpus_per_replica": shapes[name][1],
                "gpus": running * shapes[name][1]} if shapes and name in shapes else {}),
            **model_status(snaps),
            "last_decision": None if not decision else {k: decision[k] for k in ("action", "reason", "time")},
        }
    return {"time": now, "models": out}


def metrics_text(status: Mapping[str, Any], hub: Mapping[str, Any]) -> bytes:
    """Prometheus exposition of the same data, vLLM's names for engine metrics."""
    models = status["models"]
    by_deployment = {_deployment(n): n for n in models}
    replicas = [(m, r, s) for (m, r), s in sorted(hub.get("replicas", {}).items()) if m in models]
    decisions = {by_deployment[d]: c for d, c in hub.get("decision_counts", {}).items() if d in by_deployment}
    return render_prometheus(replicas, models, decisions, hub.get("rejected", {}))
