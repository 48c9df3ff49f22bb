"""One real local Ray + Serve app + vLLM engine on the tiny model, started once for the whole session,
exactly as `tide serve` starts it (same config loader, same launcher)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "vllm"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tide_config():
    from serving.config import load_config

    if not (ROOT / ".models" / "tiny-llama" / "config.json").exists():
        pytest.fail("tiny model missing: run `make model` (make test builds it)")
    from serving.tools.tiny_lora import build_tiny_lora

    for seed, name in ((1, "a"), (2, "b")):  # LoRA adapters of `tiny` (cached: same seed, same files)
        build_tiny_lora(ROOT / ".models" / "tiny-llama", ROOT / ".models" / f"tiny-lora-{name}", seed=seed)
    cfg = load_config(Path(__file__).with_name("tide-test.yaml"))
    from serving.launcher import free_port

    cfg.server.port = free_port()
    cfg.server.front = os.environ.get("TIDE_TEST_FRONT", cfg.server.front)  # run the suite on either front
    if cfg.server.front == "haproxy":
        cfg.server.ingress_port = free_port()
    return cfg


@pytest.fixture(scope="session")
def tide_url(tide_config):
    from serving.launcher import deploy, shutdown, start_ray

    owns = start_ray(tide_config, num_cpus=2)
    try:
        url = deploy(tide_config, timeout_s=600, say=lambda m: print(m, flush=True))
        yield url
    finally:  # bounds long enough for Ray to disconnect: pytest dies with Ray's driver otherwise (launcher.py)
        shutdown(owns, serve_timeout_s=120, ray_timeout_s=60)


@pytest.fixture(scope="session")
def client(tide_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{tide_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model_name(tide_config) -> str:
    return tide_config.models[0].name


def running_replicas(model: str) -> int:
    from ray import serve

    from serving.app import APP_NAME
    from serving.config import deployment_name

    dep = serve.status().applications[APP_NAME].deployments[deployment_name(model)]
    return dep.replica_states.get("RUNNING", 0)
