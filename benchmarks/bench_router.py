"""Request routers side by side: Ray Serve's default (power of two choices) vs Tide's prefix-aware router.

Workload: multi-turn chat conversations that share a few long system prompts (8 prompts of ~1,500 chars by
default), closed-loop clients, greedy decoding so both routers see the same prompts. Each router gets a
fresh deployment of the tiny model on 2 replicas with vLLM prefix caching on, on one Ray instance started
here; rounds alternate the order. Prints TTFT p50/p99, output tokens/s, and vLLM's own prefix-cache hit rate
(read from each engine's `vllm:prefix_cache_{queries,hits}` counters), plus the prefix/serve ratios.

    flock /tmp/tide-ray.lock python benchmarks/bench_router.py        # ~5 min on 2 cores

The counters live in each replica's Prometheus registry, which Tide does not export, so the deployed class
here is LLMServer plus one read-only method (`prefix_cache`); serving is unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ray import serve  # noqa: E402

import serving.deployments as deployments  # noqa: E402
from serving.config import TideConfig, parse_config  # noqa: E402
from serving.config import APP_NAME, deployment_name  # noqa: E402
from serving.replica.llm import LLMServer  # noqa: E402
from serving.launcher import deploy, free_port, shutdown, start_ray  # noqa: E402

MODEL = ROOT / ".models" / "tiny-llama"
ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048, "max_num_seqs": 32,
               "enable_prefix_caching": True}
WORDS = ("order shipment invoice refund parcel customer warehouse courier tracking address delivery return "
         "payment discount account label pallet customs schedule contract supplier priority express").split()


class BenchServer(LLMServer):
    """LLMServer plus a read of vLLM's prefix-cache counters (the engine keeps them; Tide does not export them)."""

    async def prefix_cache(self) -> dict[str, Any]:
        from prometheus_client import REGISTRY

        out: dict[str, Any] = {"replica": serve.get_replica_context().replica_id.unique_id, "queries": 0.0,
                               "hits": 0.0}
        for fam in REGISTRY.collect():
            if fam.name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
                key = fam.name.split("_")[-1]
                out[key] = sum(s.value for s in fam.samples if s.name.endswith("_total"))
        return out


def system_prompts(n: int, chars: int) -> list[str]:
    """Distinct from their first characters on (each its own prefix), about `chars` long."""
    out = []
    for i in range(n):
        rng = random.Random(i)
        text = f"System prompt {i}: you are assistant number {i} of the logistics desk. "
        while len(text) < chars:
            text += " ".join(rng.choice(WORDS) for _ in range(12)) + ". "
        out.append(text[:chars])
    return out


@dataclass
class Conversation:
    system: str
    questions: list[str]


def conversations(n: int, turns: int, systems: list[str], seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    return [Conversation(systems[k % len(systems)],
                         [f"Question {t} of chat {k}: " + " ".join(rng.choice(WORDS) for _ in range(25)) + "?"
                          for t in range(turns)])
            for k in range(n)]


@dataclass
class Result:
    ttft_s: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    failed: int = 0
    cache: dict[str, float] = field(default_factory=dict)


async def one_turn(s: aiohttp.ClientSession, url: str, messages: list[dict], max_tokens: int) -> tuple[float, int, str]:
    body = {"model": "tiny", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens, text = None, 0, []
    async with s.post(f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        buf = b""
        async for data in r.content.iter_any():
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: {"):
                    continue
                obj = json.loads(event[6:])
                for c in obj.get("choices") or []:
                    piece = (c.get("delta") or {}).get("content")
                    if piece:
                        ttft = ttft if ttft is not None else time.perf_counter() - t0
                        text.append(piece)
                if obj.get("usage"):
                    tokens = obj["usage"]["completion_tokens"]
    return (ttft if ttft is not None else time.perf_counter() - t0), tokens, "".join(text)


async def run_workload(url: str, convs: list[Conversation], concurrency: int, max_tokens: int) -> Result:
    res = Result()
    todo = iter(convs)

    async def client(s: aiohttp.ClientSession) -> None:
        for conv in todo:
            messages = [{"role": "system", "content": conv.system}]
            for q in conv.questions:
                messages.append({"role": "user", "content": q})
                try:
                    ttft, tokens, reply = await one_turn(s, url, messages, max_tokens)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    res.failed += 1
                    break
                res.ttft_s.append(ttft)
                res.tokens += tokens
                messages.append({"role": "assistant", "content": reply})

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=300)) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(s) for _ in range(concurrency)))
        res.wall_s = time.perf_counter() - t0
    return res


async def cache_counters(tries: int = 60) -> dict[str, dict[str, float]]:
    """Each replica's cumulative counters; the call has no prompt, so it lands on random replicas: ask until
    every running replica has answered."""
    handle = serve.get_deployment_handle(deployment_name("tiny"), APP_NAME)
    want = serve.status().applications[APP_NAME].deployments[deployment_name("tiny")].replica_states.get("RUNNING", 0)
    seen: dict[str, dict[str, float]] = {}
    for _ in range(tries):
        r = await asyncio.wait_for(handle.prefix_cache.remote(), 30)
        seen[r["replica"]] = r
        if len(seen) >= want:
            break
    return seen


