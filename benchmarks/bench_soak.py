"""Soak: mixed streaming/non-streaming load with random client disconnects and one replica kill.

Starts `tide serve benchmarks/soak.yaml`, then for `--duration` seconds runs `--concurrency` closed-loop clients
against model `tiny` (2 replicas): chat and text completions, half streamed, a share of them disconnected on
purpose (mid-stream, or by a short client timeout). Half-way, one `tiny` replica actor is killed (`ray.kill`)
and Serve replaces it. With `--deploy-at`, a rolling `tide deploy` (a changed engine argument and queue
bound: the model's replicas and the ingress both roll) runs later in the same load. Meanwhile abort probes run one at a time on `tiny-probe` (one replica, no other
traffic): a long request is disconnected and the time until that engine's own count of unfinished requests
(`LLMServer.load`, polled through a DeploymentHandle) reaches 0 is its abort latency.

Reports requests sent / answered / disconnected on purpose / failed by reason (a status and error code: the
client was told why) / lost (no answer, no reason), resident memory (VmRSS, the process plus its children:
vLLM's engine processes) of the ingress and model replicas when idle at start, after warm-up and at the end,
and abort latency p50/p99. Target: 0 lost requests, flat memory.

    python benchmarks/bench_soak.py                    # ~3 min of load, plus ~2 min of start-up
    python benchmarks/bench_soak.py --duration 1800    # a longer soak
    python benchmarks/bench_soak.py --duration 600 --kill-at 0.3 --deploy-at 0.6   # plus a rolling deploy
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
LONG = {"max_tokens": 1000, "ignore_eos": True, "temperature": 0}  # long enough to be aborted mid-way


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else None


# ---- the server ------------------------------------------------------------------------------------------

def start_server(config: Path, port: int, log: Path, ray_address: str) -> subprocess.Popen:
    tide = Path(sys.executable).parent / "tide"
    return subprocess.Popen([str(tide), "serve", str(config), "--port", str(port), "--address", ray_address],
                            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_serving import stop_group

    stop_group(proc, 90)


async def wait_ready(url: str, models: list[str], proc: subprocess.Popen, timeout_s: float = 900) -> float:
    """Ready means each model's engine answered a real completion."""
    t0 = time.monotonic()
    todo = list(models)
    async with aiohttp.ClientSession() as s:
        while todo:
            if proc.poll() is not None:
                raise SystemExit(f"tide serve exited with {proc.returncode}; see {OUT / 'soak-serve.log'}")
            if time.monotonic() - t0 > timeout_s:
                raise SystemExit(f"not ready after {timeout_s:.0f}s: {todo}")
            try:
                async with s.post(f"{url}/v1/completions", json={"model": todo[0], "prompt": "hi", "max_tokens": 1},
                                  timeout=aiohttp.ClientTimeout(total=30)) as r:
                    if r.status == 200:
                        print(f"[{time.monotonic() - t0:5.0f}s] {todo.pop(0)} answered", flush=True)
                        continue
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(2)
    return time.monotonic() - t0


# ---- Ray side: processes, kill, engine load ------------------------------------------------------------

def serve_actors() -> list[dict]:
    """Alive Serve replica actors of the Tide app: role (ingress / model deployment), name, pid.

    Read from the GCS actor table (Ray's developer API): `ray.util.state` needs the dashboard, which Tide
    does not start."""
    import ray

    out = []
    for a in ray._private.state.actors(actor_state_name="ALIVE").values():
        if "ServeReplica" in a["ActorClassName"]:
            role = a["ActorClassName"].rsplit(":", 1)[-1].rsplit("#", 1)[-1]
            out.append({"role": role, "name": a["Name"], "pid": a["Pid"]})
    return sorted(out, key=lambda a: (a["role"], a["pid"]))


