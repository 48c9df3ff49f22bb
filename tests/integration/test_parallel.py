"""Models bigger than one device: tensor- and pipeline-parallel replicas on two real Ray nodes on this machine.

A head (3 CPUs) and a second node (1 CPU), each its own raylet, started like cluster/local.yaml's nodes and
stopped by PID. One app serves `tiny-tp` (tensor_parallel_size 2, one node, STRICT_PACK) and `tiny-pp`
(pipeline_parallel_size 2, STRICT_SPREAD: one stage per node, the second started there by the replica). Both are
the tiny model, and at temperature 0 they must return the token ids of the session cluster's one-worker `tiny`.
"""

from __future__ import annotations

import signal
import time

import httpx
import psutil
import pytest
import yaml

from serving.proctree import descendants

from .headnode import controller_log_lines, ray_head, ray_node, tide, tiny_config, wait_healthy

pytestmark = pytest.mark.integration

PROMPTS = ["Hello world, this is", "The capital of"]


def _parallel_config(port: int) -> dict:
    data = tiny_config(port)
    base = data["models"][0]
    base["replicas"].update({"num_cpus": 0.5, "worker_num_cpus": 0.5, "health_check_period_s": 1})
    base["engine_args"].pop("max_num_seqs", None)
    tp = yaml.safe_load(yaml.safe_dump(base))
    tp["name"] = "tiny-tp"
    tp["engine_args"]["tensor_parallel_size"] = 2
    pp = yaml.safe_load(yaml.safe_dump(base))
    pp["name"] = "tiny-pp"
    pp["engine_args"]["pipeline_parallel_size"] = 2
    pp["replicas"]["placement_strategy"] = "STRICT_SPREAD"
    data["models"] = [tp, pp]
    return data


@pytest.fixture(scope="module")
def cluster():
    from serving.launcher import free_port

    port = free_port()
    with ray_head(_parallel_config(port), num_cpus=3) as head, ray_node(head, num_cpus=1) as node_pid:
        r = tide("deploy", str(head.models), "--address", head.address, "--timeout", "420", timeout=480)
        assert r.returncode == 0, r.stderr[-4000:]
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        yield url, head, node_pid


def _ids(url: str, model: str, prompt: str) -> list[int]:
    r = httpx.post(f"{url}/v1/completions", timeout=240, json={
        "model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True,
        "return_token_ids": True})
    assert r.status_code == 200, r.text
    ids = r.json()["choices"][0]["token_ids"]
    assert len(ids) == 12
    return ids


def _titled(p: psutil.Process, title: str) -> bool:
    """Whether `p` carries the process title `title` (vLLM's setproctitle; a vanished process does not)."""
    try:
        return title in " ".join(p.cmdline()) or p.name().startswith(title)
    except psutil.Error:
        return False


def _procs(pids: list[int], title: str) -> list[psutil.Process]:
    return [p for pid in pids for p in descendants(pid) if _titled(p, title)]


def _where(title: str) -> list[str]:
    """Every process on the machine whose title starts with `title`, with its ancestors (for failure messages)."""
    out = []
    for p in psutil.process_iter():
        if _titled(p, title):
            try:
                out.append(f"{p.pid}:{p.name()} <- {' <- '.join(f'{a.pid}:{a.name()[:24]}' for a in p.parents())}")
            except psutil.Error:
                pass
    return out


def _serve_log(head, deployment: str) -> list[str]:
    """The Serve controller's lines about `deployment`'s replicas (for failure messages: a restart shows here)."""
    lines = [ln[:300] for ln in controller_log_lines(head.tmp / "ray")
             if f"deployment='{deployment}'" in ln and "Replica(" in ln]
    return lines[-12:]


def _wait_procs(pids: list[int], title: str, n: int, timeout_s: float) -> list[psutil.Process]:
    """The processes titled `title` under `pids`, waited for (up to `timeout_s`) until there are `n` of them:
    a replica Serve is replacing has fewer for a while."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = _procs(pids, title)
        if len(found) == n or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _diagnose(head, node_pid: int, model: str) -> tuple:
    """What a failure message needs to tell where a group's processes went: every VLLM process's ancestry,
    Serve's replica events, the replica's lines about its stages, the second node's log."""
    stages = [ln[:300] for f in sorted((head.tmp / "ray").glob(f"session_*/logs/serve/replica_tide_model-{model}_*"))
              for ln in f.read_text(errors="replace").splitlines() if "stage" in ln or "Error" in ln][-12:]
    node_log = (head.tmp / "node.log").read_text(errors="replace").splitlines()[-15:]
    return (head.pid, node_pid, _where("VLLM::"), _serve_log(head, f"model-{model}"), stages, node_log)


