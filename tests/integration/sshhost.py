"""A throwaway SSH host on this machine, for `tide up` through Ray's own `ray up` (local provider).

sshd listens on 127.0.0.1 on a free port with a key made for the test, inside a PID namespace of its own:
the cluster YAML's `ray stop` there sees only the processes started over SSH (not the test session's Ray), and
killing sshd, the namespace's first process, ends everything left in it. A login gets a HOME and a Ray temp dir
of the test's own, and this venv's Python on its PATH: the node's "preinstalled" Python.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from serving.launcher import free_port

from .headnode import ROOT, wait_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def missing() -> str | None:
    """Why a throwaway SSH host cannot run here, or None."""
    for tool in (SSHD, "ssh", "ssh-keygen", "rsync", "unshare"):
        if not shutil.which(tool) and not os.access(tool, os.X_OK):
            return f"{tool} not found (.ci/run installs openssh-server and rsync)"
    if os.geteuid() != 0:
        return "needs root: sshd logs in only its own user otherwise, and the PID namespace needs CAP_SYS_ADMIN"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a PID namespace here: {probe.stderr.strip()[:200]}"
    return None


@dataclass
class SSHHost:
    port: int
    key: Path  # the private key `ray up` logs in with
    home: Path  # the login's HOME: ~/tide, ~/ray_bootstrap_config.yaml, ~/.ray land here
    tmp: Path
    pid: int  # `unshare`: its child sshd is the namespace's first process

    @property
    def proxy_command(self) -> str:
        """Ray's local provider always dials port 22; this hands ssh a connection to our port instead."""
        return f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{self.port}; cat <&3 2>/dev/null & exec cat >&3'"

    def namespace_pids(self) -> list[int]:
        """Every process in the host's PID namespace, sshd included."""
        import psutil

        try:
            ns = os.readlink(f"/proc/{psutil.Process(self.pid).children()[0].pid}/ns/pid")
        except (OSError, IndexError, psutil.Error):
            return []
        out = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if os.readlink(p / "ns" / "pid") == ns:
                        out.append(int(p.name))
                except OSError:
                    pass
        return out


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@contextmanager
def ssh_host() -> Iterator[SSHHost]:
    tmp = Path(tempfile.mkdtemp(prefix="tide-ssh-", dir="/tmp"))  # short: Ray's socket paths live under it
    home, raytmp = tmp / "home", tmp / "t"
    home.mkdir()
    raytmp.mkdir()
    _keygen(tmp / "host_key")
    _keygen(tmp / "user_key")
    shutil.copy(tmp / "user_key.pub", tmp / "authorized_keys")
    # Debian's /etc/profile resets PATH for login shells (Ray runs `bash --login`): the login's own profile adds
    # the venv, as a node's image would have its Python first on the PATH.
    (home / ".profile").write_text(f"export PATH={Path(sys.executable).parent}:$PATH\n")
    (home / ".bashrc").write_text("")  # Ray sources it before each command
    port = free_port()
    (tmp / "sshd_config").write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {tmp / 'host_key'}",
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
        f"PidFile {tmp / 'sshd.pid'}", f"SetEnv HOME={home} RAY_TMPDIR={raytmp}", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = open(tmp / "sshd.log", "w")
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", SSHD, "-D", "-e",
                             "-f", str(tmp / "sshd_config")], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_port(port, 30)
        yield SSHHost(port, tmp / "user_key", home, tmp, proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)  # --kill-child: sshd, the namespace's init, dies, and all in it
        proc.wait()
        log.close()
        if not os.environ.get("TIDE_KEEP_TEST_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)


_EXPORT_VAR = re.compile(r"\b([A-Z0-9_]+)=(\S*?)(?=[\s;])")


def local_cluster_yaml(host: SSHHost, serve_env: dict[str, str], path: Path) -> Path:
    """cluster/local.yaml pointed at `host`: its user, key and port; the head's Ray and Serve ports moved to free
    ones (this machine also runs the test session's cluster) and its exports set to what the models need."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    data["cluster_name"] = f"tide-up-test-{os.getpid()}"
    data["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(host.key),
                    "ssh_proxy_command": host.proxy_command}
    gcs = free_port()

    def moved(cmd: str) -> str:
        cmd = _EXPORT_VAR.sub(lambda m: f"{m[1]}={serve_env.get(m[1], m[2])}", cmd)
        cmd = cmd.replace("--port=6379", f"--port={gcs} --ray-client-server-port={free_port()} "
                                         f"--dashboard-port={free_port()} "
                                         f"--dashboard-agent-listen-port={free_port()}")
        return cmd.replace("$RAY_HEAD_IP:6379", f"$RAY_HEAD_IP:{gcs}")

    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        data[key] = [moved(c) for c in data[key]]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
