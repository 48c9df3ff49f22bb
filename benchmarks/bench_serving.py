"""Serving overhead, side by side: bare vLLM's OpenAI server vs Tide vs Ray Serve LLM, same model and engine.

Each server runs alone in turn (the order rotates every round), with the engine pinned to the last core and
the load generator to core 0, at each concurrency, streaming completions of a fixed length. Prints output
tokens/s (median over rounds), TTFT p50/p99 (all requests pooled) and ratios to bare vLLM, and the CPU time per
request of every process of the server that is not vLLM's EngineCore or a worker (bare vLLM: its API server;
Tide: HAProxy, the replica's server and AsyncLLM, the ingress, Ray's own processes).

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
from typing import Callable

import aiohttp
import yaml

from cpu_account import breakdown, cpu_by_process, cpu_delta, start_spies
from serving.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / ".models" / "tiny-llama"
EAGER = os.environ.get("TIDE_BENCH_EAGER", "0") == "1"  # compiled (inductor) by default: far less CPU per step
ENGINE_ARGS = {"dtype": "float32", "enforce_eager": EAGER, "max_model_len": 1024, "max_num_seqs": 64}
ALL_CORES = sorted(os.sched_getaffinity(0))
ENGINE_CORE = os.environ.get("TIDE_BENCH_BIND", str(ALL_CORES[-1]))  # VLLM_CPU_OMP_THREADS_BIND for all
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": ENGINE_CORE}
SERVERS = ("vllm", "tide", "tide-front", "tide-front-base", "rayllm", "rayllm-direct")
# Ray Serve 2.60's fastest LLM mode: the replica serves vLLM's own app, HAProxy in front (../shared/CPU-VLLM.md)
RAYLLM_DIRECT_ENV = {"RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
                     "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}
PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def _unpin() -> None:
    os.sched_setaffinity(0, ALL_CORES)  # servers may use every core; only the load generator is pinned
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job inherits SIGINT ignored


def stop_group(proc: subprocess.Popen, timeout_s: float) -> None:
    """Ctrl-C to a server's process group (as a terminal would), then SIGKILL if it outlasts `timeout_s`."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=timeout_s)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@dataclass
class Server:
    """One server under test: its processes (two bare vLLMs for two models) and where each model answers."""
    name: str
    cmds: list[list[str]]
    targets: list[tuple[str, str]]  # (base URL, model name); requests go round-robin over them
    env: dict[str, str] = field(default_factory=dict)
    extra_body: dict = field(default_factory=dict)  # added to every request body
    procs: list[subprocess.Popen] = field(default_factory=list)
    log: Path | None = None
    cwd: Path = ROOT  # Python and Ray's workers put the working directory first on sys.path

    def start(self, logdir: Path) -> None:
        self.log = logdir / f"{self.name}.log"
        env = {**os.environ, **ENGINE_ENV, **self.env}
        out = self.log.open("w")
        self.procs = [subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                       preexec_fn=_unpin, cwd=self.cwd) for cmd in self.cmds]

    def exited(self) -> bool:
        return any(p.poll() is not None for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            stop_group(proc, 60)
        if self.procs:
            time.sleep(3)  # let the engine processes and Ray leave
        self.procs = []


def make_servers(tmp: Path, base_tree: Path | None = None, n_models: int = 1) -> dict[str, Server]:
    """Every server the benchmark knows. `tide-front-base` is `tide-front` run from another checkout (`base_tree`,
    e.g. a `git worktree` of an older commit), for before/after comparisons in one alternating run. With
    `n_models` 2, Tide serves two models behind its one port and bare vLLM is two servers, one per model."""
    py = sys.executable
    names = ["tiny"] + [f"tiny{i + 1}" for i in range(1, n_models)]
    ports = {name: free_port() for name in SERVERS}

    def vllm_cmd(model: str, port: int) -> list[str]:
        return [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL), "--served-model-name", model,
                "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                *(["--enforce-eager"] if EAGER else []), "--max-model-len", "1024", "--max-num-seqs", "64",
                "--no-enable-log-requests"]

    def tide_yaml(name: str, **server: object) -> Path:
        cfg = {"server": {"host": "127.0.0.1", "port": ports[name], **server},
               "models": [{"name": m, "model": str(MODEL), "engine_args": ENGINE_ARGS, "env": ENGINE_ENV,
                           "replicas": {"min": 1, "max": 1, "num_cpus": 1}} for m in names]}
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def rayllm_cmd(name: str) -> list[str]:
        return [py, str(ROOT / "benchmarks" / "rayllm_server.py"), "--model", str(MODEL), "--port", str(ports[name]),
                "--engine-args", json.dumps(ENGINE_ARGS), "--env", json.dumps(ENGINE_ENV)]

    tide = str(Path(py).parent / "tide")
    front = {"front": "haproxy"}
    vllm_ports = [ports["vllm"]] + [free_port() for _ in names[1:]]
    out = {
        "vllm": Server("vllm", [vllm_cmd(m, p) for m, p in zip(names, vllm_ports)],
                       [(f"http://127.0.0.1:{p}", m) for m, p in zip(names, vllm_ports)]),
        "tide": Server("tide", [[tide, "serve", str(tide_yaml("tide"))]], []),
        "tide-front": Server("tide-front", [[tide, "serve", str(tide_yaml("tide-front", **front,
                                                                           ingress_port=free_port()))]], []),
        "tide-front-base": Server("tide-front-base", [[py, "-c", "from serving.cli import main; main()", "serve",
                                                       str(tide_yaml("tide-front-base", **front,
                                                                     ingress_port=free_port()))]], [],
                                  # Ray's workers inherit the driver's environment: the whole app runs that code
                                  env={"PYTHONPATH": str(base_tree)} if base_tree else {}, cwd=base_tree or ROOT),
        # Ray Serve LLM serves one model per app: never run with two models
        "rayllm": Server("rayllm", [rayllm_cmd("rayllm")], []),
        "rayllm-direct": Server("rayllm-direct", [rayllm_cmd("rayllm-direct")], [], env=RAYLLM_DIRECT_ENV),
    }
    for name, srv in out.items():
        if not srv.targets:
            srv.targets = [(f"http://127.0.0.1:{ports[name]}", m) for m in names]
    return out


