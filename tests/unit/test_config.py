from pathlib import Path

import pytest

from serving.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_example_config_loads_and_resolves_model_path():
    cfg = load_config(ROOT / "examples" / "tiny.yaml")
    assert cfg.server.host == "127.0.0.1"
    assert cfg.models[0].name == "tiny"
    assert cfg.models[0].model == str(ROOT / ".models" / "tiny-llama")
    assert cfg.models[0].engine_args["max_model_len"] == 1024


def test_hf_ids_are_left_alone():
    cfg = parse_config({"models": [{"name": "m", "model": "meta-llama/Llama-3.1-8B-Instruct"}]}, base_dir=Path("/x"))
    assert cfg.models[0].model == "meta-llama/Llama-3.1-8B-Instruct"
    assert cfg.server.port == 8000 and cfg.models[0].replicas.initial_replicas == 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("models: []\n", "models: List should have at least 1 item"),
        ("server: {port: 70000}\nmodels: [{name: a, model: x}]\n", "server.port: Input should be less than or equal"),
        ("models: [{name: a, model: x, replicas: {min: 3, max: 2}}]\n", "models.0.replicas: max (2) must be >= min (3)"),
        ("models: [{name: a, model: x, replicas: {min: 1, max: 2, initial: 5}}]\n", "initial (5) must lie within"),
        ("models: [{name: a, model: x, typo: 1}]\n", "models.0.typo: unknown field"),
        ("models: [{name: a, model: x}, {name: a, model: y}]\n", "model name 'a' appears twice"),
        ("models: [{name: 'bad name!', model: x}]\n", "name 'bad name!' must be"),
        ("models: [{name: a, model: x, engine_args: {model: y}}]\n", "engine_args must not set `model`"),
        ("models: [{model: x}]\n", "models.0.name: Field required"),
        ("models: [{name: a, model: x, replicas: {max: 2}, autoscaling: {target_utilization: 0.3}}]\n",
         "autoscaling: downscale_utilization (0.5) must be < target_utilization (0.3)"),
        ("models: [{name: a, model: x, autoscaling: {max_replicas: 3}}]\n", "set min/max under `replicas`"),
        ("models: [{name: a, model: x, autoscaling: {bogus: 1}}]\n", "models.0.autoscaling.bogus: unknown field"),
        ("- just a list\n", "the top level must be a mapping"),
        ("models: [{name: a\n", "not valid YAML"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value)
    assert expected in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_autoscaling_bounds_come_from_replicas():
    cfg = parse_config({"models": [{"name": "m", "model": "x", "replicas": {"min": 0, "max": 3},
                                    "autoscaling": {"replica_capacity": 8}}]})
    p = cfg.models[0].policy_config()
    assert (p.min_replicas, p.max_replicas, p.replica_capacity) == (0, 3, 8)


def test_model_names_that_map_to_one_serve_deployment_are_rejected():
    with pytest.raises(ConfigError, match="same Serve deployment 'model-a_b'"):
        parse_config({"models": [{"name": "a:b", "model": "x"}, {"name": "a_b", "model": "y"}]})


def test_serves_own_policy_is_refused_behind_the_haproxy_front():
    """Behind HAProxy requests bypass Serve's handles, so Serve's policy would never see load (measured:
    bench_autoscale kept it at one replica through a 24-client burst)."""
    model = {"name": "m", "model": "x", "replicas": {"min": 1, "max": 2}, "autoscaling_policy": "serve"}
    with pytest.raises(ConfigError, match=r"models\.m\.autoscaling_policy: `serve` counts requests at Serve's "):
        parse_config({"models": [model]})
    assert parse_config({"server": {"front": "ingress"}, "models": [model]}).models[0].autoscaling_policy == "serve"
    assert parse_config({"models": [{**model, "replicas": {"min": 2, "max": 2}}]})  # fixed size: nothing to see


def test_per_key_limits_with_more_than_one_ingress_need_the_haproxy_front():
    """With `front: ingress` each ingress keeps its own buckets: two would let a key through at twice its limit.
    Behind HAProxy every front sends such keys to one leader ingress, so the limits hold."""
    key = {"name": "k", "sha256": "a" * 64, "requests_per_minute": 2}
    with pytest.raises(ConfigError, match=r"server\.ingress_replicas: 2 with per-key limits \(k\) and "
                                          r"server\.front: ingress"):
        parse_config({"server": {"front": "ingress", "ingress_replicas": 2, "auth": {"keys": [key]}},
                      "models": [{"name": "m", "model": "x"}]})
    with pytest.raises(ConfigError, match=r"per-key limits \(\$TIDE_API_KEYS\)"):
        parse_config({"server": {"front": "ingress", "ingress_replicas": 3, "auth": {"env_tokens_per_minute": 100}},
                      "models": [{"name": "m", "model": "x"}]})
    unlimited = {**key, "requests_per_minute": None}
    assert parse_config({"server": {"front": "ingress", "ingress_replicas": 2, "auth": {"keys": [unlimited]}},
                         "models": [{"name": "m", "model": "x"}]}).server.ingress_replicas == 2
    assert parse_config({"server": {"ingress_replicas": 2, "auth": {"keys": [key]}},
                         "models": [{"name": "m", "model": "x"}]}).server.ingress_replicas == 2
    assert parse_config({"server": {"auth": {"keys": [key]}}, "models": [{"name": "m", "model": "x"}]})
