"""What every model replica is, generating or embedding: one vLLM AsyncLLM engine and its control.

`start_engine` gives a replica its engine (env and CPU pinning first, tensor/pipeline groups, the reaper);
`ReplicaBase` is what Serve and the front talk to on any replica: health, stats pushed to the hub and
reported to the autoscaler, vLLM's own OpenAI app on the engine, this replica's HTTP server behind the
HAProxy front, and its graceful stop. `serving.replica.llm.LLMServer` (chat and completions, LoRA) and
`serving.replica.embeddings.EmbeddingServer` (a pooling engine) add only their constructor and `info`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, AsyncIterator

from ray import serve

from ..config import ModelConfig
from ..errors import engine_dead
from ..faults import engine_stuck
from ..patches.ray_loopback import bind_replica_grpc_to_node
from ..lora import lora_request, public_name
from ..placement import bind_setting

logger = logging.getLogger("tide.engine")
REPLICA_HEADER = "x-tide-replica"  # on every answer: the Serve replica that served it


def _replica_rank() -> int:
    try:
        return serve.get_replica_context().rank.rank
    except Exception:
        return 0


def _pin_cpu_threads(cfg: ModelConfig, rank: int, local_workers: int) -> None:
    """vLLM's CPU build binds every engine to core 0 by default; spread replicas over cores by rank, one core per
    local worker (its tensor/pipeline parallel workers on this node). Core 0 hosts Ray's own processes and the
    HTTP path, so engines start from the last core."""
    bind = bind_setting(cfg.cpu_bind, cfg.env, sorted(os.sched_getaffinity(0)), rank, local_workers)
    if bind is not None:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind


def start_engine(server: Any, cfg: ModelConfig, model: str, extra_args: dict[str, Any]) -> None:
    """Give `server` (a generating or an embedding replica) its config, stats and vLLM AsyncLLM engine.

    The replica's env and CPU pinning are applied first (vLLM reads them when its processes start);
    `extra_args` go under the model's own `engine_args`, so an explicit setting there wins. With tensor/pipeline
    parallelism the workers use the replica's placement group (serving.placement): vLLM's Ray executor is
    handed the group, and a CPU group spread over nodes gets its other stages started there
    (serving/replica/stages.py)."""
    bind_replica_grpc_to_node()  # before Serve starts this replica's gRPC server, after this constructor
    server.cfg = cfg
    server.stages = []
    os.environ.update(cfg.env)
    from vllm.platforms import current_platform

    from .engine_env import engine_env_defaults

    cpu = current_platform.is_cpu()
    for key, value in engine_env_defaults(cfg.engine_args, cpu).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("VLLM_ENGINE_READY_TIMEOUT_S", str(int(cfg.replicas.engine_start_timeout_s)))
    placement, rank = cfg.placement(), _replica_rank()
    extra_args = {**placement.engine_args(), **extra_args}
    if cpu and placement.pp > 1:  # vLLM CPU's eager pipeline stages need Tide's worker (patches/cpu_worker.py)
        from ..patches.cpu_worker import WORKER_CLS

        extra_args.setdefault("worker_cls", WORKER_CLS)
    spread: dict[str, Any] = {}
    if placement.executor == "mp" and placement.bundles and cpu:
        from .stages import spread_stages

        spread, server.stages = spread_stages(placement.world, cfg.env, cfg.cpu_bind, rank)
    _pin_cpu_threads(cfg, rank, placement.world // spread.get("nnodes", 1) if placement.executor == "mp" else 1)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from ..observability.engine_stats import EngineStats

    from .reaper import start_reaper

    server.started_at = time.monotonic()
    kwargs = {"model": model, "served_model_name": cfg.name, **{**extra_args, **cfg.engine_args, **spread}}
    if server.stages:
        from .stages import start_stages

        start_stages(server.stages, kwargs)
    args = AsyncEngineArgs(**kwargs)
    server.stats = stats = EngineStats()
    # EngineCore and its workers are killed by the reaper if this replica dies without shutting them down.
    if not hasattr(server, "reaper"):
        server.reaper = start_reaper()
    loggers = [lambda _cfg, _idx: stats]
    if placement.executor == "ray":  # vLLM's Ray executor places its workers in this replica's group (as Ray LLM)
        from ray.util.placement_group import get_current_placement_group

        vllm_config = args.create_engine_config()
        vllm_config.parallel_config.placement_group = get_current_placement_group()
        server.engine = AsyncLLM.from_vllm_config(vllm_config, stat_loggers=loggers,
                                                  disable_log_stats=args.disable_log_stats)
    else:
        server.engine = AsyncLLM.from_engine_args(args, stat_loggers=loggers)


class ReplicaBase:
    """One vLLM engine. Serve starts it per replica; `check_health` really asks the engine. Subclasses call
    `start_engine(self, ...)` in their constructor."""

    cfg: ModelConfig
    engine: Any = None
    stats: Any = None
    stages: list = []  # pipeline stage hosts on other nodes (serving/replica/stages.py)
    adapters: dict[str, list[str]] = {}  # LoRA adapters by model name (generating models set their own)
    http: Any = None  # this replica's own HTTP server, behind the HAProxy front
    draining = False
    _pusher: asyncio.Task | None = None
    _adapters_loaded: asyncio.Task | None = None
    _oai: asyncio.Future | None = None
    _name: str | None = None
    _hub: Any = None

    def _ensure_pusher(self) -> None:
        if self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_stats())

    async def _push_stats(self) -> None:
        """Every second, leave this engine's numbers at the stats hub (status pages, /metrics)."""
        from ..observability.hub import get_hub

        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:
            replica = str(os.getpid())
        self._hub = hub = await asyncio.to_thread(get_hub)
        while True:
            try:
                http = self.http
                if os.environ.get("TIDE_FRONT") == "haproxy" and http is None:
                    await self._start_http()
                elif http is not None and self.engine.errored:
                    http.gate.refuse()  # the front marks this replica down now, not at its next check
                self._push(hub, replica)
            except Exception:
                logger.warning("stats push failed", exc_info=True)
            await asyncio.sleep(1.0)

    def _push(self, hub: Any, replica: str) -> None:
        snap = self.stats.counters.snapshot(time.time(), self.engine.get_num_unfinished_requests())
        http = self.http
        snap["http"] = http.address if http is not None else ""  # where the front sends this model's requests
        snap["draining"] = self.draining
        hub.push_replica.remote(self.cfg.name, replica, snap)

    async def _start_http(self) -> None:
        """This replica's own HTTP server for the front (serving/replica/http_server.py), once vLLM's app is up."""
        from .http_server import ReplicaHttp

        await self._openai_app()
        http = ReplicaHttp(self)
        await http.start()
        self.http = http

    async def _load_adapters(self) -> None:
        """Load every LoRA adapter once, before any request uses one: vLLM kills the engine when a request names
        an adapter that fails to load, while a failed `add_lora` only raises (and fails this replica's health)."""
        if not self.adapters.get(self.cfg.name):  # (embedding replicas have none)
            return
        if self._adapters_loaded is None:
            async def load_all() -> None:
                for a in self.adapters[self.cfg.name]:
                    await self.engine.add_lora(lora_request(self.cfg.lora, a, self.cfg.name))
                logger.info("loaded LoRA adapters %s on %s", self.adapters[self.cfg.name], self.cfg.name)
            self._adapters_loaded = asyncio.ensure_future(load_all())
        task = self._adapters_loaded
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._adapters_loaded is task:  # failed: the next health check (or adapter request) tries again
                self._adapters_loaded = None
            raise

    async def _openai_app(self) -> Any:
        """vLLM's own OpenAI app on this engine, built once (serving/replica/openai_app.py)."""
        from .openai_app import build_openai_app, vllm_args
        from .responses_store import get_store, share

        async def build() -> Any:
            args = vllm_args(self.engine.model_config.model, self.cfg.name, self.cfg.server_args)
            adapters = self.adapters.get(self.cfg.name, [])
            loras = {public_name(self.cfg.name, a): lora_request(self.cfg.lora, a, self.cfg.name) for a in adapters}
            app = await build_openai_app(self.engine, args, loras)
            responses = getattr(app.state, "openai_serving_responses", None)
            if responses is not None:  # generating models: stored responses shared by every replica
                self._responses_store = await asyncio.to_thread(get_store)
                share(responses, self._responses_store)
            return app

        if self._oai is None:
            self._oai = asyncio.ensure_future(build())
        task = self._oai
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._oai is task:  # the next health check or request tries again
                self._oai = None
            raise

    async def openai(self, method: str, path: str, body: bytes, headers: dict[str, str],
                     prompt: Any = None, query: str = "") -> AsyncIterator[Any]:
        """One HTTP request through vLLM's OpenAI app: yields (status, headers), then the body's bytes.
        `prompt` is only for the prefix router (serving.router.request_prompt), which reads it off the call."""
        from .openai_app import call_app

        self._ensure_pusher()
        app = await self._openai_app()
        if self.engine.errored:
            raise engine_dead()
        await self._load_adapters()  # before any request names one (vLLM kills the engine on a failed load)
        responses = getattr(app.state, "openai_serving_responses", None)
        shared = path.startswith("/v1/responses") and responses is not None
        if shared:
            from .responses_store import fetch_previous, fetch_stored, flush, stored_id

            if path == "/v1/responses":
                await fetch_previous(responses, self._responses_store, body)
            elif (rid := stored_id(path)) is not None:
                await fetch_stored(responses, self._responses_store, rid)
        try:
            first = True
            async for item in call_app(app, method, path, body, headers, query,
                                       gap_s=self.cfg.stream_batch_ms / 1000.0):
                if first:  # (status, headers): say which replica answered (logs, tests, client debugging)
                    first = False
                    item = (item[0], [*item[1], (REPLICA_HEADER, self._replica_name())])
                if shared:  # a response stored so far is readable everywhere before the client sees its id
                    await flush(responses)
                yield item
        except (asyncio.CancelledError, GeneratorExit):  # the caller left: vLLM aborts the request
            self.stats.counters.on_abort()
            raise

    def _replica_name(self) -> str:
        if self._name is None:
            try:
                self._name = serve.get_replica_context().replica_id.unique_id
            except Exception:  # outside Serve (tests that build the class directly)
                self._name = str(os.getpid())
        return self._name

    async def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and Serve replaces it."""
        self._ensure_pusher()
        await self._load_adapters()
        await self._openai_app()  # built before the replica counts as healthy; a bad server_args shows here
        await self.engine.check_health()
        if self.stages:
            from .stages import stage_problem

            problem = await stage_problem(self.stages)
            if problem:
                logger.error("%s", problem)
                raise engine_dead()
        now, unfinished = time.time(), self.engine.get_num_unfinished_requests()
        if unfinished == 0:
            self._idle_at = now
        progress = max(self.stats.counters.last_step, getattr(self, "_idle_at", now))
        if engine_stuck(now, progress, unfinished, self.cfg.replicas.engine_stuck_s):
            raise engine_dead()  # Serve marks the replica unhealthy and replaces it

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve pushes these to the autoscaler: the engine's queue, not just requests in flight."""
        return self.stats.snapshot(self.engine.get_num_unfinished_requests())

    async def load(self) -> dict[str, int]:
        """This engine's requests right now, straight from vLLM (tests and the soak benchmark time aborts by it)."""
        c = self.stats.counters
        return {"unfinished": self.engine.get_num_unfinished_requests(), "waiting": c.waiting, "running": c.running,
                "aborted": c.aborted, "finished": dict(c.success), "pid": os.getpid()}

    async def __del__(self):
        """Serve's graceful stop: behind the front, leave its table first and finish what is in flight."""
        http = self.http
        if http is not None:
            self.draining = True
            try:
                self._push(self._hub, self._replica_name())
            except Exception:
                logger.debug("drain notice failed", exc_info=True)
            await http.drain(1.5, max(self.cfg.replicas.graceful_shutdown_timeout_s - 3.0, 1.0))
        engine = self.engine
        if engine is not None:
            engine.shutdown()
        if self.stages:
            from .stages import stop_stages

            stop_stages(self.stages)
