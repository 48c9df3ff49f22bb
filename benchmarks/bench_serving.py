"""Serving overhead, side by side: bare vLLM's OpenAI server vs Tide vs Ray Serve LLM, same model and engine.

Each server runs alone in turn (the order rotates every round), with the engine pinned to the last core and
the load generator to core 0, at each concurrency, streaming completions of a fixed length. Prints output
tokens/s (median over rounds), TTFT p50/p99 (all requests pooled) and ratios to bare vLLM.

    python benchmarks/bench_serving.py --rounds 3            # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from serving.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / ".models" / "tiny-llama"
EAGER = os.environ.get("TIDE_BENCH_EAGER", "0") == "1"  # compiled (inductor) by default: far less CPU per step
ENGINE_ARGS = {"dtype": "float32", "enforce_eager": EAGER, "max_model_len": 1024, "max_num_seqs": 64}
ALL_CORES = sorted(os.sched_getaffinity(0))
ENGINE_CORE = os.environ.get("TIDE_BENCH_BIND", str(ALL_CORES[-1]))  # VLLM_CPU_OMP_THREADS_BIND for all
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": ENGINE_CORE}
SERVERS = ("vllm", "tide", "tide-front", "rayllm")
PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def _unpin() -> None:
    os.sched_setaffinity(0, ALL_CORES)  # servers may use every core; only the load generator is pinned


@dataclass
class Server:
    name: str
    cmd: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    extra_body: dict = field(default_factory=dict)  # added to every request body
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, logdir: Path) -> None:
        self.log = logdir / f"{self.name}.log"
        env = {**os.environ, **ENGINE_ENV, **self.env}
        self.proc = subprocess.Popen(self.cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=_unpin, cwd=ROOT)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=60)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None
        time.sleep(3)  # let the engine processes and Ray leave


def make_servers(tmp: Path) -> dict[str, Server]:
    py = sys.executable
    vllm_cmd = [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL), "--served-model-name", "tiny",
                "--host", "127.0.0.1", "--port", "{port}", "--dtype", "float32", *(["--enforce-eager"] if EAGER else []),
                "--max-model-len", "1024", "--max-num-seqs", "64", "--no-enable-log-requests"]
    ports = {name: free_port() for name in SERVERS}
    cfg = {"server": {"host": "127.0.0.1", "port": ports["tide"]},
           "models": [{"name": "tiny", "model": str(MODEL), "engine_args": ENGINE_ARGS, "env": ENGINE_ENV,
                       "replicas": {"min": 1, "max": 1, "num_cpus": 1}}]}
    tide_yaml = tmp / "tide.yaml"
    tide_yaml.write_text(yaml.safe_dump(cfg))
    tide_cmd = [str(Path(py).parent / "tide"), "serve", str(tide_yaml), "--port", "{port}"]
    front = {**cfg, "server": {**cfg["server"], "port": ports["tide-front"], "front": "haproxy",
                               "ingress_port": free_port()}}
    front_yaml = tmp / "tide-front.yaml"
    front_yaml.write_text(yaml.safe_dump(front))
    front_cmd = [str(Path(py).parent / "tide"), "serve", str(front_yaml), "--port", "{port}"]
    rayllm_cmd = [py, str(ROOT / "benchmarks" / "rayllm_server.py"), "--model", str(MODEL), "--port", "{port}",
                  "--engine-args", json.dumps(ENGINE_ARGS), "--env", json.dumps(ENGINE_ENV)]
    out = {}
    for name, cmd in (("vllm", vllm_cmd), ("tide", tide_cmd), ("tide-front", front_cmd), ("rayllm", rayllm_cmd)):
        out[name] = Server(name, [c.replace("{port}", str(ports[name])) for c in cmd], ports[name])
    return out


async def wait_ready(server: Server, timeout_s: float = 600) -> float:
    """Ready means the engine answered a real completion, not that a route exists."""
    start = time.monotonic()
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - start < timeout_s:
            if server.proc is not None and server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited early; see {server.log}")
            try:
                async with s.post(f"{server.url}/v1/completions", json=body, timeout=aiohttp.ClientTimeout(10)) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(1)
    raise RuntimeError(f"{server.name} not ready after {timeout_s}s; see {server.log}")


@dataclass
class Sample:
    ttft_s: float
    latency_s: float
    tokens: int


RETRIED: list[str] = []  # requests sent again after a kept-alive connection was closed under them


async def one_request(s: aiohttp.ClientSession, url: str, max_tokens: int, extra: dict | None = None) -> Sample:
    try:
        return await _one_request(s, url, max_tokens, extra)
    except aiohttp.ServerDisconnectedError:  # a pooled connection the server had just closed: once more
        RETRIED.append(url)
        return await _one_request(s, url, max_tokens, extra)


async def _one_request(s: aiohttp.ClientSession, url: str, max_tokens: int, extra: dict | None = None) -> Sample:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 1.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    chunks = 0
    async with s.post(f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        buf = b""
        async for data in r.content.iter_any():
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: ") or event == b"data: [DONE]":
                    continue
                obj = json.loads(event[6:])
                if obj.get("choices") and obj["choices"][0].get("text"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                if obj.get("usage"):
                    tokens = obj["usage"]["completion_tokens"]
    end = time.perf_counter() - t0
    return Sample(ttft if ttft is not None else end, end, tokens or chunks)


async def run_load(url: str, concurrency: int, n_requests: int, max_tokens: int, extra: dict | None = None
                   ) -> tuple[float, list[Sample]]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        for _ in range(2):  # warm the connection pool and the engine
            await one_request(s, url, 4, extra)
        todo = iter(range(n_requests))
        samples: list[Sample] = []

        async def worker() -> None:
            for _ in todo:
                samples.append(await one_request(s, url, max_tokens, extra))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return sum(x.tokens for x in samples) / wall, samples


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def summarize(results: dict, servers: list[str], concs: list[int]) -> str:
    lines = ["| server | conc | tok/s (median) | tok/s per round | TTFT p50 ms | TTFT p99 ms | streamed | "
             "tok/s vs vLLM | TTFT p50 added ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in concs:
        base = results.get(("vllm", c))
        base_tps = statistics.median(base["tps"]) if base else None
        base_p50 = pct([x.ttft_s for x in base["samples"]], 50) * 1000 if base else None
        for name in servers:
            r = results.get((name, c))
            if not r:
                continue
            tps = statistics.median(r["tps"])
            ttfts = [x.ttft_s for x in r["samples"]]
            p50, p99 = pct(ttfts, 50) * 1000, pct(ttfts, 99) * 1000
            streamed = sum(x.ttft_s < 0.5 * x.latency_s for x in r["samples"]) / len(r["samples"])
            ratio = f"{tps / base_tps:.2f}x" if base_tps else "-"
            added = f"{p50 - base_p50:+.1f}" if base_p50 is not None else "-"
            rounds = "/".join(f"{t:,.0f}" for t in r["tps"])
            lines.append(f"| {name} | {c} | {tps:,.0f} | {rounds} | {p50:.1f} | {p99:.1f} | {streamed:.0%} | "
                         f"{ratio} | {added} |")
    return "\n".join(lines)


async def main_async(a: argparse.Namespace) -> None:
    if not MODEL.exists():
        from serving.tools.tiny_model import build_tiny_model

        build_tiny_model(MODEL)
    os.sched_setaffinity(0, {ALL_CORES[0]})  # the load generator stays off the engine's core
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tide-bench-"))
    servers = make_servers(tmp)
    order = [s for s in a.servers]
    results: dict = {}
    for rnd in range(a.rounds):
        rot = order[rnd % len(order):] + order[: rnd % len(order)]
        for name in rot:
            srv = servers[name]
            print(f"round {rnd + 1}/{a.rounds}: starting {name} ...", flush=True)
            srv.start(tmp)
            try:
                ready = await wait_ready(srv)
                print(f"  {name} ready in {ready:.0f}s", flush=True)
                top = max(a.concurrency)  # warm-up: the first batches of each size are slow on every server
                await run_load(srv.url, top, 2 * top, a.max_tokens, srv.extra_body)
                for c in a.concurrency:
                    n = max(a.min_requests, c * a.requests_per_worker)
                    tps, samples = await run_load(srv.url, c, n, a.max_tokens, srv.extra_body)
                    r = results.setdefault((name, c), {"tps": [], "samples": []})
                    r["tps"].append(tps)
                    r["samples"].extend(samples)
                    p50 = pct([x.ttft_s for x in samples], 50) * 1000
                    print(f"  {name} c={c}: {tps:,.0f} tok/s, TTFT p50 {p50:.1f} ms ({n} requests)", flush=True)
            finally:
                srv.stop()
    table = summarize(results, order, a.concurrency)
    header = (f"Serving benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, tiny model, "
              f"{a.max_tokens} tokens/request streamed, {a.rounds} rounds alternating\n"
              f"command: python benchmarks/bench_serving.py {' '.join(sys.argv[1:])}\n")
    if RETRIED:
        header += f"{len(RETRIED)} request(s) sent again after a closed keep-alive connection\n"
    print("\n" + header + "\n" + table)
    (out / "serving.md").write_text(header + "\n" + table + "\n")
    raw = {f"{k[0]}@{k[1]}": {"tps": v["tps"], "ttft_s": [x.ttft_s for x in v["samples"]]} for k, v in results.items()}
    (out / "serving.json").write_text(json.dumps(raw))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-worker", type=int, default=6)
    p.add_argument("--min-requests", type=int, default=16)
    p.add_argument("--servers", nargs="+", default=["vllm", "tide", "rayllm"], choices=SERVERS)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
