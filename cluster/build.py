"""`tide build`: turn a Tide models file into a Ray Serve config file, or a KubeRay RayService manifest.

Pure functions from a validated TideConfig to plain dicts/YAML text; the CLI writes the files. The output
is checked against Ray's own `ServeDeploySchema` in the tests, so it is what `serve deploy` accepts.
"""

from __future__ import annotations

from typing import Any

import yaml

from serving.config import TideConfig
from serving.config import APP_NAME
from serving.ray_env import serve_env

RAY_VERSION = "2.60.0"
IMPORT_PATH = "serving.serve_app:app_builder"  # the application builder Serve imports on the cluster


def proxy_port(cfg: TideConfig) -> int:
    """Serve's proxy port. With direct ingress the ingress replicas own a range of ports (serve_env's), and with
    `front: haproxy` HAProxy owns `server.port`, so the proxy moves past both; without direct ingress the proxy
    serves `server.port` itself."""
    if not cfg.server.direct_ingress:
        return cfg.server.port
    port = cfg.server.ingress_port_range()[1] + 1
    return port + 1 if port == cfg.server.port else port


def app_args(cfg: TideConfig) -> dict[str, Any]:
    """The Tide config as the builder's `args`: only what the file set (defaults stay the code's)."""
    return cfg.model_dump(mode="json", exclude_unset=True)


def serve_config(cfg: TideConfig) -> dict[str, Any]:
    """A Ray Serve config (ServeDeploySchema) that deploys the same app `tide serve` deploys."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.server.host, "port": proxy_port(cfg),
                         "request_timeout_s": cfg.server.request_timeout_s},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                          "args": app_args(cfg)}],
    }


def local_model_paths(cfg: TideConfig) -> list[str]:
    """Models given as local folders: they must exist at the same path on every node of the cluster."""
    return [m.model for m in cfg.models if m.model.startswith("/")]


def env_lines(cfg: TideConfig) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(serve_env(cfg).items()))


def serve_config_yaml(cfg: TideConfig, source: str) -> str:
    """The Serve config file's text, headed by what must be true of the cluster for it to behave like `tide`."""
    head = [
        f"# Ray Serve config built by `tide build {source}`. Deploy with `serve deploy` / `serve run`.",
        "# Start every node's Ray with Tide's Serve settings (they are read when Ray starts, not from this file):",
        f"#   {env_lines(cfg)}",
        "# Without them: Serve's default (not throughput-optimized) request path, autoscaling metrics pushed every",
        "# 10 s instead of 1 s (slower scale-up), and no direct ingress: the endpoint is then the Serve proxy on",
        f"# port {proxy_port(cfg)} (one more hop, about half the tokens/s measured on 2 cores).",
    ]
    for m in cfg.models:
        p = m.placement()
        if p.bundles:
            head.append(f"# {m.name}: tensor_parallel_size {p.tp} x pipeline_parallel_size {p.pp} -> each replica "
                        f"reserves a placement group of {len(p.bundles)} bundle(s) {p.bundles}, {p.strategy}, "
                        f"vLLM executor `{p.executor}`")
    local = local_model_paths(cfg)
    if local:
        head.append("# Local model folders (must exist on every node): " + ", ".join(local))
    return "\n".join(head) + "\n" + yaml.safe_dump(serve_config(cfg), sort_keys=False, width=110)


def gpus_per_pod(cfg: TideConfig) -> int:
    """GPUs of one KubeRay GPU worker pod: the largest group that must sit on one node (a STRICT_PACK tensor
    parallel replica), else one (pipeline stages and one-GPU replicas spread over pods)."""
    need = 1.0
    for m in cfg.models:
        p = m.placement()
        if p.strategy == "STRICT_PACK":
            need = max(need, p.gpus)
        else:
            need = max(need, *(b.get("GPU", 0.0) for b in p.bundles or [{}]), p.actor_num_gpus)
    return int(-(-need // 1))


def kuberay_service(cfg: TideConfig, image: str, name: str = "tide", gpu_max_workers: int = 4,
                    idle_timeout_s: int = 600) -> dict[str, Any]:
    """A KubeRay RayService running the app: a CPU head (Serve controller, ingress) and an autoscaled GPU
    worker group starting from zero. Direct ingress is off (KubeRay's Serve service targets the proxy)."""
    kcfg = cfg.model_copy(deep=True)
    kcfg.server.direct_ingress = False
    kcfg.server.host = "0.0.0.0"  # inside the pod; the Kubernetes Service decides what is exposed
    env = [{"name": k, "value": v} for k, v in sorted(serve_env(kcfg).items())]
    serve = serve_config(kcfg)  # (assigned fields count as set, so the args carry them)
    gpus = gpus_per_pod(cfg)

    def container(cname: str, resources: dict[str, Any], ports: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": cname, "image": image, "env": env, "resources": resources, "ports": ports,
                "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}}

    head_ports = [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                  {"containerPort": 10001, "name": "client"}, {"containerPort": proxy_port(kcfg), "name": "serve"}]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve, sort_keys=False, width=110),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {"idleTimeoutSeconds": idle_timeout_s, "upscalingMode": "Default"},
                "headGroupSpec": {
                    "rayStartParams": {"num-gpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"spec": {"containers": [container(
                        "ray-head", {"requests": {"cpu": "4", "memory": "16Gi"},
                                     "limits": {"cpu": "4", "memory": "16Gi"}}, head_ports)]}},
                },
                "workerGroupSpecs": [{
                    "groupName": "gpu",
                    "replicas": 0, "minReplicas": 0, "maxReplicas": gpu_max_workers,
                    "rayStartParams": {},
                    "template": {"spec": {
                        "containers": [container("ray-worker", {
                            "requests": {"cpu": str(8 * gpus), "memory": f"{32 * gpus}Gi", "nvidia.com/gpu": str(gpus)},
                            "limits": {"cpu": str(8 * gpus), "memory": f"{32 * gpus}Gi", "nvidia.com/gpu": str(gpus)},
                        }, [])],
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    }},
                }],
            },
        },
    }


class _ManifestDumper(yaml.SafeDumper):
    """Block style for multi-line strings (the embedded serveConfigV2 stays readable) and no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _str)


def kuberay_yaml(cfg: TideConfig, source: str, image: str, name: str = "tide") -> str:
    head = (f"# KubeRay RayService built by `tide build {source} --kuberay --image {image}`.\n"
            "# The image needs tide-serve[gpu] installed (examples/kuberay/Dockerfile). Apply: kubectl apply -f THIS\n")
    return head + yaml.dump(kuberay_service(cfg, image, name), Dumper=_ManifestDumper, sort_keys=False, width=110)
