"""Fleet simulator benchmarks: validation against the real autoscaling run, scaling, policy comparison.

    python benchmarks/bench_sim.py validate   # sim vs benchmarks/out/autoscale.json -> benchmarks/sim_validation.png
    taskset -c 0 python benchmarks/bench_sim.py scale      # run time vs replicas and requests (one core)
    python benchmarks/bench_sim.py compare    # Tide vs Serve default on the built-in traces; tuning sweep
    python benchmarks/bench_sim.py flash      # a flash crowd's backlog drained in 0 / 60 / 120 s
    python benchmarks/bench_sim.py parallel   # a day of Llama-3-70B on TP-4 replicas vs 8B on one GPU each

Each prints a Markdown table (also written to benchmarks/out/sim_*.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from autoscale.sim.fleet import FleetConfig, simulate  # noqa: E402
from autoscale.sim.policies import make_policy  # noqa: E402
from autoscale.sim.profile import load_profile  # noqa: E402
from autoscale.sim.report import plot, table  # noqa: E402
from autoscale.sim.stats import SimResult  # noqa: E402
from autoscale.sim.traces import Trace, TraceConfig, closed_loop_trace, load_trace  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
# The real run's settings (benchmarks/bench_autoscale.py): max 2 replicas, engine max_num_seqs 16, 64 tokens.
REAL_POLICIES = {  # as in the real run; Tide's defaults then were target_utilization 0.8, downscale_delay_s 60
    "tide": {"replica_capacity": 8, "replica_start_s": 30, "target_utilization": 0.8, "downscale_delay_s": 60},
    "serve-default": {"target_ongoing_requests": 2}}
PHASES = [("burst", 15, 75), ("plateau", 75, 135)]
REAL_PHASES = [(15, 0), (60, 24), (60, 6), (90, 0)]  # bench_autoscale.py phases(1.0): seconds, clients


def replay_trace(requests: list[dict], dt: float, prompt_tokens: float = 3, output_tokens: float = 64) -> Trace:
    """Open-loop replay of the real run's request start times (the real clients were closed-loop)."""
    t = np.array(sorted(r["t"] for r in requests))
    n = int(t.max() // dt) + 60 * int(1 / dt)  # one more minute: the real trace idles to ~225 s
    arrivals = np.bincount((t // dt).astype(int), minlength=n).astype(float)
    return Trace("autoscale-replay", dt, arrivals, np.full(n, prompt_tokens), np.full(n, output_tokens))


def calibrate(real: dict, prof, output_tokens: float = 64) -> float:
    """Slowdown of the full serving stack vs the bare engine, from ONE number: the real 1-replica burst throughput."""
    first = next(s["t"] for s in real["samples"] if (s["running"] or 0) >= 2)
    starts = [r["t"] for r in real["requests"] if 25 <= r["t"] < first]
    throughput = len(starts) / (first - 25)  # closed loop: starts = completions
    batch = prof.max_num_seqs
    return (batch / (throughput * output_tokens)) / float(prof.tpot(batch))


def _at(times: list[float], values: list[float], t: float) -> float:
    i = int(np.searchsorted(times, t, side="right")) - 1
    return values[max(i, 0)]


def _first_round(runs: dict) -> dict:
    """bench_autoscale.py's runs by policy name (with --rounds N it names them "tide #1", ...: take round 1)."""
    return {k.removesuffix(" #1"): v for k, v in runs.items() if " #" not in k or k.endswith(" #1")}


def validate(a: argparse.Namespace) -> None:
    runs = _first_round(json.loads((OUT / "autoscale.json").read_text())["runs"])
    base = load_profile("cpu-tiny")
    factor = calibrate(runs["tide"], base)
    rows, sims = [], {}
    for calibrated in (False, True):
        prof = base.scaled(factor) if calibrated else base
        for name, over in REAL_POLICIES.items():
            real = runs[name]
            trace = (closed_loop_trace("autoscale-closed-loop", REAL_PHASES, a.dt, 3, 64) if a.closed_loop
                     else replay_trace(real["requests"], a.dt))
            fc = FleetConfig(replicas_min=1, replicas_max=2, cold_start_s=52.0, node_provision_s=0,
                             replicas_per_node=2, sample_s=1.0, queue_timeout_s=600)
            res = simulate(trace, prof, make_policy(name, 1, 2, over), name, fc)
            if calibrated:
                sims[name] = res
            st = res.series
            ts = [s["t"] for s in real["samples"]]
            err = [abs(_at(st.t, st.running, t) - (s["running"] or 0)) for t, s in zip(ts, real["samples"])]
            real_second = next((s["t"] for s in real["samples"] if (s["running"] or 0) >= 2), None)
            sim_second = next((t for t, n in zip(st.t, st.running) if n >= 2), None)
            row = {"policy": name, "profile": "calibrated" if calibrated else "bare engine",
                   "replica_mae": statistics.mean(err), "real_2nd_s": real_second, "sim_2nd_s": sim_second}
            for phase, lo, hi in PHASES:
                rt = [r["ttft"] for r in real["requests"] if lo <= r["t"] < hi and r["ttft"] is not None]
                sp = [v for t, v in zip(st.t, st.ttft_p50) if lo <= t < hi and v is not None]
                row[f"{phase}_real_ms"] = statistics.median(rt) * 1000
                row[f"{phase}_sim_ms"] = statistics.median(sp) * 1000 if sp else None
            rows.append(row)
    lines = [f"Trace: {'closed loop, the real phases (clients)' if a.closed_loop else 'open-loop replay of the real start times'}, tick {a.dt:g} s.",
             f"Stack slowdown fitted from the real 1-replica burst throughput: {factor:.2f}x the bare engine's TPOT.",
             "", "| policy | profile | replicas: mean abs error | 2nd replica serving real / sim (s) | "
             "burst p50 TTFT real / sim ms | plateau p50 TTFT real / sim ms |", "|---|---|---|---|---|---|"]
    for r in rows:
        def ms(x): return "-" if x is None else f"{x:.0f}"
        lines.append(f"| {r['policy']} | {r['profile']} | {r['replica_mae']:.2f} | {ms(r['real_2nd_s'])} / "
                     f"{ms(r['sim_2nd_s'])} | {ms(r['burst_real_ms'])} / {ms(r['burst_sim_ms'])} | "
                     f"{ms(r['plateau_real_ms'])} / {ms(r['plateau_sim_ms'])} |")
    text = "\n".join(lines)
    print(text)
    (OUT / "sim_validation.md").write_text(text + "\n")
    _plot_validation(runs, sims, ROOT / "benchmarks" / "sim_validation.png")


def _plot_validation(runs: dict, sims: dict[str, SimResult], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(sims), figsize=(12, 6), sharex=True)
    for col, (name, res) in enumerate(sims.items()):
        real = runs[name]
        ax, bx = axes[0][col], axes[1][col]
        ax.step([s["t"] for s in real["samples"]], [s["running"] or 0 for s in real["samples"]], where="post",
                color="tab:red", label="real: running")
        ax.step(res.series.t, res.series.running, where="post", color="tab:blue", linestyle="--", label="sim: running")
        ax.set_ylim(0, 2.5)
        ax.set_title(f"{name}: replicas")
        ax.legend(loc="upper right", fontsize=8)
        rt = sorted((r["t"], r["ttft"]) for r in real["requests"] if r["ttft"] is not None)
        win = [(t0, [v for t, v in rt if t0 <= t < t0 + 5]) for t0 in range(0, 230, 5)]
        bx.plot([t0 + 2.5 for t0, v in win if v], [statistics.median(v) * 1000 for _, v in win if v], color="tab:red",
                label="real: p50 TTFT (5 s windows)")
        bx.plot(res.series.t, [None if v is None else v * 1000 for v in res.series.ttft_p50], color="tab:blue",
                linestyle="--", label="sim: p50 TTFT")
        bx.set_yscale("log")
        bx.set_ylabel("ms")
        bx.set_xlabel("seconds")
        bx.legend(loc="upper right", fontsize=8)
    fig.suptitle("Simulator (calibrated cpu-tiny profile) vs the real autoscaling run")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"plot: {out}")


def scale(a: argparse.Namespace) -> None:
    """Sim wall time vs fleet size and request count (a day, diurnal, H100 profile)."""
    prof = load_profile("h100-llama3-8b")
    # Agent-like load so that 1M users need ~10k replicas at the peak: one request per 20 s, 2k in / 1k out.
    rows = []
    for replicas, users in a.grid:
        tc = TraceConfig(duration_s=a.duration_s, users=users, requests_per_user_per_h=180, prompt_tokens=2000,
                         output_tokens=1000)
        trace = load_trace("diurnal", tc, a.dt)
        fc = FleetConfig(replicas_min=1, replicas_max=replicas, node_provision_s=300, sample_s=300)
        t = time.perf_counter()
        res = simulate(trace, prof, make_policy("tide", 1, replicas, {"replica_capacity": prof.max_num_seqs}), "tide",
                       fc, progress=lambda f: print(f"    {f:.0%}", end="", flush=True))
        wall = time.perf_counter() - t
        rows.append((replicas, users, trace.total, res.max_running, wall))
        print(f"\n  replicas_max {replicas:,}, users {users:,}: {trace.total:,} requests, peak {res.max_running:,} "
              f"running, {wall:.1f}s", flush=True)
    base = rows[0][4]
    lines = [f"Simulated {a.duration_s / 3600:g} h, diurnal, tick {a.dt:g} s, h100-llama3-8b, tide policy, one core "
             "(taskset -c 0)", "", "| replicas max | peak running | users | requests | wall s | vs first |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r:,} | {m:,} | {u:,} | {n:,} | {w:.1f} | {w / base:.1f}x |" for r, u, n, m, w in rows]
    text = "\n".join(lines)
    print(text)
    (OUT / f"sim_scale_dt{a.dt:g}.md").write_text(text + "\n")


def opening_fleet(trace: Trace, prof, utilization: float = 0.8) -> int:
    """Replicas for the trace's first minute at `utilization` of a batch (the simulator's own throughput
    formula), so a run starts as an already deployed fleet would, not from one cold replica."""
    rate = float(trace.arrivals[: max(int(60 / trace.dt), 1)].mean()) / trace.dt
    b = utilization * prof.max_num_seqs
    per_replica = b / (float(trace.output_tokens[0]) * float(prof.tpot(b))
                       + b * float(trace.prompt_tokens[0]) / prof.prefill_tokens_per_s)
    return max(1, int(np.ceil(rate / per_replica)))


def compare(a: argparse.Namespace) -> None:
    """Tide (defaults, and tuned settings) vs Serve's default policy on the built-in traces."""
    prof = load_profile("h100-llama3-8b")
    variants = {"tide": {}, **{f"tide {k}": v for k, v in _TUNING.items()}}
    all_rows = []
    for kind in ("poisson", "diurnal", "flash-crowd"):
        tc = TraceConfig(duration_s=86_400 if kind == "diurnal" else 3600, users=20_000, requests_per_user_per_h=30)
        trace = load_trace(kind, tc, a.dt)
        fc = FleetConfig(replicas_min=1, replicas_max=a.replicas_max, node_provision_s=120, sample_s=60,
                         initial_replicas=opening_fleet(trace, prof))
        results = [simulate(trace, prof, make_policy("serve-default", 1, a.replicas_max), "serve-default", fc)]
        # Serve's rule aimed at the same per-replica load as Tide (80% of a 256-request batch): same target,
        # different mechanics (ongoing-request average + delays vs engine queue depth + look-ahead)
        same = {"target_ongoing_requests": 0.8 * prof.max_num_seqs}
        results.append(simulate(trace, prof, make_policy("serve-default", 1, a.replicas_max, same), "serve target 205", fc))
        for label, over in variants.items():
            pol = make_policy("tide", 1, a.replicas_max, {"replica_capacity": prof.max_num_seqs, **over})
            results.append(simulate(trace, prof, pol, label, fc))
        print(table(results), flush=True)
        all_rows.append(table(results))
        plot(results[:3], OUT / f"sim_{kind}.png", f"{kind}: Serve's default policy vs Tide's (h100-llama3-8b)")
    (OUT / "sim_compare.md").write_text("\n\n".join(all_rows) + "\n")


def steps(a: argparse.Namespace) -> None:
    """The step-up rule at both ends: a fixed 4 per decision vs 4-or-100% of the fleet (the default), on the
    scale day (10,000 replicas, 1,000,000 users, starting at 1 replica) and on the 200-replica traces."""
    prof = load_profile("h100-llama3-8b")
    rules = {"fixed 4": {"max_step_up_percent": 0}, "4 or 100% (default)": {}}
    results = []
    tc = TraceConfig(duration_s=86_400, users=1_000_000, requests_per_user_per_h=180, prompt_tokens=2000,
                     output_tokens=1000)
    trace = load_trace("diurnal", tc, a.scale_dt)
    fc = FleetConfig(replicas_min=1, replicas_max=10_000, node_provision_s=300, sample_s=300)
    for label, over in rules.items():
        pol = make_policy("tide", 1, 10_000, {"replica_capacity": prof.max_num_seqs, **over})
        results.append(simulate(trace, prof, pol, f"scale day, {label}", fc))
        print(table(results[-1:]), flush=True)
    for kind in ("poisson", "diurnal", "flash-crowd"):
        tc = TraceConfig(duration_s=86_400 if kind == "diurnal" else 3600, users=20_000, requests_per_user_per_h=30)
        trace = load_trace(kind, tc, a.dt)
        fc = FleetConfig(replicas_min=1, replicas_max=200, node_provision_s=120, sample_s=60,
                         initial_replicas=opening_fleet(trace, prof))
        for label, over in rules.items():
            pol = make_policy("tide", 1, 200, {"replica_capacity": prof.max_num_seqs, **over})
            results.append(simulate(trace, prof, pol, f"{kind}, {label}", fc))
            print(table(results[-1:]), flush=True)
    text = table(results)
    print(text)
    (OUT / "sim_steps.md").write_text(text + "\n")


def flash(a: argparse.Namespace) -> None:
    """The backlog rule: a flash crowd's queue sized to drain within backlog_drain_s (60 s, the default; 120 s)
    vs held all at once (0, the rule before), on the 200-replica traces."""
    prof = load_profile("h100-llama3-8b")
    rules = {"drain 0 (all at once)": {"backlog_drain_s": 0}, "drain 60s (default)": {},
             "drain 120s": {"backlog_drain_s": 120}}
    results = []
    for kind in ("flash-crowd", "poisson", "diurnal"):
        tc = TraceConfig(duration_s=86_400 if kind == "diurnal" else 3600, users=20_000, requests_per_user_per_h=30)
        trace = load_trace(kind, tc, a.dt)
        fc = FleetConfig(replicas_min=1, replicas_max=200, node_provision_s=120, sample_s=60,
                         initial_replicas=opening_fleet(trace, prof))
        runs = []
        for label, over in rules.items():
            pol = make_policy("tide", 1, 200, {"replica_capacity": prof.max_num_seqs, **over})
            runs.append(simulate(trace, prof, pol, f"{kind}, {label}", fc))
            print(table(runs[-1:]), flush=True)
        if kind == "flash-crowd":
            plot(runs, OUT / "sim_flash.png", "flash crowd: backlog sized to drain in 0 / 60 / 120 s (h100-llama3-8b)")
        results += runs
    text = table(results)
    print(text)
    (OUT / "sim_flash.md").write_text(text + "\n")


def parallel(a: argparse.Namespace) -> None:
    """One diurnal day, the same users, served by Llama-3-8B on one H100 per replica or Llama-3-70B on four
    (tensor parallel): the GPU-hours, cost and latency a bigger model costs when a replica is its whole group."""
    tc = TraceConfig(duration_s=86_400, users=a.users, requests_per_user_per_h=30)
    trace = load_trace("diurnal", tc, a.dt)
    results = []
    for name in ("h100-llama3-8b", "h100-llama3-70b-tp4"):
        prof = load_profile(name)
        fc = FleetConfig(replicas_min=1, replicas_max=a.replicas_max, node_provision_s=300, sample_s=300,
                         gpus_per_node=8, price_per_gpu_h=a.price_per_gpu_h,
                         initial_replicas=opening_fleet(trace, prof))
        pol = make_policy("tide", 1, a.replicas_max, {"replica_capacity": prof.max_num_seqs,
                                                      "replica_start_s": prof.cold_start_s})
        results.append(simulate(trace, prof, pol, f"tide, {name}", fc))
        print(table(results[-1:]), flush=True)
    text = table(results)
    print(text)
    (OUT / "sim_parallel.md").write_text(text + "\n")
    plot(results, OUT / "sim_parallel.png", f"diurnal day, {a.users:,} users: 8B on 1 GPU vs 70B on 4 (TP-4)")


_TUNING: dict[str, dict] = {  # variations around the current defaults (target_utilization 0.9, downscale 30 s)
    "upscale 0s": {"upscale_delay_s": 0},
    "step 16": {"max_step_up": 16},
    "util 0.7": {"target_utilization": 0.7},
    "util 0.8": {"target_utilization": 0.8},
    "down 60s": {"downscale_delay_s": 60},
    "down 120s": {"downscale_delay_s": 120},
    "old defaults (util 0.8, down 60s)": {"target_utilization": 0.8, "downscale_delay_s": 60},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--dt", type=float, default=0.5)
    v.add_argument("--open-loop", dest="closed_loop", action="store_false",
                   help="replay the real request start times instead of the real closed-loop clients")
    s = sub.add_parser("scale")
    s.add_argument("--dt", type=float, default=2.0)
    s.add_argument("--duration-s", type=float, default=86_400)
    s.add_argument("--grid", type=lambda x: tuple(int(v) for v in x.split("x")), nargs="+",
                   default=[(100, 10_000), (1_000, 100_000), (10_000, 1_000_000), (10_000, 10_000), (100, 1_000_000)],
                   help="REPLICASxUSERS pairs")
    c = sub.add_parser("compare")
    c.add_argument("--dt", type=float, default=1.0)
    c.add_argument("--replicas-max", type=int, default=200)
    st = sub.add_parser("steps")
    st.add_argument("--dt", type=float, default=1.0)
    st.add_argument("--scale-dt", type=float, default=2.0)
    fl = sub.add_parser("flash")
    fl.add_argument("--dt", type=float, default=1.0)
    pa = sub.add_parser("parallel")
    pa.add_argument("--dt", type=float, default=1.0)
    pa.add_argument("--users", type=int, default=20_000)
    pa.add_argument("--replicas-max", type=int, default=400)
    pa.add_argument("--price-per-gpu-h", type=float, default=2.5)
    a = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    {"validate": validate, "scale": scale, "compare": compare, "steps": steps, "flash": flash,
     "parallel": parallel}[a.cmd](a)


if __name__ == "__main__":
    main()
