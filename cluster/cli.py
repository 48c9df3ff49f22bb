"""The `tide` cluster subcommands: up, down, deploy, status, build, validate (registered by serving/cli.py).

Handlers are thin: they load and check files, call the pure builders in `cluster.*`, and run Ray's CLI
or the launcher. Every expected failure is one `error: ...` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from serving.config import ConfigError, TideConfig, load_config

from .validate import ClusterConfigError, validate_cluster_file


def _err(msg: str, code: int = 1) -> int:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return code


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_model_paths(cfg: TideConfig, source: str) -> None:
    for m in cfg.models:
        if m.model.startswith("/") and not Path(m.model).exists():
            raise ConfigError(f"{source}: models.{m.name}.model: {m.model} does not exist")


# ---- tide validate ----
def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for f in args.files:
        try:
            prepared = validate_cluster_file(f)
        except ClusterConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            bad += 1
            continue
        types = ", ".join(f"{n} ({t.get('min_workers', 0)}-{t.get('max_workers', 0)})"
                          for n, t in prepared["available_node_types"].items())
        print(f"{f}: ok (provider {prepared['provider']['type']}, idle timeout "
              f"{prepared.get('idle_timeout_minutes')} min, node types: {types})")
    return 2 if bad else 0


# ---- tide up / down ----
def _launch(args: argparse.Namespace, kind: str) -> int:
    from .launch import (LaunchError, credential_problem, deploy_steps, down_steps, env_mismatches,
                         placeholder_problems, ray_binary, run_steps, up_steps)
    from .validate import load_cluster_yaml

    try:
        validate_cluster_file(args.cluster)
        raw = load_cluster_yaml(args.cluster)
        cfg = None
        if getattr(args, "config", None):
            cfg = load_config(args.config)
    except (ClusterConfigError, ConfigError) as e:
        return _err(str(e), 2)
    problems = placeholder_problems(raw)
    if cfg is not None:
        problems += env_mismatches(raw, cfg)
    if problems:
        return _err(f"{args.cluster}: " + "; ".join(problems), 2)
    ray = ray_binary()
    cluster = str(Path(args.cluster).resolve())
    models = str(Path(args.config).resolve()) if getattr(args, "config", None) else None
    if kind == "up":
        steps = up_steps(cluster, models, ray, args.timeout)
    elif kind == "deploy":
        steps = deploy_steps(cluster, models or "", ray, args.timeout)
    else:
        steps = down_steps(cluster, ray)
    if args.dry_run:
        print(f"{args.cluster}: valid; {kind} would run:")
        for s in steps:
            print(f"  {s.shell()}")
        problem = credential_problem(raw)
        print(f"  (launch check: {problem or 'ok'})")
        return 0
    problem = credential_problem(raw)
    if problem:
        return _err(f"tide {kind} {args.cluster}: {problem}")
    try:
        run_steps(steps, _say)
    except LaunchError as e:
        return _err(str(e))
    if kind == "up" and models:
        _say(f"Tide is deployed; watch it with: {ray} exec {cluster} 'tide status'")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    return _launch(args, "up")


def cmd_down(args: argparse.Namespace) -> int:
    return _launch(args, "down")


# ---- tide deploy ----
def _gcs_unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at a `host:port` Ray address (None when it answers, or for `auto`/`ray://`)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except OSError as e:
        return f"nothing answers at {address} ({e.strerror or e}); is Ray running there (`ray start --head`)?"


def _wait_port_released(host: str, port: int, timeout_s: float = 90.0) -> None:
    """Wait until the old ingress's socket is gone (bindable here, as Serve binds it), when it was on this node."""
    import errno
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    return  # not an address of this node: the ingress ran elsewhere
        time.sleep(1.0)
    _say(f"warning: port {port} is still in use after {timeout_s:.0f}s")