def config(router: str, port: int, replicas: int, kv_blocks: int | None) -> TideConfig:
    args = dict(ENGINE_ARGS, **({"num_gpu_blocks_override": kv_blocks} if kv_blocks else {}))
    return parse_config({
        # Serve's proxy rather than direct ingress: a deleted app's direct-ingress port was not handed out
        # again to the next deployment on the same Ray instance (NoAvailablePortError), the proxy's port stays.
        "server": {"host": "127.0.0.1", "port": port, "direct_ingress": False},
        "models": [{"name": "tiny", "model": str(MODEL), "engine_args": args, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                    "router": router,
                    "replicas": {"min": replicas, "max": replicas, "num_cpus": 0.5, "max_ongoing_requests": 64}}],
    })


async def phase(router: str, a: argparse.Namespace, port: int, convs: list[Conversation]) -> Result:
    cfg = config(router, port, a.replicas, a.kv_blocks)
    t0 = time.monotonic()
    url = deploy(cfg, say=lambda m: None)
    print(f"  router={router}: deployed in {time.monotonic() - t0:.0f}s", flush=True)
    try:
        warm = conversations(a.concurrency, 1, system_prompts(1, 64), seed=99)  # no shared prefix with the load
        await run_workload(url, warm, a.concurrency, 4)
        before = await cache_counters()
        res = await run_workload(url, convs, a.concurrency, a.max_tokens)
        after = await cache_counters()
        res.cache = {k: sum(after[r][k] - before.get(r, {}).get(k, 0.0) for r in after) for k in ("queries", "hits")}
        res.cache["per_replica_hits"] = [after[r]["hits"] - before.get(r, {}).get("hits", 0.0) for r in sorted(after)]
    finally:
        serve.delete(APP_NAME)  # blocks until the replicas (and their engines) are gone; Serve itself stays up
        time.sleep(2)
    print(f"  router={router}: {len(res.ttft_s)} turns in {res.wall_s:.1f}s, {res.tokens / res.wall_s:,.0f} tok/s, "
          f"TTFT p50 {pct(res.ttft_s, 50) * 1000:.1f} ms, hit rate {hit_rate(res):.1%}", flush=True)
    return res


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def hit_rate(r: Result) -> float:
    return r.cache["hits"] / r.cache["queries"] if r.cache.get("queries") else float("nan")


def table(results: dict[str, list[Result]]) -> str:
    rows = ["| router | turns | failed | TTFT p50 ms | TTFT p99 ms | tok/s (per round) | prefix-cache hit rate |",
            "|---|---|---|---|---|---|---|"]
    stats = {}
    for name, rs in results.items():
        ttfts = [t for r in rs for t in r.ttft_s]
        tps = [r.tokens / r.wall_s for r in rs]
        hits = sum(r.cache["hits"] for r in rs) / max(sum(r.cache["queries"] for r in rs), 1)
        stats[name] = (pct(ttfts, 50), pct(ttfts, 99), statistics.median(tps), hits)
        rows.append(f"| {name} | {len(ttfts)} | {sum(r.failed for r in rs)} | {stats[name][0] * 1000:.1f} | "
                    f"{stats[name][1] * 1000:.1f} | {stats[name][2]:,.0f} ({'/'.join(f'{t:,.0f}' for t in tps)}) | "
                    f"{hits:.1%} |")
    if {"serve", "prefix"} <= stats.keys():
        s, p = stats["serve"], stats["prefix"]
        rows.append(f"| prefix / serve | | | {p[0] / s[0]:.2f}x | {p[1] / s[1]:.2f}x | {p[2] / s[2]:.2f}x | "
                    f"{p[3] - s[3]:+.1%} (points) |")
    return "\n".join(rows)


async def main_async(a: argparse.Namespace) -> None:
    if not MODEL.exists():
        from serving.tools.tiny_model import build_tiny_model

        build_tiny_model(MODEL)
    deployments.LLMServer = BenchServer  # model_deployment() deploys this class (pickled by value from __main__)
    convs = conversations(a.conversations, a.turns, system_prompts(a.system_prompts, a.system_chars))
    port = free_port()
    owns = start_ray(config("serve", port, a.replicas, a.kv_blocks))
    results: dict[str, list[Result]] = {"serve": [], "prefix": []}
    try:
        for rnd in range(a.rounds):
            order = ["serve", "prefix"] if rnd % 2 == 0 else ["prefix", "serve"]
            print(f"round {rnd + 1}/{a.rounds}", flush=True)
            for router in order:
                results[router].append(await phase(router, a, port, convs))
    finally:
        shutdown(owns, serve_timeout_s=120, ray_timeout_s=60)  # it prints the table after
    header = (f"Router benchmark, {time.strftime('%Y-%m-%d')}, {a.replicas} replicas of the tiny model, "
              f"{a.conversations} conversations x {a.turns} turns, {a.system_prompts} system prompts of "
              f"{a.system_chars} chars, {a.concurrency} closed-loop clients, {a.max_tokens} tokens/turn, "
              f"{a.rounds} round(s)\ncommand: python benchmarks/bench_router.py {' '.join(sys.argv[1:])}\n")
    text = header + "\n" + table(results)
    print("\n" + text)
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "router.md").write_text(text + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1, help="each round runs both routers; the order alternates")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--conversations", type=int, default=96)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--system-prompts", type=int, default=8)
    p.add_argument("--system-chars", type=int, default=1500)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--kv-blocks", type=int, default=None,
                   help="vLLM num_gpu_blocks_override per replica (a small KV cache puts prefixes under pressure)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
