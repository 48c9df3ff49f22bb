"""The Serve deployment of a model (driver side): its replica class, resources, autoscaling, router and
version. Replicas never run this module, so it may read the fleet fields replicas must not."""

from __future__ import annotations

from typing import Any

from ray import serve

from .config import ModelConfig, deployment_name
from .replica.llm import LLMServer
from .rollout import versioned
from .router import request_router_options


def model_deployment(cfg: ModelConfig):
    """The Serve deployment for one model, with its replica resources and (when min < max) autoscaling."""
    r = cfg.replicas
    options: dict[str, Any] = {
        "name": deployment_name(cfg.name),
        "max_ongoing_requests": r.max_ongoing_requests,
        "health_check_period_s": r.health_check_period_s,
        "health_check_timeout_s": r.health_check_timeout_s,
        "graceful_shutdown_timeout_s": r.graceful_shutdown_timeout_s,
        **cfg.placement().deployment_options(),
    }
    if r.min == r.max:
        options["num_replicas"] = r.max
    elif cfg.autoscaling_policy == "serve":
        options["autoscaling_config"] = {"min_replicas": r.min, "max_replicas": r.max,
                                         "initial_replicas": r.initial_replicas, **cfg.serve_autoscaling}
    else:
        policy = cfg.policy_config()
        options["autoscaling_config"] = {
            "min_replicas": r.min,
            "max_replicas": r.max,
            "initial_replicas": r.initial_replicas,
            # Tide's policy owns hysteresis and delays; Serve's own would stack on top of them.
            "upscale_delay_s": 0,
            "downscale_delay_s": 0,
            "downscale_to_zero_delay_s": 0,
            "look_back_period_s": 2.0,
            "metrics_interval_s": 1.0,
            "policy": {"policy_function": "autoscale.serve_policy:TidePolicy",
                       "policy_kwargs": policy.model_dump()},
        }
    options.update(request_router_options(cfg))
    options["max_surge_percent"] = r.max_surge_percent
    if cfg.task == "embed":
        from .replica.embeddings import EmbeddingServer

        deployment = serve.deployment(EmbeddingServer).options(**options)
    else:
        deployment = serve.deployment(LLMServer).options(**options)
    return versioned(deployment, engine_identity(cfg))


# What only the driver, the ingress and the autoscaler read: changing these resizes or re-governs a model without
# restarting its engines (the replica's own copy of them goes stale, so replica code must not read them).
FLEET_FIELDS = {"replicas": {"min", "max", "initial", "max_surge_percent"}, "autoscaling": True,
                "autoscaling_policy": True, "serve_autoscaling": True, "admission": True,
                "cold_start_timeout_s": True, "max_held_requests": True, "router": True, "routing": True}


def engine_identity(cfg: ModelConfig) -> dict[str, Any]:
    """What a model replica is built from: equal identities keep their replicas across a deploy."""
    return cfg.model_dump(exclude={k: v for k, v in FLEET_FIELDS.items() if k in ModelConfig.model_fields})




__all__ = ["FLEET_FIELDS", "engine_identity", "model_deployment"]