def _app_running() -> bool:
    from ray import serve

    from serving.config import APP_NAME

    try:
        return APP_NAME in serve.status().applications
    except Exception:  # no Serve controller yet: nothing to replace
        return False


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.cluster:
        return _launch(argparse.Namespace(cluster=args.cluster, config=args.config_file, timeout=args.timeout,
                                          dry_run=args.dry_run), "deploy")
    try:
        cfg = load_config(args.config_file)
        _check_model_paths(cfg, args.config_file)
    except ConfigError as e:
        return _err(str(e), 2)
    import ray

    from serving.launcher import DeployError, cluster_env, deploy, serve_env

    from .launch import port_quarantine_s

    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    _say(f"connecting to the Ray cluster at {address}")
    unreachable = _gcs_unreachable(address)
    if unreachable:  # ray.init would retry an absent GCS for minutes
        return _err(f"cannot connect to a Ray cluster at {address}: {unreachable}")
    from serving.sdk.handle import connect

    try:
        connect(address)
    except Exception as e:  # ConnectionError, or "could not find any running Ray instance"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return _err(f"cannot connect to a Ray cluster at {address}: {first}")
    try:
        want = serve_env(cfg)
        have = cluster_env(sorted({*want, "RAY_SERVE_PORT_QUARANTINE_S", "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"}))
        missing = [f"{k}={v}" for k, v in sorted(want.items()) if have.get(k) != v]
        if missing:
            _say("warning: this cluster's Ray was started without Tide's Serve settings: " + " ".join(missing))
            if cfg.server.direct_ingress and have.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "1":
                _say("warning: no direct ingress on this cluster: serving through Serve's proxy on "
                     f"port {cfg.server.port} instead (start Ray with the variables above for the faster path)")
                cfg.server.direct_ingress = False
                cfg.server.front = "ingress"
            elif cfg.server.front == "haproxy" and have.get("TIDE_FRONT") != "haproxy":
                _say("warning: this cluster's Ray was started without TIDE_FRONT=haproxy: serving through the "
                     f"ingress on port {cfg.server.port} instead (`tide deploy` then restarts the app)")
                cfg.server.front = "ingress"
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1" if cfg.server.direct_ingress else "0"
        if cfg.server.direct_ingress and cfg.server.front != "haproxy" and _app_running():
            # Serve replaces a replica by starting the new one first, but a direct-ingress replica holds the
            # public port until it stops: the new one fails with NoAvailablePortError. Restart the app instead.
            _say("Tide is already running here with direct ingress: restarting the app to update it "
                 "(the Ray cluster keeps running; requests fail until the engines are back)")
            from ray import serve

            from serving.config import APP_NAME

            serve.delete(APP_NAME)
            _wait_port_released(cfg.server.host, cfg.server.port)
            hold = port_quarantine_s(have)
            if hold > 0:  # Serve keeps the released port out of use this long (start Ray with it at 0)
                _say(f"waiting {hold:.0f}s for Serve to release port {cfg.server.port} "
                     f"(RAY_SERVE_PORT_QUARANTINE_S; the cluster YAMLs set it to 0)")
                time.sleep(hold + 1)
        _say(f"deploying {len(cfg.models)} model(s): {', '.join(m.name for m in cfg.models)}")
        url = deploy(cfg, timeout_s=args.timeout, say=_say)
    except DeployError as e:
        return _err(str(e))
    finally:
        ray.shutdown()  # only this driver leaves; Serve and the app keep running on the cluster
    print(f"Tide is serving at {url}/v1", flush=True)
    return 0


# ---- tide status ----
def cmd_status(args: argparse.Namespace) -> int:
    from .status import StatusError, fetch_status, format_status

    try:
        print(format_status(fetch_status(args.url, args.timeout)))
    except StatusError as e:
        return _err(str(e))
    return 0


# ---- tide build ----
def cmd_build(args: argparse.Namespace) -> int:
    from .build import kuberay_yaml, serve_config_yaml

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        return _err(str(e), 2)
    if args.kuberay:
        text = kuberay_yaml(cfg, args.config, args.image, args.name)
    else:
        text = serve_config_yaml(cfg, args.config)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).write_text(text)
        except OSError as e:
            return _err(f"{args.output}: cannot write ({e.strerror})")
        _say(f"wrote {args.output}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register the cluster subcommands on the `tide` parser's subparsers."""
    v = sub.add_parser("validate", help="check `ray up` cluster YAMLs with Ray's own validator (offline)")
    v.add_argument("files", nargs="+", help="cluster YAML files (see cluster/*.yaml)")
    v.set_defaults(fn=cmd_validate)

    u = sub.add_parser("up", help="launch a Ray cluster with `ray up`, then deploy the models on it")
    u.add_argument("cluster", help="cluster YAML (cluster/aws.yaml, cluster/gcp.yaml, cluster/local.yaml)")
    u.add_argument("--config", help="Tide models YAML to deploy once the cluster is up")
    u.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the engines (default 1800)")
    u.add_argument("--dry-run", action="store_true", help="validate and print the commands; launch nothing")
    u.set_defaults(fn=cmd_up)

    d = sub.add_parser("down", help="stop a cluster started with `tide up` (`ray down`)")
    d.add_argument("cluster", help="cluster YAML")
    d.add_argument("--dry-run", action="store_true", help="validate and print the command; stop nothing")
    d.set_defaults(fn=cmd_down)

    p = sub.add_parser("deploy", help="deploy or update the models on a running Ray cluster (no restart)")
    p.add_argument("config_file", metavar="CONFIG", help="Tide models YAML")
    p.add_argument("--address", help="Ray address to join (default: $RAY_ADDRESS, else `auto`: this node's)")
    p.add_argument("--cluster", help="instead: a cluster YAML; copies CONFIG to its head and deploys there")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the engines (default 900)")
    p.add_argument("--dry-run", action="store_true", help="with --cluster: print the commands only")
    p.set_defaults(fn=cmd_deploy)

    s = sub.add_parser("status", help="a table per model: replicas, queue depth, tokens/s, state")
    s.add_argument("--url", default="http://127.0.0.1:8000", help="Tide endpoint (default http://127.0.0.1:8000)")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    s.set_defaults(fn=cmd_status)

    b = sub.add_parser("build", help="write the Ray Serve config (or KubeRay RayService) for a models YAML")
    b.add_argument("config", help="Tide models YAML")
    b.add_argument("-o", "--output", help="output file (default: stdout)")
    b.add_argument("--kuberay", action="store_true", help="write a KubeRay RayService manifest instead")
    b.add_argument("--image", default="tide-serve:0.1.0-gpu", help="container image for --kuberay")
    b.add_argument("--name", default="tide", help="RayService name for --kuberay")
    b.set_defaults(fn=cmd_build)
