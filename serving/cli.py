"""`tide` command line: serve a config, build the tiny default model, and the cluster commands
(`up`, `down`, `deploy`, `status`, `build`, `validate`: cluster/cli.py)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from .config import ConfigError, load_config


def _cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from .tools.tiny_model import build_tiny_model

    build_tiny_model(args.path, seed=args.seed, force=args.force)
    return 0


def _cmd_make_tiny_lora(args: argparse.Namespace) -> int:
    from .tools.tiny_lora import build_tiny_lora

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    out = build_tiny_lora(args.base, args.path, seed=args.seed, rank=args.rank, targets=targets, force=args.force)
    print(f"tiny LoRA adapter (rank {args.rank}, {', '.join(targets)}, seed {args.seed}) at {out}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    cfg = load_config(args.config)
    if args.host:
        cfg.server.host = args.host
    if args.port:
        cfg.server.port = args.port
    for m in cfg.models:
        if m.model.startswith("/") and not Path(m.model).exists():
            raise ConfigError(f"{args.config}: models.{m.name}.model: {m.model} does not exist "
                              f"(build the default with `tide make-tiny-model {m.model}`)")
    from .launcher import DeployError, deploy, progress_printer, shutdown, start_ray

    say = progress_printer()
    say(f"starting Tide with {len(cfg.models)} model(s): {', '.join(m.name for m in cfg.models)}")
    owns_ray = start_ray(cfg, args.address)
    serving, stop = threading.Event(), threading.Event()

    def on_signal(*_: object) -> None:
        # While deploying, or a second Ctrl-C/SIGTERM while stopping: interrupt whatever is being waited for.
        if not serving.is_set() or stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: it is ignored in background jobs
        signal.signal(sig, on_signal)
    code = 0
    try:
        url = deploy(cfg, timeout_s=args.timeout, say=say)
        print(f"Tide is serving at {url}/v1  (OpenAI-compatible; Ctrl-C stops)", flush=True)
        serving.set()
        while not stop.wait(1.0):
            pass
        say("stopping")
    except KeyboardInterrupt:
        say("stopping")
    except DeployError as e:
        say(f"error: {e}")
        code = 1
    finally:
        try:
            shutdown(owns_ray)
            say("stopped")
        except KeyboardInterrupt:  # engines still die with their replicas (serving/replica/reaper.py)
            say("stopped without waiting for a clean shutdown")
        if owns_ray:  # Ray's exit hooks would wait on the processes just stopped
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tide", description="Tide: elastic LLM serving on Ray Serve + vLLM.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="start (or join) Ray, deploy the models in CONFIG, serve until Ctrl-C")
    s.add_argument("config", help="YAML config (see examples/tiny.yaml)")
    s.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)")
    s.add_argument("--host", help="override server.host")
    s.add_argument("--port", type=int, help="override server.port")
    s.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the engines (default 900)")
    s.set_defaults(fn=_cmd_serve)

    t = sub.add_parser("make-tiny-model", help="build the tiny random Llama used by tests and `make serve`")
    t.add_argument("path", help="output folder (a normal Hugging Face model folder)")
    t.add_argument("--seed", type=int, default=0, help="weights seed (same seed, same model)")
    t.add_argument("--force", action="store_true", help="rebuild even when already built")
    t.set_defaults(fn=_cmd_make_tiny_model)

    lo = sub.add_parser("make-tiny-lora", help="build a seeded random LoRA adapter (PEFT folder) for the tiny model")
    lo.add_argument("path", help="output folder (adapter_config.json + adapter_model.safetensors)")
    lo.add_argument("--base", default=".models/tiny-llama", help="the base model folder (default .models/tiny-llama)")
    lo.add_argument("--seed", type=int, default=0, help="weights seed (same seed, same adapter)")
    lo.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8; the engine's max_lora_rank must fit)")
    lo.add_argument("--targets", default="q_proj,v_proj", help="comma-separated projections (default q_proj,v_proj)")
    lo.add_argument("--force", action="store_true", help="rebuild even when already built")
    lo.set_defaults(fn=_cmd_make_tiny_lora)

    # More subcommands register here, one `add_parsers(sub)` line per package.
    from cluster.cli import add_parsers as add_cluster_parsers

    add_cluster_parsers(sub)
    from autoscale.sim.cli import add_parser as add_simulate_parser

    add_simulate_parser(sub)

    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