@pytest.mark.xfail(strict=False, reason="clean clones and CI sometimes found a group's workers missing under the test "
                   "raylets (not root-caused: the walk no longer uses psutil's children(), see serving/proctree.py; "
                   "the failure message prints where every VLLM process is)")
def test_tensor_and_pipeline_parallel_answer_the_one_worker_engines_token_ids(cluster, tide_url):
    url, head, node_pid = cluster
    for prompt in PROMPTS:
        want = _ids(tide_url, "tiny", prompt)  # the session cluster's one-worker engine, same weights
        assert _ids(url, "tiny-tp", prompt) == want
        assert _ids(url, "tiny-pp", prompt) == want
    # Each pipeline stage runs on its own node: one PP worker under each raylet. Waited for, as below: CI once
    # found the second node's worker missing after tiny-pp had answered (the message tells where it went).
    for pid in (head.pid, node_pid):
        found = _wait_procs([pid], "VLLM::Worker_PP", 1, 90)
        assert len(found) == 1, (pid, found, *_diagnose(head, node_pid, "tiny-pp"))
    # STRICT_PACK: both TP workers on one node (the head). Waited for: a clean-clone run once found none at this
    # point although tiny-tp had just answered.
    found = _wait_procs([head.pid], "VLLM::Worker_TP", 2, 90)
    assert len(found) == 2, _diagnose(head, node_pid, "tiny-tp")


def test_status_counts_a_parallel_replica_as_its_whole_group(cluster):
    url, _head, _node = cluster
    models = httpx.get(f"{url}/tide/status", timeout=30).json()["models"]
    assert models["tiny-tp"]["workers_per_replica"] == 2
    assert models["tiny-pp"]["workers_per_replica"] == 2
    assert models["tiny-tp"]["gpus"] == 0 and models["tiny-tp"]["running"] == 1


@pytest.mark.xfail(strict=False, reason="clean clones and CI sometimes found a group's workers missing under the test "
                   "raylets (not root-caused: the walk no longer uses psutil's children(), see serving/proctree.py; "
                   "the failure message prints where every VLLM process is)")
def test_a_killed_tensor_parallel_worker_replaces_the_whole_group_and_fails_no_request(cluster):
    url, head, node_pid = cluster
    before = _wait_procs([head.pid, node_pid], "VLLM::Worker_TP", 2, 90)
    assert len(before) == 2, _diagnose(head, node_pid, "tiny-tp")
    pp = _wait_procs([head.pid, node_pid], "VLLM::Worker_PP", 2, 90)
    assert len(pp) == 2, _diagnose(head, node_pid, "tiny-pp")
    engine = before[0].parent()  # the TP replica's EngineCore (the PP model's engine is not touched)
    assert engine is not None and "EngineCore" in " ".join(engine.cmdline()) and before[1].parent() == engine
    old = {p.pid for p in before}
    before[1].send_signal(signal.SIGKILL)
    # A request sent right after the kill is held or retried until the new group serves it, never failed.
    started = time.monotonic()
    ids = _ids(url, "tiny-tp", PROMPTS[0])
    assert len(ids) == 12
    deadline = time.monotonic() + 240  # a new TP engine under CI load (the request above may beat the kill)
    while time.monotonic() < deadline:
        now = {p.pid for p in _procs([head.pid, node_pid], "VLLM::Worker_TP")}
        if len(now) == 2 and not now & old:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"TP workers not replaced: before {old}, now {now}", *_diagnose(head, node_pid, "tiny-tp"))
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in before)  # the survivor went too
    assert not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE  # the whole group, its engine too
    # The other model's group is untouched: the same two PP workers, still running.
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in pp), _diagnose(head, node_pid, "tiny-pp")
    print(f"TP group replaced; request answered {time.monotonic() - started:.1f}s after the kill")


def test_a_parallel_size_no_node_holds_is_refused_at_deploy_naming_the_field(cluster, tmp_path):
    _url, head, _node = cluster
    data = _parallel_config(9)  # never deployed: refused before anything starts
    data["models"] = data["models"][:1]
    data["models"][0]["engine_args"]["tensor_parallel_size"] = 4
    data["models"][0]["replicas"]["worker_num_cpus"] = 1
    path = tmp_path / "too-big.yaml"
    path.write_text(yaml.safe_dump(data))
    r = tide("deploy", str(path), "--address", head.address, "--timeout", "60", timeout=120)
    assert r.returncode != 0
    assert "models.0.engine_args (tiny-tp): tensor_parallel_size 4" in r.stderr
    assert "the largest has 3 CPUs and 0 GPUs" in r.stderr
    assert "Traceback" not in r.stderr
