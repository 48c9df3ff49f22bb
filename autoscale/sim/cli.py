"""`tide simulate TRACE`: run autoscaling policies over a trace in the fleet simulator; table + PNG.

Registered into the `tide` CLI by `add_parser(subparsers)`; also runnable alone: `python -m autoscale.sim.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .fleet import FleetConfig, placement as fleet_placement, simulate
from .policies import POLICIES, make_policy
from .prefix import PrefixWorkload
from .profile import load_profile
from .report import plot, table
from .traces import BUILTIN, TraceConfig, load_trace


def _kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (a PolicyConfig / Serve AutoscalingConfig field)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _errors(e: ValidationError, what: str) -> str:
    return f"invalid {what}: " + "; ".join(f"{'.'.join(map(str, x['loc'])) or '-'}: {x['msg']}" for x in e.errors())


def run(a: argparse.Namespace) -> int:
    """The `simulate` command; returns an exit code (2 with one clear message on bad input)."""
    try:
        prof = load_profile(a.profile)
        tcfg = TraceConfig(duration_s=a.duration_s, users=a.users, requests_per_user_per_h=a.requests_per_user_h,
                           prompt_tokens=a.prompt_tokens, output_tokens=a.output_tokens, seed=a.seed)
        trace = load_trace(a.trace, tcfg, a.dt)
        fcfg = FleetConfig(replicas_min=a.replicas_min, replicas_max=a.replicas_max, slo_ttft_s=a.slo_ttft_ms / 1000,
                           slo_tpot_s=a.slo_tpot_ms / 1000, price_per_replica_h=a.price, node_provision_s=a.node_provision_s,
                           replicas_per_node=a.replicas_per_node, mtbf_h=a.mtbf_h, cold_start_s=a.cold_start_s,
                           gpus_per_replica=a.gpus_per_replica, gpus_per_node=a.gpus_per_node,
                           price_per_gpu_h=a.price_per_gpu_h,
                           sample_s=a.sample_s or max(trace.duration_s / 400, a.dt), seed=a.seed)
        gpus, per_node, _ = fleet_placement(fcfg, prof)  # refuses a replica bigger than a node
        prefix = (PrefixWorkload(router=a.router, tenants=a.tenants, prefix_tokens=a.prefix_tokens,
                                 cache_prefixes=a.cache_prefixes, seed=a.seed) if a.router != "none" else None)
        overrides = _kv(a.set or [])
        policies = []
        for name in a.policy:
            kw = dict(overrides)
            if name == "tide":
                kw.setdefault("replica_capacity", prof.max_num_seqs)  # a replica's batch, from its profile
            elif name == "serve-default":
                kw = {k: v for k, v in kw.items() if k in _SERVE_KEYS}
            policies.append((name, make_policy(name, a.replicas_min, a.replicas_max, kw)))
    except ValidationError as e:
        print(f"error: {_errors(e, 'settings')}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"trace {trace.name}: {trace.total:,} requests over {trace.duration_s:,.0f}s (tick {a.dt:g}s); "
          f"profile {prof.name}; replicas {a.replicas_min}..{a.replicas_max} of {gpus} GPU(s), {per_node} per node",
          flush=True)
    results = []
    for name, pol in policies:
        def progress(f: float, name: str = name) -> None:
            print(f"  {name}: {f:.0%}", flush=True)

        results.append(simulate(trace, prof, pol, name, fcfg, progress if a.progress else None, prefix))
    print(table(results))
    if a.png:
        print(f"plot: {plot(results, Path(a.png), f'{trace.name} on {prof.name}')}")
    if a.json:
        Path(a.json).write_text(json.dumps([r.summary() for r in results], indent=1))
    return 0


_SERVE_KEYS = ("target_ongoing_requests", "upscale_delay_s", "downscale_delay_s", "downscale_to_zero_delay_s",
               "upscaling_factor", "downscaling_factor", "look_back_period_s")


def add_parser(subparsers: Any) -> None:
    """Register `simulate` on the `tide` CLI's subparsers."""
    p = subparsers.add_parser("simulate", help="simulate a fleet under an autoscaling policy (table + PNG)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", help=f"built-in trace ({', '.join(BUILTIN)}) or a CSV file with columns "
                                 "timestamp,prompt_tokens,output_tokens")
    p.add_argument("--policy", nargs="+", default=["tide", "serve-default"], choices=POLICIES,
                   help="policies to compare on the same trace (default: tide serve-default)")
    p.add_argument("--replicas-max", type=int, default=16, help="most replicas (default 16)")
    p.add_argument("--replicas-min", type=int, default=1, help="fewest replicas (default 1)")
    p.add_argument("--profile", default="h100-llama3-8b",
                   help="replica speed: cpu-tiny (measured here), h100-llama3-8b (derived), "
                        "h100-llama3-8b-measured (plain torch on an H100), or a JSON file")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                   help="policy settings, e.g. upscale_delay_s=5 target_ongoing_requests=4 (tide's "
                        "replica_capacity defaults to the profile's max_num_seqs)")
    g = p.add_argument_group("built-in traces")
    g.add_argument("--duration-s", type=float, default=3600.0, help="trace length (default 3600)")
    g.add_argument("--users", type=int, default=10_000, help="active users at peak (default 10,000)")
    g.add_argument("--requests-per-user-h", type=float, default=30.0, help="requests per user per hour (30)")
    g.add_argument("--prompt-tokens", type=float, default=512, help="mean prompt length (512)")
    g.add_argument("--output-tokens", type=float, default=256, help="mean output length (256)")
    r = p.add_argument_group("prefix caching (routes a sample of requests with autoscale.routing each tick)")
    r.add_argument("--router", choices=("none", "prefix", "least-loaded"), default="none",
                   help="model prefix-cache hits with this router (default none: no shared prefixes)")
    r.add_argument("--tenants", type=int, default=200, help="distinct shared prefixes, Zipf-popular (200)")
    r.add_argument("--prefix-tokens", type=int, default=384, help="shared prefix length in tokens (384)")
    r.add_argument("--cache-prefixes", type=int, default=16, help="prefixes one replica's cache keeps (16)")
    c = p.add_argument_group("cluster and SLOs")
    c.add_argument("--dt", type=float, default=1.0, help="tick, seconds (default 1, Serve's metric push period)")
    c.add_argument("--slo-ttft-ms", type=float, default=2000.0, help="TTFT target (default 2000)")
    c.add_argument("--slo-tpot-ms", type=float, default=100.0, help="TPOT target (default 100)")
    c.add_argument("--price", type=float, default=2.5, help="$ per replica-hour (default 2.5)")
    c.add_argument("--cold-start-s", type=float, help="replica start on a ready node (default: the profile's)")
    c.add_argument("--node-provision-s", type=float, default=0.0, help="time to add a node (default 0)")
    c.add_argument("--replicas-per-node", type=int, default=8, help="replicas per node (default 8)")
    c.add_argument("--gpus-per-replica", type=int, help="GPUs one replica holds, tensor x pipeline parallel "
                                                        "(default: the profile's)")
    c.add_argument("--gpus-per-node", type=int, help="GPUs per node: replicas per node = this // GPUs per replica")
    c.add_argument("--price-per-gpu-h", type=float, help="$ per GPU-hour (instead of --price per replica-hour)")
    c.add_argument("--mtbf-h", type=float, default=0.0, help="mean hours between replica failures (0: none)")
    c.add_argument("--sample-s", type=float, help="plot sampling period (default: duration / 400)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--png", default="simulate.png", help="plot path (default simulate.png; '' for none)")
    c.add_argument("--json", help="also write the summary rows as JSON here")
    c.add_argument("--progress", action="store_true", help="print progress every 10%% of each run")
    p.set_defaults(fn=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tide")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