@functools.lru_cache(maxsize=None)
def _handle(model: str):
    from ray import serve

    from serving.config import APP_NAME, deployment_name

    return serve.get_deployment_handle(deployment_name(model), app_name=APP_NAME)


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process plus its descendants (a replica's vLLM engine runs in child processes)."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
        return sum(q.memory_info().rss for q in procs if q.is_running()) / 2**20
    except psutil.Error:
        return None


def engine_unfinished(model: str) -> int:
    """The engine's own count of unfinished requests (vLLM's AsyncLLM), asked in the replica."""
    return _handle(model).load.remote().result(timeout_s=10)["unfinished"]


def kill_one_replica(model: str) -> dict:
    import ray

    from serving.config import deployment_name

    victims = [a for a in serve_actors() if a["role"] == deployment_name(model)]
    victim = random.choice(victims)
    ray.kill(ray.get_actor(victim["name"], namespace="serve"), no_restart=False)
    return victim


# ---- load ----------------------------------------------------------------------------------------------

def request_body(model: str, rng: random.Random) -> tuple[str, dict]:
    stream = rng.random() < 0.5
    common = {"model": model, "max_tokens": rng.randint(16, 96), "stream": stream, "ignore_eos": rng.random() < 0.5}
    if rng.random() < 0.5:
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": "tell me a story"}]}
    return "/v1/completions", {**common, "prompt": "def fibonacci(n):"}


async def one_request(s: aiohttp.ClientSession, url: str, model: str, rng: random.Random, p_disconnect: float,
                      timeout_s: float) -> str:
    """Send one request; return its outcome: ok, disconnected, `told: <status> <code>` or `lost: <why>`."""
    path, body = request_body(model, rng)
    cut = rng.random() < p_disconnect
    cut_after_chunks, cut_after_s = rng.randint(1, 4), rng.uniform(0.05, 0.4)
    try:
        async with s.post(url + path, json=body, timeout=aiohttp.ClientTimeout(
                total=cut_after_s if cut and not body["stream"] else timeout_s)) as r:
            if r.status != 200:
                try:
                    err = (await r.json(content_type=None))["error"]
                    return f"told: {r.status} {err.get('code') or err['type']}"
                except (ValueError, KeyError, TypeError):
                    return f"lost: {r.status} without an error body"
            if not body["stream"]:
                data = await r.json(content_type=None)
                return "ok" if data.get("choices") else "lost: 200 without choices"
            chunks, error = 0, None
            async for line in r.content:
                if line.startswith(b"data: [DONE]"):
                    return f"told: stream error {error}" if error else "ok"
                if line.startswith(b"data: {"):
                    event = json.loads(line[6:])
                    if "error" in event:
                        error = event["error"].get("code") or event["error"].get("type")
                    chunks += 1
                    if cut and chunks >= cut_after_chunks:
                        return "disconnected"  # leaving the block closes the connection
            return f"told: stream error {error}" if error else "lost: stream ended without [DONE] or an error"
    except asyncio.TimeoutError:
        return "disconnected" if cut and not body["stream"] else f"lost: no answer within {timeout_s:.0f}s"
    except aiohttp.ClientError as e:
        if isinstance(e, aiohttp.ClientConnectorError):
            await asyncio.sleep(0.1)  # nothing listens: a pause, not a million refused connections a minute
        return f"lost: {type(e).__name__}"


async def abort_probe(s: aiohttp.ClientSession, url: str, model: str, stream: bool) -> float | None:
    """Disconnect one long request on the otherwise idle probe model; seconds until its engine has 0 left."""
    body = {"model": model, "prompt": "go", "stream": stream, **LONG}

    async def send() -> None:
        async with s.post(f"{url}/v1/completions", json=body) as r:
            async for _ in r.content:
                pass

    task = asyncio.ensure_future(send())
    t_start = time.monotonic()
    while await asyncio.to_thread(engine_unfinished, model) < 1:  # it reached the engine
        if task.done() or time.monotonic() - t_start > 30:
            task.cancel()
            return None
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # a few tokens in
    task.cancel()  # closes the connection: the client is gone
    t0 = time.monotonic()
    while await asyncio.to_thread(engine_unfinished, model) > 0:
        if time.monotonic() - t0 > 10:
            break
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


async def soak(url: str, args: argparse.Namespace) -> dict:
    outcomes: collections.Counter[str] = collections.Counter()
    aborts: dict[str, list[float]] = {"stream": [], "non-stream": []}
    state = {"inflight": 0, "kill": None, "replaced_s": None, "probe_failures": 0, "ingress_trace": []}
    stop = asyncio.Event()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def client(i: int) -> None:
            r = random.Random(args.seed * 1000 + i)
            while not stop.is_set():
                state["inflight"] += 1
                try:
                    outcomes[await one_request(s, url, "tiny", r, args.disconnect, args.request_timeout)] += 1
                finally:
                    state["inflight"] -= 1

        async def prober() -> None:
            kinds = ["stream", "non-stream"]
            while not stop.is_set():
                kind = kinds[len(aborts["stream"]) + len(aborts["non-stream"]) + state["probe_failures"] & 1]
                try:
                    waited = await abort_probe(s, url, "tiny-probe", kind == "stream")
                except Exception as e:  # e.g. LLMServer.load missing: report it, do not fake a number
                    state["probe_error"] = f"{type(e).__name__}: {e}"[:300]
                    return
                if waited is None:
                    state["probe_failures"] += 1
                else:
                    aborts[kind].append(waited)
                await asyncio.sleep(args.probe_every)

        async def killer() -> None:
            await asyncio.sleep(args.duration * args.kill_at)
            t = time.monotonic()
            victim = await asyncio.to_thread(kill_one_replica, "tiny")
            state["kill"] = {**victim, "at_s": round(t - t0, 1), "inflight": state["inflight"]}
            print(f"killed replica {victim['name']} (pid {victim['pid']}) with {state['inflight']} requests in "
                  "flight", flush=True)
            dropped = False  # the status lags the kill: see the count drop before timing its recovery
            while not stop.is_set():
                try:
                    async with s.get(f"{url}/tide/status") as r:
                        running = (await r.json())["models"]["tiny"]["running"]
                    dropped = dropped or running < 2
                    if dropped and running >= 2:
                        state["replaced_s"] = round(time.monotonic() - t, 1)
                        return
                except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
                    pass  # the status page is not what is measured; keep asking
                await asyncio.sleep(0.5)

        async def deployer() -> None:
            await asyncio.sleep(args.duration * args.deploy_at)
            before = collections.Counter(outcomes)
            t = time.monotonic()
            print(f"tide deploy {args.changed_config} (rolls tiny and the ingress) under load", flush=True)
            r = await asyncio.to_thread(run_deploy, args.changed_config, args.ray_address)
            took = time.monotonic() - t
            await asyncio.sleep(10)  # the old replicas' drains end; requests sent meanwhile finish
            during = collections.Counter({k: n for k, n in (outcomes - before).items()})
            state["deploy"] = {"at_s": round(t - t0, 1), "took_s": round(took, 1), "rc": r.returncode,
                               "stderr": r.stderr[-500:] if r.returncode else "", "outcomes": dict(during)}
            print(f"deploy done in {took:.0f}s (rc {r.returncode}); outcomes meanwhile: {dict(during)}", flush=True)

        ingress = [a["pid"] for a in await asyncio.to_thread(serve_actors) if a["role"] == "Ingress"]

        async def reporter() -> None:
            while not stop.is_set():
                await asyncio.sleep(10)
                told = sum(n for k, n in outcomes.items() if k.startswith("told"))
                lost = sum(n for k, n in outcomes.items() if k.startswith("lost"))
                probes = len(aborts["stream"]) + len(aborts["non-stream"])
                sent = sum(outcomes.values()) + state["inflight"]
                rss = rss_mb(ingress[0]) if ingress else None
                if rss is None:  # the ingress rolled (a deploy): follow the new one
                    ingress[:] = [a["pid"] for a in await asyncio.to_thread(serve_actors) if a["role"] == "Ingress"]
                    rss = rss_mb(ingress[0]) if ingress else None
                state["ingress_trace"].append((round(time.monotonic() - t0, 1), sent, rss))
                print(f"[{time.monotonic() - t0:5.0f}s] sent {sent}, ok {outcomes['ok']}, disconnected "
                      f"{outcomes['disconnected']}, told {told}, lost {lost}, in flight {state['inflight']}, "
                      f"abort probes {probes}, ingress RSS {rss or 0:.1f} MB", flush=True)

        t0 = time.monotonic()
        warm_at = min(20.0, args.duration / 4)
        tasks = [asyncio.ensure_future(client(i)) for i in range(args.concurrency)]
        helpers = [asyncio.ensure_future(f()) for f in (prober, reporter)]
        if args.kill_at < 1:
            helpers.append(asyncio.ensure_future(killer()))
        deploying = asyncio.ensure_future(deployer()) if args.deploy_at < 1 else None
        await asyncio.sleep(warm_at)
        warm = {a["pid"]: rss_mb(a["pid"]) for a in await asyncio.to_thread(serve_actors)}
        await asyncio.sleep(max(0.0, args.duration - warm_at))
        stop.set()
        print("load stopped; waiting for requests in flight to end", flush=True)
        await asyncio.gather(*tasks)
        if deploying is not None:
            await deploying  # its count of outcomes ends 10 s after the deploy returns
        for h in helpers:
            h.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    return {"outcomes": dict(outcomes), "aborts": aborts, "warm_rss": warm, "elapsed_s": time.monotonic() - t0,
            **state}


# ---- report --------------------------------------------------------------------------------------------

def kb_per_request(trace: list[tuple[float, int, float | None]], from_s: float) -> float | None:
    """Least-squares slope of RSS (MB) over requests sent, from `from_s` on, in KB per request: growth that a
    start/end pair would blur with warm-up and the replica kill."""
    pts = [(n, r) for t, n, r in trace if t >= from_s and r is not None]
    if len(pts) < 3:
        return None
    mx, my = sum(n for n, _ in pts) / len(pts), sum(r for _, r in pts) / len(pts)
    var = sum((n - mx) ** 2 for n, _ in pts)
    return sum((n - mx) * (r - my) for n, r in pts) / var * 1024 if var else None


def report(res: dict, start: list[dict], end: list[dict], args: argparse.Namespace) -> str:
    o = res["outcomes"]
    sent = sum(o.values())
    lines = [f"Soak: {res['elapsed_s']:.0f} s, {args.concurrency} clients on `tiny` (2 replicas), disconnect "
             f"probability {args.disconnect}, one replica killed at {args.kill_at:.0%} of the run.", "",
             "| requests | count | share |", "|---|---|---|", f"| sent | {sent} | 100% |"]
    for k in ["ok", "disconnected"] + sorted(k for k in o if k.startswith("told")) + sorted(
            k for k in o if k.startswith("lost")):
        label = {"ok": "answered (200, complete)", "disconnected": "client disconnected on purpose"}.get(k, k)
        lines.append(f"| {label} | {o.get(k, 0)} | {o.get(k, 0) / max(sent, 1):.1%} |")
    lost = sum(n for k, n in o.items() if k.startswith("lost"))
    lines += [f"| **lost (no answer, no reason)** | **{lost}** | {lost / max(sent, 1):.1%} |", ""]
    kill = res.get("kill")
    if kill:
        lines += [f"Killed `{kill['name']}` (pid {kill['pid']}) at {kill['at_s']} s with {kill['inflight']} "
                  f"requests in flight; Serve had 2 replicas running again after "
                  f"{res['replaced_s'] if res['replaced_s'] is not None else 'more than the rest of the run'} s.", ""]
    dep = res.get("deploy")
    if dep:
        o_dep = dep["outcomes"]
        bad = sum(n for k, n in o_dep.items() if k.startswith(("told", "lost")))
        lines += [f"Rolling `tide deploy` at {dep['at_s']} s (exit {dep['rc']}) took {dep['took_s']} s. Requests that "
                  f"ended from its start to 10 s after it returned: {sum(o_dep.values())} "
                  f"({o_dep.get('ok', 0)} answered, {o_dep.get('disconnected', 0)} disconnected on purpose, "
                  f"**{bad} failed**{': ' + str({k: n for k, n in o_dep.items() if k not in ('ok', 'disconnected')}) if bad else ''}).",
                  ""]
    lines += ["| process | pid | RSS idle start MB | RSS after warm-up MB | RSS end MB | end / warm-up |",
              "|---|---|---|---|---|---|"]
    by_pid = {a["pid"]: a for a in start + end}
    s_rss, e_rss = {a["pid"]: a["rss"] for a in start}, {a["pid"]: a["rss"] for a in end}
    for pid, a in by_pid.items():
        s, w, e = s_rss.get(pid), res["warm_rss"].get(pid), e_rss.get(pid)
        ratio = f"{e / w:.3f}" if e and w else "-"
        f = lambda v: f"{v:.0f}" if v else "-"  # noqa: E731
        note = " (gone: killed or rolled)" if e is None else (" (new: replacement or rolled)" if s is None else "")
        lines.append(f"| {a['role']}{note} | {pid} | {f(s)} | {f(w)} | {f(e)} | {ratio} |")
    trace = res.get("ingress_trace") or []
    if trace:
        quarter = [min(trace, key=lambda x: abs(x[0] - res["elapsed_s"] * q / 4)) for q in (1, 2, 3, 4)]
        slope = kb_per_request(trace, res["elapsed_s"] / 2)
        lines += ["", "| ingress RSS over the run | 25% | 50% | 75% | 100% | second half, KB per request |",
                  "|---|---|---|---|---|---|",
                  "| MB (requests sent) | " + " | ".join(f"{r or 0:.1f} ({n})" for _, n, r in quarter)
                  + (f" | {slope:.2f} |" if slope is not None else " | - |")]
    lines += ["", "| abort latency (engine's unfinished count -> 0) | n | p50 ms | p99 ms | max ms |",
              "|---|---|---|---|---|"]
    for kind, xs in res["aborts"].items():
        ms = [x * 1000 for x in xs]
        f = lambda v: f"{v:.0f}" if v is not None else "-"  # noqa: E731
        lines.append(f"| {kind} disconnect | {len(ms)} | {f(pct(ms, 50))} | {f(pct(ms, 99))} | "
                     f"{f(max(ms) if ms else None)} |")
    if res.get("probe_error"):
        lines.append(f"\nAbort probes could not run: {res['probe_error']}")
    return "\n".join(lines)


def config_copy(config: Path, name: str, edit) -> Path:
    """A copy of `config` under OUT (model paths made absolute), changed by `edit(data)`."""
    import yaml

    data = yaml.safe_load(config.read_text())
    for m in data["models"]:
        local = (config.parent / m["model"]).resolve()
        if local.exists():
            m["model"] = str(local)
    edit(data)
    out = OUT / name
    out.write_text(yaml.safe_dump(data))
    return out


def with_arena_max(config: Path, arenas: int | None) -> Path:
    """A copy of `config` with the ingress's MALLOC_ARENA_MAX set."""
    return config_copy(config, f"soak-arenas-{arenas or 'default'}.yaml",
                       lambda d: d.setdefault("server", {}).__setitem__("ingress_malloc_arena_max", arenas))


def changed_for_deploy(config: Path, port: int) -> Path:
    """What the rolling deploy sends: `tiny` with another max_num_seqs (its engines roll) and another queue bound
    (the ingress rolls), on the port `tide serve --port` was given (the file's own port would move the app)."""
    def edit(data: dict) -> None:
        data.setdefault("server", {})["port"] = port
        tiny = next(m for m in data["models"] if m["name"] == "tiny")
        tiny["engine_args"]["max_num_seqs"] = tiny["engine_args"].get("max_num_seqs", 32) - 8
        tiny["admission"] = {"max_queued": 500}

    return config_copy(config, "soak-deploy.yaml", edit)


def run_deploy(config: Path, ray_address: str) -> subprocess.CompletedProcess:
    tide = Path(sys.executable).parent / "tide"
    return subprocess.run([str(tide), "deploy", str(config), "--address", ray_address, "--timeout", "600"],
                          cwd=ROOT, capture_output=True, text=True, timeout=700)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "benchmarks" / "soak.yaml")
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    ap.add_argument("--concurrency", type=int, default=6, help="closed-loop clients on `tiny`")
    ap.add_argument("--disconnect", type=float, default=0.15, help="share of requests disconnected on purpose")
    ap.add_argument("--kill-at", type=float, default=0.5, help="kill a replica at this fraction of the run (1: never)")
    ap.add_argument("--deploy-at", type=float, default=1.0,
                    help="run a rolling `tide deploy` (tiny's engines and the ingress change) at this fraction (1: never)")
    ap.add_argument("--probe-every", type=float, default=3.0, help="seconds between abort probes")
    ap.add_argument("--request-timeout", type=float, default=120.0, help="client timeout per request (seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ingress-arena-max", type=int, default=None,
                    help="override server.ingress_malloc_arena_max (0: glibc's default, the baseline)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.ingress_arena_max is not None:
        args.config = with_arena_max(args.config, args.ingress_arena_max or None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from serving.config import load_config
    from serving.launcher import start_ray

    # This process starts the local Ray (exactly as `tide serve` would: 127.0.0.1, Serve's environment) and
    # `tide serve` joins it by address, so the benchmark can kill actors and ask engines without guessing
    # which cluster "auto" means on a machine where others run Ray too.
    cfg = load_config(args.config)
    cfg.server.port = port  # direct ingress takes its port from the Ray cluster's environment, set here
    start_ray(cfg)
    address = ray.get_runtime_context().gcs_address
    print(f"Ray at {address}; starting tide serve {args.config} on {url} (log: {OUT / 'soak-serve.log'})",
          flush=True)
    proc = start_server(args.config, port, OUT / "soak-serve.log", address)
    args.ray_address, args.changed_config = address, changed_for_deploy(args.config, port)
    try:
        asyncio.run(wait_ready(url, ["tiny", "tiny-probe"], proc))
        start = [{**a, "rss": rss_mb(a["pid"])} for a in serve_actors()]
        res = asyncio.run(soak(url, args))
        time.sleep(5)  # let the killed replica's replacement and the engines settle
        end = [{**a, "rss": rss_mb(a["pid"])} for a in serve_actors()]
        table = report(res, start, end, args)
        print("\n" + table, flush=True)
        (OUT / "soak.md").write_text(table + "\n")
        (OUT / "soak.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **res,
                                                   "start": start, "end": end}, indent=1, default=str))
    finally:
        stop_server(proc)  # tears down the Serve app and its engines
        ray.shutdown()  # and the local Ray this process started


if __name__ == "__main__":
    main()
