"""`tide up` / `tide down`: wrap Ray's cluster launcher, then deploy Tide's models on the cluster's head.

Decisions are pure (`up_steps`, `down_steps`, `env_mismatches`, `placeholder_problems`); the credential
probes and `run_steps` are the I/O edge. Nothing here starts a cloud call until the checks have passed, so
a missing credential is one clear line, not a stack trace from inside `ray up`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from serving.config import TideConfig
from serving.ray_env import serve_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the YAMLs' file_mounts sync "." from here
REMOTE_MODELS = "~/tide-models.yaml"
Printer = Callable[[str], None]


class LaunchError(RuntimeError):
    """A step of `tide up`/`tide down` cannot run or failed; the message is meant for the user as is."""


@dataclass(frozen=True)
class Step:
    """One command of a launch, with the line shown while it runs."""

    title: str
    argv: list[str]

    def shell(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv)


def ray_binary() -> str:
    """The `ray` CLI of this Python (the venv's), so `ray up` runs the same Ray version as Tide."""
    local = Path(sys.executable).with_name("ray")
    return str(local) if local.exists() else (shutil.which("ray") or "ray")


def up_steps(cluster_file: str, models_file: str | None, ray: str = "ray", timeout_s: float = 1800) -> list[Step]:
    """`ray up`, then (with a models file) copy it to the head and deploy it there with `tide deploy`."""
    steps = [Step("starting the cluster (ray up)", [ray, "up", "-y", "--no-config-cache", cluster_file])]
    if models_file:
        steps += [
            Step("copying the models config to the head", [ray, "rsync-up", cluster_file, models_file, REMOTE_MODELS]),
            Step("deploying the models on the head (tide deploy)",
                 [ray, "exec", cluster_file, f"tide deploy {REMOTE_MODELS} --address auto --timeout {timeout_s:.0f}"]),
        ]
    return steps


def deploy_steps(cluster_file: str, models_file: str, ray: str = "ray", timeout_s: float = 1800) -> list[Step]:
    """Update the models of a running cluster from this machine (no restart)."""
    return up_steps(cluster_file, models_file, ray, timeout_s)[1:]


def down_steps(cluster_file: str, ray: str = "ray") -> list[Step]:
    return [Step("stopping the cluster (ray down)", [ray, "down", "-y", cluster_file])]


_EXPORT = re.compile(r"\bexport\s+((?:[A-Z0-9_]+=\S*\s*)+)")


def start_env(commands: list[str]) -> dict[str, str]:
    """Variables a list of start commands exports before `ray start`."""
    env: dict[str, str] = {}
    for cmd in commands:
        for m in _EXPORT.finditer(cmd):
            for pair in m.group(1).split():
                k, _, v = pair.partition("=")
                env[k] = v.rstrip(";")
    return env


def env_mismatches(cluster: dict[str, Any], cfg: TideConfig) -> list[str]:
    """Where the cluster's start commands do not give Ray the Serve settings this models config needs
    (e.g. the models file moved the port but the YAML still opens direct ingress on 8000)."""
    problems = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        have = start_env(cluster.get(key) or [])
        for var, want in sorted(serve_env(cfg).items()):
            if have.get(var) != want:
                problems.append(f"{key}: {var}={have.get(var, '(unset)')}, the models config needs {want}")
    return problems


def port_quarantine_s(env: dict[str, str | None]) -> float:
    """How long Serve keeps a released direct-ingress port out of use, from the cluster's environment
    (Ray 2.60: RAY_SERVE_PORT_QUARANTINE_S, default HAProxy's hard-stop-after 120 s + 30 s)."""
    if env.get("RAY_SERVE_PORT_QUARANTINE_S") not in (None, ""):
        return max(0.0, float(env["RAY_SERVE_PORT_QUARANTINE_S"] or 0))
    return float(env.get("RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S") or 120) + 30.0


def placeholder_problems(cluster: dict[str, Any]) -> list[str]:
    """Values shipped as placeholders that a user must replace before a real launch."""
    provider = cluster.get("provider") or {}
    return [f"provider.{k}: replace the placeholder {v!r}" for k, v in provider.items()
            if isinstance(v, str) and v.startswith("YOUR-")]


# ---- credential probes (I/O) ----

def aws_problem() -> str | None:
    try:
        import boto3
    except ImportError:
        return "AWS launches need boto3: pip install boto3 (then configure credentials with `aws configure`)"
    try:
        creds = boto3.Session().get_credentials()
    except Exception as e:  # a broken profile file, for one
        return f"cannot read AWS credentials: {e}"
    if creds is None:
        return ("no AWS credentials found: run `aws configure`, set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "or run on an instance with a role")
    return None


def gcp_problem() -> str | None:
    try:
        import google.auth
        import googleapiclient  # noqa: F401  (Ray's GCP provider needs it)
    except ImportError:
        return "GCP launches need google-api-python-client and google-auth: pip install google-api-python-client"
    try:
        google.auth.default()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"no GCP credentials: {first} (run `gcloud auth application-default login`)"
    return None


def ssh_problem(hosts: list[str], port: int = 22, timeout_s: float = 2.0) -> str | None:
    for host in hosts:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except OSError as e:
            return (f"cannot reach sshd on {host}:{port} ({e.strerror or e}): Ray's local provider runs every "
                    f"command over SSH, also on 127.0.0.1; enable key-based SSH for the YAML's auth.ssh_user")
    return None


def ssh_login_problem(host: str, auth: dict[str, Any], timeout_s: float = 20.0) -> str | None:
    """Log in once as `ray up` will (the YAML's user, key and proxy command; no password prompt), so a key the
    host does not accept is one line here rather than a hang or a retry loop inside `ray up`."""
    user = auth.get("ssh_user", "")
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}",
            "-o", "IdentitiesOnly=yes", "-o", f"ConnectTimeout={int(timeout_s)}"]
    if auth.get("ssh_private_key"):
        argv += ["-i", os.path.expanduser(auth["ssh_private_key"])]
    if auth.get("ssh_proxy_command"):
        argv += ["-o", f"ProxyCommand={auth['ssh_proxy_command']}"]
    try:
        out = subprocess.run([*argv, f"{user}@{host}", "true"], capture_output=True, text=True, timeout=timeout_s + 5)
    except FileNotFoundError:
        return "Ray's local provider needs the ssh client: install openssh-client"
    except subprocess.TimeoutExpired:
        return f"ssh {user}@{host} did not answer within {timeout_s:.0f}s"
    if out.returncode != 0:
        last = next((line for line in reversed(out.stderr.splitlines()) if line.strip()), "no output")
        key = auth.get("ssh_private_key") or "the default keys"
        return (f"cannot log in to {user}@{host} over SSH with {key} (auth.ssh_user, auth.ssh_private_key): "
                f"{last.strip()[:200]}")
    return None


