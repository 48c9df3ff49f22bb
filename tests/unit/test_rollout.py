"""What a `tide deploy` restarts: a deployment's version follows what its replicas are built from, so an unchanged
model keeps its engines, a resized or re-governed one too, and a changed engine rolls with surge (new first)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from serving import deployments, rollout
from serving.app import build_app
from serving.config import TideConfig
from serving.replica import llm
from serving.replica.embeddings import EmbeddingServer

BASE = {"server": {"port": 8000}, "models": [
    {"name": "tiny", "model": "/m", "engine_args": {"max_num_seqs": 8}, "replicas": {"min": 1, "max": 2}},
    {"name": "emb", "model": "/e", "task": "embed"}]}


def cfg(**model) -> TideConfig:
    data = {"server": dict(BASE["server"]), "models": [dict(BASE["models"][0], **model), dict(BASE["models"][1])]}
    return TideConfig.model_validate(data)


def versions(c: TideConfig) -> dict[str, str]:
    return {m.name: deployments.model_deployment(m).version for m in c.models}


def ingress_version(c: TideConfig) -> str:
    return build_app(c)._bound_deployment.version


def test_the_same_config_gives_the_same_versions():
    assert versions(cfg()) == versions(cfg()) and ingress_version(cfg()) == ingress_version(cfg())
    assert all(re.fullmatch(r"[0-9a-f]{16}", v) for v in versions(cfg()).values())


def test_an_engine_change_rolls_that_model_only():
    changed = versions(cfg(engine_args={"max_num_seqs": 16}))
    assert changed["tiny"] != versions(cfg())["tiny"] and changed["emb"] == versions(cfg())["emb"]
    for field in ({"env": {"X": "1"}}, {"model": "/other"}, {"stream_batch_ms": 5.0}):
        assert versions(cfg(**field))["tiny"] != versions(cfg())["tiny"], field


def test_resizing_or_regoverning_a_model_keeps_its_engines():
    same = versions(cfg())["tiny"]
    for field in ({"replicas": {"min": 0, "max": 4}}, {"admission": {"max_queued": 3}}, {"cold_start_timeout_s": 9},
                  {"max_held_requests": 3}, {"autoscaling": {"target_utilization": 0.8}},
                  {"replicas": {"min": 1, "max": 2, "max_surge_percent": 0}}):
        assert versions(cfg(**field))["tiny"] == same, field


def test_the_ingress_rolls_when_what_it_governs_changes():
    assert ingress_version(cfg(admission={"max_queued": 3})) != ingress_version(cfg())
    bigger = TideConfig.model_validate({**BASE, "models": [*BASE["models"], {"name": "t2", "model": "/t"}]})
    assert ingress_version(bigger) != ingress_version(cfg())


def test_new_replicas_start_before_old_ones_stop():
    assert deployments.model_deployment(cfg().models[0])._deployment_config.max_surge_percent == 25
    off = cfg(replicas={"min": 1, "max": 2, "max_surge_percent": 0})
    assert deployments.model_deployment(off.models[0])._deployment_config.max_surge_percent == 0
    proxy = TideConfig.model_validate({**BASE, "server": {"port": 8000, "direct_ingress": False}})
    assert build_app(proxy)._bound_deployment._deployment_config.max_surge_percent == 100


def test_tide_source_is_part_of_the_version(monkeypatch):
    before = rollout.code_version({"a": 1})
    monkeypatch.setattr(rollout, "source_digest", lambda: "another tide")
    assert rollout.code_version({"a": 1}) != before


def test_replica_code_never_reads_a_fleet_field():
    """A replica keeps its copy of the config across deploys that change only fleet fields, so reading one there
    would see a stale value."""
    fields = [k for k, v in deployments.FLEET_FIELDS.items() if v is True]
    sub = sorted(deployments.FLEET_FIELDS["replicas"])
    pattern = re.compile(rf"cfg\.({'|'.join(fields)})\b|cfg\.replicas\.({'|'.join(sub)})\b")
    replica_dir = Path(llm.__file__).parent
    sources = {"LLMServer": inspect.getsource(llm.LLMServer), "EmbeddingServer": inspect.getsource(EmbeddingServer),
               **{p.name: p.read_text() for p in replica_dir.glob("*.py")}}
    assert {name: pattern.findall(src) for name, src in sources.items() if pattern.search(src)} == {}
