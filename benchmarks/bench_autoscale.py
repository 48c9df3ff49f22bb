"""Autoscaling policies side by side on one bursty trace: Tide's queue-depth policy vs Ray Serve's defaults.

Trace (closed-loop streaming clients): idle -> sharp burst -> plateau -> idle. Each policy runs the same
trace on a fresh Tide deployment (same model, machine, max 2 replicas). Prints replica-seconds, TTFT
p50/p99, failed requests and time from burst start to the second replica serving; writes a PNG of load
and replicas over time.

    python benchmarks/bench_autoscale.py            # ~15 min on 2 cores
    python benchmarks/bench_autoscale.py --rounds 2 # each policy twice, the order rotated each round
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import MODEL, ROOT, Server, free_port, pct, wait_ready  # noqa: E402

ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 16}
POLICIES = {
    "tide": {"autoscaling_policy": "tide", "autoscaling": {"replica_capacity": 8, "replica_start_s": 30}},
    # Ray Serve's built-in policy at its defaults (target_ongoing_requests=2, upscale 30 s, downscale 600 s)
    "serve-default": {"autoscaling_policy": "serve", "serve_autoscaling": {"target_ongoing_requests": 2}},
    # Ray Serve LLM's documented defaults (the installed 2.60 build sets target_ongoing_requests to 1e9)
    "serve-llm": {"autoscaling_policy": "serve",
                  "serve_autoscaling": {"target_ongoing_requests": 16, "upscale_delay_s": 10,
                                        "downscale_delay_s": 300}},
}


def phases(scale: float) -> list[tuple[str, float, int]]:
    return [("idle", 15 * scale, 0), ("burst", 60 * scale, 24), ("plateau", 60 * scale, 6), ("idle", 90 * scale, 0)]


async def run_trace(url: str, trace: list[tuple[str, float, int]]) -> dict:
    samples, requests = [], []
    active = {"target": 0, "inflight": 0}
    t0 = time.monotonic()
    stop = asyncio.Event()

    async def client(i: int, s: aiohttp.ClientSession):
        while not stop.is_set():
            if i >= active["target"]:
                await asyncio.sleep(0.05)
                continue
            body = {"model": "tiny", "prompt": "hello", "max_tokens": 64, "ignore_eos": True, "stream": True}
            start = time.monotonic()
            ttft, ok = None, False
            active["inflight"] += 1
            try:
                async with s.post(f"{url}/v1/completions", json=body) as r:
                    async for line in r.content:
                        if ttft is None and line.startswith(b"data: {"):
                            ttft = time.monotonic() - start
                        if line.startswith(b"data: [DONE]"):
                            ok = r.status == 200
            except Exception:
                ok = False
            finally:
                active["inflight"] -= 1
            requests.append({"t": start - t0, "ttft": ttft, "ok": ok})

    async def sampler(s: aiohttp.ClientSession):
        while not stop.is_set():
            try:
                async with s.get(f"{url}/tide/status") as r:
                    m = (await r.json())["models"]["tiny"]
            except Exception:
                m = {"running": None, "replicas": None}
            samples.append({"t": time.monotonic() - t0, "load": active["inflight"], "running": m["running"],
                            "replicas": m["replicas"]})
            await asyncio.sleep(1.0)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        tasks = [asyncio.create_task(client(i, s)) for i in range(max(c for _, _, c in trace))]
        tasks.append(asyncio.create_task(sampler(s)))
        for name, dur, conc in trace:
            active["target"] = conc
            print(f"    {name}: {conc} clients for {dur:.0f}s", flush=True)
            await asyncio.sleep(dur)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"samples": samples, "requests": requests}


DOWNSCALE_DELAY_S = {"tide": 30.0, "serve-default": 600.0, "serve-llm": 300.0}  # each policy's own setting


def summarize(name: str, data: dict, burst_at: float) -> dict:
    s, reqs = data["samples"], data["requests"]
    rs = 0.0
    for a, b in zip(s, s[1:]):
        rs += (a["running"] or 0) * (b["t"] - a["t"])
    # Replicas still up when the trace ends stay until the policy's downscale delay runs out: charge them.
    last_load = max((x["t"] for x in s if x["load"] > 0), default=0.0)
    extra = max((s[-1]["running"] or 1) - 1, 0) if s else 0
    tail = extra * max(DOWNSCALE_DELAY_S[name.split(" #")[0]] - (s[-1]["t"] - last_load), 0.0) if s else 0.0
    ttfts = [r["ttft"] for r in reqs if r["ttft"] is not None]
    second = next((x["t"] for x in s if (x["running"] or 0) >= 2 and x["t"] >= burst_at), None)
    return {"policy": name, "replica_s": rs, "replica_s_until_min": rs + tail, "requests": len(reqs), "failed": sum(not r["ok"] for r in reqs),
            "ttft_p50_ms": pct(ttfts, 50) * 1000 if ttfts else None,
            "ttft_p99_ms": pct(ttfts, 99) * 1000 if ttfts else None,
            "to_second_replica_s": None if second is None else second - burst_at}


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3 * len(results)), sharex=True)
    for ax, (name, data) in zip(axes if len(results) > 1 else [axes], results.items()):
        t = [x["t"] for x in data["samples"]]
        ax.plot(t, [x["load"] for x in data["samples"]], color="tab:blue", label="requests in flight (load)")
        ax.set_ylabel("requests")
        ax2 = ax.twinx()
        ax2.step(t, [x["running"] or 0 for x in data["samples"]], color="tab:red", where="post", label="running")
        ax2.step(t, [x["replicas"] or 0 for x in data["samples"]], color="tab:orange", where="post", linestyle="--",
                 label="replicas (incl. starting)")
        ax2.set_ylim(0, 3)
        ax2.set_ylabel("replicas")
        ax.set_title(name)
        ax.legend(loc="upper left")
        ax2.legend(loc="upper right")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


async def main_async(a: argparse.Namespace) -> None:
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    trace = phases(a.scale)
    if a.from_json:  # re-draw the table and plot from a finished run
        report(json.loads(Path(a.from_json).read_text())["runs"], trace, out)
        return
    tmp = Path(tempfile.mkdtemp(prefix="tide-autoscale-"))
    results = {}
    for rnd in range(a.rounds):
        order = a.policies[rnd % len(a.policies):] + a.policies[:rnd % len(a.policies)]  # alternate who goes first
        for name in order:
            key = name if a.rounds == 1 else f"{name} #{rnd + 1}"
            results[key] = await run_policy(name, trace, tmp)
            print(f"  {summarize(key, results[key], trace[0][1])}", flush=True)
    report(results, trace, out)


async def run_policy(name: str, trace: list[tuple[str, float, int]], tmp: Path) -> dict:
    port = free_port()
    # Serve's policies count requests at Serve's handles, which the HAProxy front bypasses: they run on the
    # ingress front (config load refuses them behind HAProxy); Tide's runs on the default front.
    front = {"front": "ingress"} if POLICIES[name]["autoscaling_policy"] == "serve" else {}
    cfg = {"server": {"host": "127.0.0.1", "port": port, **front},
           "models": [{"name": "tiny", "model": str(MODEL), "engine_args": ENGINE,
                       "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                       "replicas": {"min": 1, "max": 2, "num_cpus": 0.5}, **POLICIES[name]}]}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    srv = Server(name, [[str(Path(sys.executable).parent / "tide"), "serve", str(path)]],
                 [(f"http://127.0.0.1:{port}", "tiny")])
    print(f"{name}: starting", flush=True)
    srv.start(tmp)
    try:
        await wait_ready(srv)
        return await run_trace(srv.targets[0][0], trace)
    finally:
        srv.stop()


def report(results: dict, trace: list[tuple[str, float, int]], out: Path) -> None:
    rows = [summarize(name, data, trace[0][1]) for name, data in results.items()]
    def base_of(r: dict) -> dict | None:  # serve-default of the same round
        rnd = r["policy"].partition(" #")[2]
        return next((b for b in rows if b["policy"] == ("serve-default" + (f" #{rnd}" if rnd else ""))), None)

    lines = ["| policy | replica-s in trace | replica-s until back at min | vs serve-default | TTFT p50 ms | "
             "TTFT p99 ms | requests | failed | burst -> 2nd replica serving (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = base_of(r)
        ratio = f"{r['replica_s_until_min'] / base['replica_s_until_min']:.2f}x" if base else "-"
        second = "never" if r["to_second_replica_s"] is None else f"{r['to_second_replica_s']:.0f}"
        lines.append(f"| {r['policy']} | {r['replica_s']:.0f} | {r['replica_s_until_min']:.0f} | {ratio} | "
                     f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['requests']} | {r['failed']} | {second} |")
    png = out / "autoscale.png"
    plot(results, png)
    header = (f"Autoscaling benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, tiny model, trace "
              f"{' -> '.join(f'{n} {d:.0f}s x{c}' for n, d, c in trace)}\n"
              f"command: python benchmarks/bench_autoscale.py {' '.join(sys.argv[1:])}\nplot: {png}\n")
    table = "\n".join(lines)
    print("\n" + header + "\n" + table)
    (out / "autoscale.md").write_text(header + "\n" + table + "\n")
    (out / "autoscale.json").write_text(json.dumps({"rows": rows, "runs": results}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--scale", type=float, default=1.0, help="stretch (>1) or shrink the trace's phases")
    p.add_argument("--rounds", type=int, default=1, help="run every policy this many times (order rotated)")
    p.add_argument("--from-json", help="re-report a finished run (benchmarks/out/autoscale.json)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