async def wait_ready(server: Server, timeout_s: float = 600) -> float:
    """Ready means the engine answered a real completion, not that a route exists."""
    start = time.monotonic()
    todo = list(server.targets)
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - start < timeout_s:
            if server.exited():
                raise RuntimeError(f"{server.name} exited early; see {server.log}")
            url, model = todo[0]
            try:
                async with s.post(f"{url}/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 1},
                                  timeout=aiohttp.ClientTimeout(10)) as r:
                    if r.status == 200:
                        todo.pop(0)
                        if not todo:
                            return time.monotonic() - start
                        continue
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


async def one_request(s: aiohttp.ClientSession, target: tuple[str, str], max_tokens: int,
                      extra: dict | None = None) -> Sample:
    try:
        return await _one_request(s, target, max_tokens, extra)
    except aiohttp.ServerDisconnectedError:  # a pooled connection the server had just closed: once more
        RETRIED.append(target[0])
        return await _one_request(s, target, max_tokens, extra)


async def _one_request(s: aiohttp.ClientSession, target: tuple[str, str], max_tokens: int,
                       extra: dict | None = None) -> Sample:
    url, model = target
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 1.0, "ignore_eos": True,
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


async def run_load(targets: list[tuple[str, str]], concurrency: int, n_requests: int, max_tokens: int,
                   extra: dict | None = None, on_start: Callable[[], object] | None = None
                   ) -> tuple[float, list[Sample]]:
    """Output tokens/s over all targets, request k going to target k mod n (so each model gets an equal share)."""
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        for target in targets * 2:  # warm the connection pool and the engines
            await one_request(s, target, 4, extra)
        todo = iter(range(n_requests))
        samples: list[Sample] = []

        async def worker() -> None:
            for k in todo:
                samples.append(await one_request(s, targets[k % len(targets)], max_tokens, extra))

        if on_start is not None:  # after the warm-up: what it measures covers the timed requests only
            on_start()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return sum(x.tokens for x in samples) / wall, samples


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def summarize(results: dict, servers: list[str], concs: list[int]) -> str:
    lines = ["| server | conc | tok/s (median) | tok/s per round | TTFT p50 ms | TTFT p99 ms | streamed | "
             "tok/s vs vLLM | TTFT p50 added ms | CPU ms/req, not engine | vs vLLM's server |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in concs:
        base = results.get(("vllm", c))
        base_tps = statistics.median(base["tps"]) if base else None
        base_p50 = pct([x.ttft_s for x in base["samples"]], 50) * 1000 if base else None
        base_cpu = statistics.median(base["other_ms"]) if base else None
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
            cpu = statistics.median(r["other_ms"])  # every process but vLLM's EngineCore and workers
            cpu_ratio = f"{cpu / base_cpu:.2f}x" if base_cpu else "-"
            lines.append(f"| {name} | {c} | {tps:,.0f} | {rounds} | {p50:.1f} | {p99:.1f} | {streamed:.0%} | "
                         f"{ratio} | {added} | {cpu:.1f} | {cpu_ratio} |")
    return "\n".join(lines)


async def main_async(a: argparse.Namespace) -> None:
    if not MODEL.exists():
        from serving.tools.tiny_model import build_tiny_model

        build_tiny_model(MODEL)
    os.sched_setaffinity(0, {ALL_CORES[0]})  # the load generator stays off the engine's core
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tide-bench-"))
    if "tide-front-base" in a.servers and a.base_tree is None:
        raise SystemExit("--servers tide-front-base needs --base-tree (a checkout of the commit to compare against)")
    if a.models > 1 and {"rayllm", "rayllm-direct"} & set(a.servers):
        raise SystemExit("Ray Serve LLM's apps serve one model per port: leave rayllm out of --models 2 runs")
    servers = make_servers(tmp, a.base_tree, a.models)
    order = list(a.servers)
    results: dict = {}
    for rnd in range(a.rounds):
        rot = order[rnd % len(order):] + order[: rnd % len(order)]
        for name in rot:
            srv = servers[name]
            print(f"round {rnd + 1}/{a.rounds}: starting {name} ...", flush=True)
            srv.start(tmp)
            try:
                try:
                    ready = await wait_ready(srv)
                except RuntimeError as e:  # one server that cannot start does not lose the others' rounds
                    print(f"  {name} FAILED to start: {e}", flush=True)
                    order.remove(name)
                    continue
                print(f"  {name} ready in {ready:.0f}s", flush=True)
                top = max(a.concurrency)  # warm-up: the first batches of each size are slow on every server
                await run_load(srv.targets, top, 2 * top, a.max_tokens, srv.extra_body)
                for c in a.concurrency:
                    n = max(a.min_requests, c * a.requests_per_worker)
                    cpu0: dict = {}
                    spies: list[subprocess.Popen] = []
                    profile = a.py_spy and rnd == 0 and c == top

                    def started() -> None:
                        cpu0.update(cpu_by_process([q.pid for q in srv.procs]))
                        if profile:
                            spies.extend(start_spies(cpu0, name, a.py_spy, out))

                    tps, samples = await run_load(srv.targets, c, n, a.max_tokens, srv.extra_body, on_start=started)
                    for spy in spies:
                        try:
                            spy.wait(a.py_spy + 30)
                        except subprocess.TimeoutExpired:
                            spy.kill()
                    roles = cpu_delta(cpu0, cpu_by_process([q.pid for q in srv.procs]))
                    engine_s = roles.get("engine", 0.0)
                    other_s = sum(roles.values()) - engine_s
                    r = results.setdefault((name, c), {"tps": [], "samples": [], "other_ms": [], "engine_ms": [],
                                                       "roles_ms": []})
                    r["tps"].append(tps)
                    r["samples"].extend(samples)
                    r["other_ms"].append(1000 * other_s / n)
                    r["engine_ms"].append(1000 * engine_s / n)
                    r["roles_ms"].append({k: 1000 * v / n for k, v in roles.items()})
                    p50 = pct([x.ttft_s for x in samples], 50) * 1000
                    print(f"  {name} c={c}: {tps:,.0f} tok/s, TTFT p50 {p50:.1f} ms ({n} requests)", flush=True)
            finally:
                srv.stop()
    table = summarize(results, list(a.servers), a.concurrency)
    table += "\n\nCPU ms per request outside the engine, by process (median over rounds):\n\n" + breakdown(
        results, list(a.servers), a.concurrency)
    header = (f"Serving benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, tiny model, "
              f"{a.max_tokens} tokens/request streamed, {a.rounds} rounds alternating, {a.models} model(s)\n"
              f"command: python benchmarks/bench_serving.py {' '.join(sys.argv[1:])}\n")
    if RETRIED:
        header += f"{len(RETRIED)} request(s) sent again after a closed keep-alive connection\n"
    print("\n" + header + "\n" + table)
    (out / "serving.md").write_text(header + "\n" + table + "\n")
    raw = {f"{k[0]}@{k[1]}": {"tps": v["tps"], "ttft_s": [x.ttft_s for x in v["samples"]], "other_ms": v["other_ms"],
                              "engine_ms": v["engine_ms"], "roles_ms": v["roles_ms"]} for k, v in results.items()}
    (out / "serving.json").write_text(json.dumps(raw))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-worker", type=int, default=6)
    p.add_argument("--min-requests", type=int, default=16)
    p.add_argument("--servers", nargs="+", default=["vllm", "tide", "rayllm"], choices=SERVERS)
    p.add_argument("--models", type=int, default=1, choices=(1, 2),
                   help="2: two models (the same weights) share the load; Tide serves both behind its one port")
    p.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS",
                   help="profile the request-path Python processes (py-spy, raw stacks in benchmarks/out) for this "
                   "long during the first round's top-concurrency load; that round's figures then include its cost")
    p.add_argument("--base-tree", type=Path, default=None,
                   help="another checkout (e.g. `git worktree add /tmp/base COMMIT`), served as tide-front-base")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
