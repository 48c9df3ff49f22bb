"""`tide build`: the Serve config and the KubeRay manifest pass Ray's own Serve schema and carry the same
Tide config back to the application builder."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from cluster.build import IMPORT_PATH, kuberay_service, kuberay_yaml, proxy_port, serve_config, serve_config_yaml
from serving.config import load_config, parse_config
from serving.launcher import serve_env

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "examples" / "tiny.yaml", ROOT / "tests" / "integration" / "tide-test.yaml",
           ROOT / "examples" / "kuberay" / "models.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_serve_config_passes_serves_schema_and_round_trips(path):
    cfg = load_config(path)
    built = yaml.safe_load(serve_config_yaml(cfg, str(path)))
    schema = ServeDeploySchema.model_validate(built)
    app = schema.applications[0]
    assert app.name == "tide" and app.route_prefix == "/" and app.import_path == IMPORT_PATH
    assert parse_config(app.args) == cfg  # the builder gets exactly this config back


def test_proxy_port_moves_out_of_the_direct_ingress_range():
    cfg = load_config(ROOT / "examples" / "tiny.yaml")
    env = serve_env(cfg)
    low, high = int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]), int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
    assert not low <= serve_config(cfg)["http_options"]["port"] <= high
    cfg.server.direct_ingress = False
    assert proxy_port(cfg) == cfg.server.port == serve_config(cfg)["http_options"]["port"]


def test_header_says_what_the_cluster_needs_and_names_local_paths():
    cfg = load_config(ROOT / "examples" / "tiny.yaml")
    text = serve_config_yaml(cfg, "examples/tiny.yaml")
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in text and "RAY_SERVE_ENABLE_DIRECT_INGRESS=1" in text
    assert f"Local model folders (must exist on every node): {ROOT}/.models/tiny-llama" in text


def test_the_import_path_builds_the_app_from_the_args():
    import importlib

    from ray.serve import Application

    from serving.config import ConfigError

    module, attr = IMPORT_PATH.split(":")
    builder = getattr(importlib.import_module(module), attr)
    cfg = load_config(ROOT / "tests" / "integration" / "tide-test.yaml")
    assert isinstance(builder(serve_config(cfg)["applications"][0]["args"]), Application)  # binding needs no Ray
    with pytest.raises(ConfigError, match="models.0.replicas: max \\(2\\) must be >= min \\(3\\)"):
        builder({"models": [{"name": "a", "model": "x", "replicas": {"min": 3, "max": 2}}]})


def test_ingress_replica_starts_with_bounded_malloc_arenas():
    from serving.app import build_app

    cfg = load_config(ROOT / "examples" / "tiny.yaml")
    opts = build_app(cfg)._bound_deployment.ray_actor_options
    assert opts["runtime_env"] == {"env_vars": {"MALLOC_ARENA_MAX": "2"}}
    cfg.server.ingress_malloc_arena_max = 4
    assert build_app(cfg)._bound_deployment.ray_actor_options["runtime_env"]["env_vars"]["MALLOC_ARENA_MAX"] == "4"
    cfg.server.ingress_malloc_arena_max = None
    assert "runtime_env" not in build_app(cfg)._bound_deployment.ray_actor_options


def test_kuberay_manifest_embeds_a_valid_serve_config():
    cfg = load_config(ROOT / "examples" / "kuberay" / "models.yaml")
    svc = kuberay_service(cfg, "img:1")
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    serve = ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))
    args = parse_config(serve.applications[0].args)
    assert args.server.direct_ingress is False and args.models == cfg.models
    cluster = svc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "RAY_SERVE_THROUGHPUT_OPTIMIZED", "value": "1"} in head["env"]
    assert {p["name"]: p["containerPort"] for p in head["ports"]}["serve"] == serve.http_options.port
    gpu = cluster["workerGroupSpecs"][0]
    assert gpu["minReplicas"] == 0 and gpu["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "1"


def test_shipped_kuberay_manifest_is_what_tide_build_makes():
    shipped = (ROOT / "examples" / "kuberay" / "rayservice.yaml").read_text()
    cfg = load_config(ROOT / "examples" / "kuberay" / "models.yaml")
    assert shipped == kuberay_yaml(cfg, "examples/kuberay/models.yaml", "tide-serve:0.1.0-gpu"), \
        "regenerate: tide build examples/kuberay/models.yaml --kuberay -o examples/kuberay/rayservice.yaml"
    svc = yaml.safe_load(shipped)
    ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))


def test_tide_build_cli_writes_the_file_and_rejects_bad_configs(tmp_path):
    out = tmp_path / "serve.yaml"
    r = subprocess.run([sys.executable, "-m", "serving.cli", "build", "examples/tiny.yaml", "-o", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - {name: a, model: x, replicas: {min: 3, max: 2}}\n")
    r = subprocess.run([sys.executable, "-m", "serving.cli", "build", str(bad)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "models.0.replicas: max (2) must be >= min (3)" in r.stderr


def test_a_tensor_parallel_model_sizes_the_kuberay_gpu_pod_and_is_named_in_the_serve_config():
    from serving.config import parse_config

    cfg = parse_config({"models": [
        {"name": "big", "model": "meta-llama/Llama-3.1-70B-Instruct",
         "engine_args": {"tensor_parallel_size": 4}, "replicas": {"num_gpus": 4}},
        {"name": "small", "model": "x", "replicas": {"num_gpus": 1}}]})
    pod = kuberay_service(cfg, "img:1")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    res = pod["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "4" and res["requests"]["cpu"] == "32"
    text = serve_config_yaml(cfg, "m.yaml")
    assert "# big: tensor_parallel_size 4 x pipeline_parallel_size 1 -> each replica reserves a placement group " \
           "of 4 bundle(s)" in text and "STRICT_PACK, vLLM executor `ray`" in text
    assert "# small:" not in text


def test_model_deployment_reserves_the_placement_group():
    from serving.config import parse_config
    from serving.deployments import model_deployment

    m = parse_config({"models": [{"name": "big", "model": "x", "engine_args": {"tensor_parallel_size": 2},
                                  "replicas": {"num_cpus": 0.5, "worker_num_cpus": 1}}]}).models[0]
    dep = model_deployment(m)
    assert dep._replica_config.placement_group_bundles == [{"CPU": 1.5}, {"CPU": 1.0}]
    assert dep._replica_config.placement_group_strategy == "STRICT_PACK"
    assert dep.ray_actor_options["num_cpus"] == 0.5
    one = parse_config({"models": [{"name": "one", "model": "x"}]}).models[0]
    assert model_deployment(one)._replica_config.placement_group_bundles is None