def credential_problem(cluster: dict[str, Any]) -> str | None:
    """Why a launch of this cluster cannot work from here, or None. Checked before any `ray up`."""
    provider = cluster.get("provider") or {}
    kind = provider.get("type")
    if kind == "aws":
        return aws_problem()
    if kind == "gcp":
        return gcp_problem()
    if kind == "local":
        hosts = [provider.get("head_ip", "127.0.0.1"), *provider.get("worker_ips", [])]
        auth = cluster.get("auth") or {}
        if not auth.get("ssh_proxy_command"):  # with a proxy command, port 22 of the host is not what ssh dials
            problem = ssh_problem(hosts)
            if problem:
                return problem
        return next((p for p in (ssh_login_problem(h, auth) for h in hosts) if p), None)
    return None


def run_steps(steps: list[Step], say: Printer, cwd: Path = PROJECT_ROOT) -> None:
    """Run each step, streaming its output with a prefix (progress); the first failure raises LaunchError."""
    for i, step in enumerate(steps, 1):
        say(f"[{i}/{len(steps)}] {step.title}: {step.shell()}")
        tail: deque[str] = deque(maxlen=5)
        try:
            proc = subprocess.Popen(step.argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as e:
            raise LaunchError(f"cannot run {step.argv[0]}: {e.strerror}") from None
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            say(f"    {line}")
        if proc.wait() != 0:
            last = next((t for t in reversed(tail) if t.strip()), "no output")
            raise LaunchError(f"{step.title} failed (exit {proc.returncode}): {last.strip()[:300]}")
