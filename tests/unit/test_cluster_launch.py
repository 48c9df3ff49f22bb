"""`tide up/down/deploy --cluster`: the commands they run, the checks before them, and the one-line failures."""

import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cluster import launch
from cluster.launch import (LaunchError, Step, credential_problem, deploy_steps, down_steps, env_mismatches,
                            placeholder_problems, port_quarantine_s, run_steps, start_env, up_steps)
from serving.config import TideConfig

ROOT = Path(__file__).resolve().parents[2]


def _cfg(**server):
    return TideConfig.model_validate({"server": server, "models": [{"name": "m", "model": "x"}]})


def test_up_runs_ray_up_then_deploys_on_the_head():
    steps = up_steps("c.yaml", "/abs/models.yaml", ray="RAY", timeout_s=60)
    assert [s.argv for s in steps] == [
        ["RAY", "up", "-y", "--no-config-cache", "c.yaml"],
        ["RAY", "rsync-up", "c.yaml", "/abs/models.yaml", "~/tide-models.yaml"],
        ["RAY", "exec", "c.yaml", "tide deploy ~/tide-models.yaml --address auto --timeout 60"],
    ]
    assert [s.argv for s in up_steps("c.yaml", None, ray="RAY")] == [["RAY", "up", "-y", "--no-config-cache",
                                                                      "c.yaml"]]
    assert deploy_steps("c.yaml", "m.yaml", "RAY") == up_steps("c.yaml", "m.yaml", "RAY")[1:]
    assert down_steps("c.yaml", "RAY")[0].argv == ["RAY", "down", "-y", "c.yaml"]
    assert Step("t", ["ray", "exec", "c", "a b"]).shell() == "ray exec c 'a b'"


def test_start_env_reads_exports():
    cmds = ["ray stop", "ulimit -n 1; export A=1 B=x; ray start --head", "export C=3"]
    assert start_env(cmds) == {"A": "1", "B": "x", "C": "3"}
    assert start_env(["ray start"]) == {}


def test_env_mismatch_when_models_move_the_port():
    cluster = {"head_start_ray_commands": ["export RAY_SERVE_THROUGHPUT_OPTIMIZED=1; ray start --head"],
               "worker_start_ray_commands": []}
    problems = env_mismatches(cluster, _cfg(port=9000))
    assert "head_start_ray_commands: RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=(unset), the models config needs 9001" \
        in problems
    assert not any("THROUGHPUT" in p and p.startswith("head") for p in problems)
    assert any(p.startswith("worker_start_ray_commands: RAY_SERVE_THROUGHPUT_OPTIMIZED") for p in problems)


def test_placeholders_are_refused():
    assert placeholder_problems({"provider": {"project_id": "YOUR-PROJECT-ID", "region": "r"}}) == [
        "provider.project_id: replace the placeholder 'YOUR-PROJECT-ID'"]
    assert placeholder_problems({"provider": {"project_id": "mine"}}) == []


def test_aws_without_boto3_or_credentials(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import fails
    assert "need boto3" in credential_problem({"provider": {"type": "aws"}})
    session = types.SimpleNamespace(get_credentials=lambda: None)
    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(Session=lambda: session))
    assert "no AWS credentials found" in credential_problem({"provider": {"type": "aws"}})
    session.get_credentials = lambda: object()
    assert credential_problem({"provider": {"type": "aws"}}) is None


def test_gcp_without_credentials(monkeypatch):
    import google.auth

    def no_creds():
        raise google.auth.exceptions.DefaultCredentialsError("Your default credentials were not found.\nmore")

    monkeypatch.setitem(sys.modules, "googleapiclient", types.ModuleType("googleapiclient"))
    monkeypatch.setattr(google.auth, "default", no_creds)
    msg = credential_problem({"provider": {"type": "gcp"}})
    assert msg.startswith("no GCP credentials: Your default credentials were not found.") and "\n" not in msg
    monkeypatch.setitem(sys.modules, "googleapiclient", None)
    assert "google-api-python-client" in credential_problem({"provider": {"type": "gcp"}})


def test_local_provider_needs_sshd_on_every_host():
    with socket.socket() as srv:  # a listening port stands in for sshd
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert launch.ssh_problem(["127.0.0.1"], port=port) is None
    msg = launch.ssh_problem(["127.0.0.1"], port=port)
    assert msg.startswith(f"cannot reach sshd on 127.0.0.1:{port}") and "over SSH" in msg


def test_run_steps_streams_output_and_reports_the_failing_step(tmp_path):
    lines: list[str] = []
    run_steps([Step("first", [sys.executable, "-c", "print('hello')"])], lines.append, cwd=tmp_path)
    assert lines[0].startswith("[1/1] first: ") and "    hello" in lines
    with pytest.raises(LaunchError, match=r"^second failed \(exit 3\): boom$"):
        run_steps([Step("second", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])], lines.append,
                  cwd=tmp_path)
    with pytest.raises(LaunchError, match="cannot run /nonexistent/ray"):
        run_steps([Step("third", ["/nonexistent/ray", "up"])], lines.append, cwd=tmp_path)


def _tide(*args, env=None):
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=120)


def test_tide_up_without_cloud_credentials_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path /
               "none"), AWS_EC2_METADATA_DISABLED="true")
    r = _tide("up", "cluster/aws.yaml", "--config", "examples/tiny.yaml", env=env)
    assert r.returncode == 1, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: tide up cluster/aws.yaml: ")
    assert "AWS" in err[0] and "Traceback" not in r.stderr


def test_tide_up_with_a_bad_yaml_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "cluster" / "aws.yaml").read_text().replace("max_workers: 16", "max_wrkers: 16"))
    r = _tide("up", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: {bad}: invalid cluster config" in r.stderr and "'max_wrkers' was unexpected" in r.stderr


def test_tide_up_local_dry_run_shows_what_would_run_and_why_it_cannot_here():
    r = _tide("up", "cluster/local.yaml", "--config", "examples/tiny.yaml", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "cluster/local.yaml: valid; up would run:"
    assert out[1].endswith(f"ray up -y --no-config-cache {ROOT}/cluster/local.yaml")
    assert "tide deploy ~/tide-models.yaml --address auto" in out[3]
    assert out[4].startswith("  (launch check: ")


def test_tide_down_dry_run_and_status_connection_error():
    r = _tide("down", "cluster/gcp.yaml", "--dry-run")
    assert r.returncode == 2 and "YOUR-PROJECT-ID" in r.stderr  # the placeholder must be replaced first
    r = _tide("status", "--url", "http://127.0.0.1:9/v1", "--timeout", "2")
    assert r.returncode == 1 and r.stderr.strip().startswith("error: cannot reach Tide at http://127.0.0.1:9/tide")
    assert len(r.stderr.strip().splitlines()) == 1


def test_tide_deploy_to_no_cluster_is_one_clear_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    r = _tide("deploy", "examples/tiny.yaml", "--address", f"127.0.0.1:{port}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"error: cannot connect to a Ray cluster at 127.0.0.1:{port}: "
                                                f"nothing answers")


def test_port_quarantine_follows_serves_defaults():
    assert port_quarantine_s({}) == 150.0
    assert port_quarantine_s({"RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "10"}) == 40.0
    assert port_quarantine_s({"RAY_SERVE_PORT_QUARANTINE_S": "0"}) == 0.0
    assert port_quarantine_s({"RAY_SERVE_PORT_QUARANTINE_S": "5.5", "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "1"}) == 5.5
