"""Tensor/pipeline parallel placement (serving.placement): pure, no Ray, no vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.config import ConfigError, parse_config
from serving.placement import (
    Placement, bind_setting, cpu_bind, fit_problem, node_groups, parallel_problems, parallel_sizes, plan_placement,
    shape_problems,
)


def test_one_worker_is_todays_replica_without_a_placement_group():
    p = plan_placement({}, 0.5, 0.0)
    assert p.world == 1 and p.executor is None and p.bundles == []
    assert p.deployment_options() == {"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.0}}
    assert p.engine_args() == {}
    g = plan_placement({"tensor_parallel_size": 1}, 1.0, 1.0)
    assert g.deployment_options()["ray_actor_options"]["num_gpus"] == 1.0 and g.gpus == 1.0


def test_cpu_tensor_parallel_is_one_bundle_per_worker_strictly_packed_with_mp():
    p = plan_placement({"tensor_parallel_size": 2}, 0.5, 0.0, worker_num_cpus=1.0)
    assert (p.tp, p.pp, p.world, p.executor) == (2, 1, 2, "mp")
    assert p.bundles == [{"CPU": 1.5}, {"CPU": 1.0}]  # the replica actor rides in bundle 0
    opts = p.deployment_options()
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    assert opts["placement_group_bundles"] == [{"CPU": 1.5}, {"CPU": 1.0}]
    assert opts["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert p.engine_args() == {"distributed_executor_backend": "mp"}
    assert p.gpus == 0


def test_pipeline_stages_pack_by_default_and_the_strategy_is_configurable():
    assert plan_placement({"pipeline_parallel_size": 2}, 1, 0).strategy == "PACK"
    assert plan_placement({"pipeline_parallel_size": 2}, 1, 0, strategy="STRICT_SPREAD").strategy == "STRICT_SPREAD"
    assert plan_placement({"tensor_parallel_size": 2}, 1, 0, strategy="SPREAD").strategy == "SPREAD"


def test_gpu_replicas_use_vllms_ray_executor_with_one_gpu_bundle_per_worker():
    p = plan_placement({"tensor_parallel_size": 4}, 1.0, 4.0, worker_num_cpus=2.0)
    assert p.executor == "ray"
    assert p.bundles == [{"CPU": 3.0, "GPU": 1.0}] + [{"CPU": 2.0, "GPU": 1.0}] * 3
    assert p.actor_num_gpus == 0.0 and p.gpus == 4.0  # the workers (Ray actors) hold the GPUs, not the replica
    assert p.strategy == "STRICT_PACK"
    pp = plan_placement({"tensor_parallel_size": 8, "pipeline_parallel_size": 2}, 1.0, 16.0)
    assert pp.world == 16 and len(pp.bundles) == 16 and pp.strategy == "PACK" and pp.gpus == 16


def test_gpu_mp_executor_gives_the_replica_every_gpu_in_one_bundle():
    p = plan_placement({"tensor_parallel_size": 2, "distributed_executor_backend": "mp"}, 1.0, 2.0)
    assert p.bundles == [{"CPU": 3.0, "GPU": 2.0}] and p.actor_num_gpus == 2.0 and p.strategy == "STRICT_PACK"
    assert p.gpus == 2.0  # the actor's GPUs are the bundle's, counted once
    assert p.deployment_options()["ray_actor_options"]["num_gpus"] == 2.0


@pytest.mark.parametrize("args,gpus,needle", [
    ({"tensor_parallel_size": 0}, 0, "tensor_parallel_size must be a whole number >= 1"),
    ({"tensor_parallel_size": "2"}, 0, "tensor_parallel_size must be a whole number"),
    ({"pipeline_parallel_size": True}, 0, "pipeline_parallel_size must be a whole number"),
    ({"data_parallel_size": 2}, 0, "raise replicas.max"),
    ({"tensor_parallel_size": 2, "distributed_executor_backend": "uni"}, 0, "'uni' is not one Tide places"),
    ({"tensor_parallel_size": 2, "distributed_executor_backend": "ray"}, 0, "`ray` needs GPU replicas"),
    ({"tensor_parallel_size": 2}, 1, "set it to 2 (or 0 on CPU nodes), not 1"),
    ({"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, 2, "set it to 4"),
    ({"pipeline_parallel_size": 2, "distributed_executor_backend": "mp"}, 2, "need vLLM's Ray executor"),
])
def test_parallel_problems_name_the_field(args, gpus, needle):
    problems = parallel_problems(args, gpus)
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("args,gpus", [
    ({}, 0), ({"tensor_parallel_size": 2}, 0), ({"tensor_parallel_size": 2}, 2),
    ({"pipeline_parallel_size": 2, "tensor_parallel_size": 4}, 8), ({"data_parallel_size": 1}, 0),
    ({"tensor_parallel_size": 2, "distributed_executor_backend": "mp"}, 2),
    ({"distributed_executor_backend": "uni"}, 0),  # one worker: vLLM's own business
    ({"tensor_parallel_size": None}, 0),
])
def test_parallel_settings_that_are_fine(args, gpus):
    assert parallel_problems(args, gpus) == []


def test_parallel_sizes_default_to_one():
    assert parallel_sizes({}) == (1, 1)
    assert parallel_sizes({"tensor_parallel_size": 4, "pipeline_parallel_size": 2}) == (4, 2)


def test_shape_problems_follow_vllms_head_and_layer_rules():
    llama70 = {"num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80}
    assert shape_problems(8, 1, llama70) == []
    assert shape_problems(16, 1, llama70) == []  # 16 % 8 KV heads == 0: KV heads are replicated
    assert shape_problems(4, 4, llama70) == []
    assert "does not divide the model's 64 attention heads" in shape_problems(3, 1, llama70)[0]
    tiny = {"num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2}
    assert shape_problems(2, 2, tiny) == []
    assert any("3 stages for the model's 2 layers" in p for p in shape_problems(1, 3, tiny))
    kv6 = {"num_attention_heads": 12, "num_key_value_heads": 6}
    assert any("6 KV heads" in p for p in shape_problems(4, 1, kv6))
    assert shape_problems(2, 1, {"text_config": {"num_attention_heads": 3}})  # multimodal configs nest it
    assert shape_problems(2, 1, {}) == []  # unknown shape: vLLM decides at engine start


def test_fit_problem_names_the_field_and_the_largest_node():
    cpu2 = [{"CPU": 2.0}]
    tp2 = plan_placement({"tensor_parallel_size": 2}, 0.5, 0.0)
    assert fit_problem(tp2, [{"CPU": 3.0}], "models.0.engine_args") is None
    msg = fit_problem(tp2, cpu2, "models.0.engine_args (tiny)")
    assert msg.startswith("models.0.engine_args (tiny): tensor_parallel_size 2 x pipeline_parallel_size 1")
    assert "2.5 CPUs" in msg and "the largest has 2 CPUs and 0 GPUs" in msg
    gpu8 = [{"CPU": 8, "GPU": 0}, {"CPU": 192, "GPU": 8}]
    assert fit_problem(plan_placement({"tensor_parallel_size": 8}, 1, 8), gpu8, "f") is None
    msg = fit_problem(plan_placement({"tensor_parallel_size": 16}, 1, 16), gpu8, "f")
    assert "16 GPUs" in msg and "the largest has 192 CPUs and 8 GPUs" in msg
    # PACK may split the group: each worker must fit somewhere
    assert fit_problem(plan_placement({"tensor_parallel_size": 8, "pipeline_parallel_size": 2}, 1, 16), gpu8,
                       "f") is None
    spread = plan_placement({"pipeline_parallel_size": 3}, 0.5, 0, strategy="STRICT_SPREAD")
    assert "STRICT_SPREAD" in fit_problem(spread, [{"CPU": 4}, {"CPU": 4}], "f")
    assert fit_problem(plan_placement({}, 1, 1), [{"CPU": 4}], "f") is not None  # a GPU replica, no GPU node
    assert fit_problem(tp2, [], "f") is None  # nothing known about the cluster: no refusal


def test_node_groups_split_ranks_by_node_in_blocks():
    assert node_groups(["a", "a"]) == [("a", [0, 1])]
    assert node_groups(["a", "b"]) == [("a", [0]), ("b", [1])]
    assert node_groups(["a", "a", "b", "b"]) == [("a", [0, 1]), ("b", [2, 3])]
    with pytest.raises(ValueError, match="not contiguous"):
        node_groups(["a", "b", "a", "b"])
    with pytest.raises(ValueError, match="unequal"):
        node_groups(["a", "a", "b"])


def test_cpu_bind_takes_one_core_per_local_worker():
    assert cpu_bind([0, 1], 0, 1, from_end=True) == "1"
    assert cpu_bind([0, 1], 1, 1, from_end=True) == "0"
    assert cpu_bind([0, 1], 0, 2, from_end=True) == "1|0"
    assert cpu_bind([0, 1], 0, 1, from_end=False) == "0"
    assert cpu_bind([0, 1, 2, 3], 2, 2, from_end=True) == "1|0"
    assert cpu_bind([0, 1], 4, 3, from_end=False) == "0|1|0"  # more workers than cores wraps


def test_bind_setting_respects_the_models_choice():
    assert bind_setting("rank", {}, [0, 1], 0, 2) == "1|0"
    assert bind_setting("rank", {}, [0, 1], 0, 1, from_end=False) == "0"
    assert bind_setting("auto", {}, [0, 1], 0, 2) is None
    assert bind_setting("rank", {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}, [0, 1], 0, 2) is None
    assert bind_setting("0-1", {}, [0, 1], 0, 2) == "0-1"


def test_config_load_refuses_bad_parallel_settings_naming_the_field(tmp_path: Path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_attention_heads": 4, "num_key_value_heads": 4,
                                                   "num_hidden_layers": 2}))

    def load(engine_args, replicas=None):
        return parse_config({"models": [{"name": "t", "model": "./m", "engine_args": engine_args,
                                         "replicas": replicas or {}}]}, base_dir=tmp_path)

    assert load({"tensor_parallel_size": 2}).models[0].placement().world == 2
    with pytest.raises(ConfigError, match=r"models\.0\.engine_args\.tensor_parallel_size: 3 does not divide"):
        load({"tensor_parallel_size": 3})
    with pytest.raises(ConfigError, match=r"models\.0\.engine_args\.pipeline_parallel_size: 4 stages"):
        load({"pipeline_parallel_size": 4})
    with pytest.raises(ConfigError, match=r"replicas\.num_gpus"):
        load({"tensor_parallel_size": 2}, {"num_gpus": 1})
    with pytest.raises(ConfigError, match=r"placement_strategy"):
        load({"tensor_parallel_size": 2}, {"placement_strategy": "BEST"})


def test_placement_is_part_of_the_engine_identity():
    from serving.deployments import engine_identity

    def cfg(**replicas):
        return parse_config({"models": [{"name": "t", "model": "x", "engine_args": {"tensor_parallel_size": 2},
                                         "replicas": replicas}]}).models[0]

    assert engine_identity(cfg()) != engine_identity(cfg(placement_strategy="PACK"))
    assert engine_identity(cfg()) != engine_identity(cfg(worker_num_cpus=2))
    assert engine_identity(cfg()) == engine_identity(cfg(max=3))


def test_placement_is_frozen():
    with pytest.raises(Exception):
        Placement().tp = 2  # type: ignore[misc]


def test_custom_resources_go_to_the_replica_or_to_every_worker_bundle():
    one = plan_placement({}, 1.0, 0.0, resources={"tide_pool": 1.0})
    assert one.deployment_options()["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0,
                                                             "resources": {"tide_pool": 1.0}}
    tp2 = plan_placement({"tensor_parallel_size": 2}, 1.0, 2.0, resources={"accelerator_type:L4": 0.001})
    bundles = tp2.deployment_options()["placement_group_bundles"]
    assert [b["accelerator_type:L4"] for b in bundles] == [0.001, 0.001]
    assert "resources" not in tp2.deployment_options()["ray_actor_options"]  # the actor rides in bundle 0
    assert plan_placement({}, 1.0, 0.0).deployment_options()["ray_actor_options"] == {"num_cpus": 1.0,
                                                                                      "num_gpus": 0.0}


@pytest.mark.parametrize("name", ["CPU", "GPU", "memory", " "])
def test_cpus_and_gpus_are_not_custom_resources(name):
    from pydantic import ValidationError

    from serving.config import ReplicaConfig

    with pytest.raises(ValidationError, match="is not a custom resource"):
        ReplicaConfig(resources={name: 1})

