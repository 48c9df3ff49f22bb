"""Build the Serve application from a TideConfig: one deployment per model behind one ingress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application

from .gate.auth import resolve_env
from .config import ConfigError, IngressModel, TideConfig
from .config import APP_NAME  # noqa: F401 - re-exported (serving.app.APP_NAME)
from .deployments import model_deployment
from .ingress import Ingress
from .placement import fit_problem
from .rollout import versioned

def node_shapes() -> list[dict[str, float]] | None:
    """What nodes can hold a replica: the live ones, plus the node types Ray's autoscaler may add (the head's
    bootstrap config, on `ray up` clusters). None when a type is sized only at launch (`resources: {}`)."""
    import ray

    if not ray.is_initialized():
        return None
    shapes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    boot = Path.home() / "ray_bootstrap_config.yaml"
    if boot.is_file():
        try:
            types = (yaml.safe_load(boot.read_text()) or {}).get("available_node_types") or {}
        except (OSError, yaml.YAMLError):
            return None
        for node_type in types.values():
            if not node_type.get("resources"):
                return None
            shapes.append(dict(node_type["resources"]))
    return shapes


def check_placements(cfg: TideConfig, nodes: list[dict[str, float]] | None) -> None:
    """A model whose replica no node can hold is refused here, naming the field, instead of pending forever."""
    problems = [p for i, m in enumerate(cfg.models)
                if (p := fit_problem(m.placement(), nodes or [], f"models.{i}.engine_args ({m.name})"))]
    if problems:
        raise ConfigError("\n".join(["invalid config for this cluster", *(f"  {p}" for p in problems)]))


def build_app(cfg: TideConfig) -> Application:
    check_placements(cfg, node_shapes())
    models = {m.name: model_deployment(m).bind(m.model_dump()) for m in cfg.models}
    options: dict[str, Any] = {
        "num_replicas": cfg.server.ingress_replicas,
        "max_ongoing_requests": 100_000,  # the ingress only forwards; backpressure lives at the models
        "ray_actor_options": {"num_cpus": cfg.server.ingress_num_cpus},
    }
    if cfg.server.ingress_malloc_arena_max is not None:
        # glibc reads it at process start, so it must be in the replica's environment, not set later.
        arenas = str(cfg.server.ingress_malloc_arena_max)
        options["ray_actor_options"]["runtime_env"] = {"env_vars": {"MALLOC_ARENA_MAX": arenas}}
    if cfg.server.direct_ingress and cfg.server.front != "haproxy":
        options["max_replicas_per_node"] = 1  # direct ingress binds the public port inside the replica
    if cfg.server.front == "haproxy":
        options["graceful_shutdown_timeout_s"] = 40.0  # its HAProxy drains (ingress.FRONT_GRACE_S) before it goes
    if cfg.server.front == "haproxy" or not cfg.server.direct_ingress:
        # an update starts the new ingress (and its front) beside the old one; with `front: ingress` and direct
        # ingress a replica owns the public port, so `tide deploy` restarts the app instead (cluster/cli.py)
        options["max_surge_percent"] = 100
    cold = {m.name: IngressModel.of(m).model_dump() for m in cfg.models}
    # Keys from $TIDE_API_KEYS are hashed here, where `tide serve` runs: only digests travel through Ray.
    server = cfg.server.model_copy(update={"auth": resolve_env(cfg.server.auth)}).model_dump()
    return versioned(Ingress.options(**options), server, cold).bind(models, server, cold)
