"""Tide's one YAML config: the server and the models it serves, validated with pydantic.

A bad file gets one message naming the file and the field (`models.0.replicas.max: ...`), never a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, ValidationError, model_validator

from autoscale.policy import PolicySettings
from autoscale.routing import RouterConfig

from .gate.admission import AdmissionConfig
from .gate.auth import AuthConfig
from .lora import LoRAOptions, adapter_cards, adapter_problems, name_collisions

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class ConfigError(ValueError):
    """The config file is missing, unreadable or invalid; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ReplicaConfig(_Strict):
    """How many copies of a model's engine run, and what each one reserves from Ray."""

    min: int = Field(1, ge=0, description="Fewest replicas kept running (0 allows scale to zero).")
    max: PositiveInt = Field(1, description="Most replicas the autoscaler may start.")
    initial: int | None = Field(None, ge=0, description="Replicas started at deploy; defaults to `min` (at least 1).")
    num_cpus: NonNegativeFloat = Field(1.0, description="Ray CPUs reserved per replica (fractional allowed).")
    num_gpus: NonNegativeFloat = Field(
        0.0, description="Ray GPUs reserved per replica (GPU nodes). With tensor/pipeline parallelism "
        "(engine_args.tensor_parallel_size x pipeline_parallel_size = N workers) a replica holds N GPUs, one per "
        "worker bundle, so set N (0 on CPU nodes).",
    )
    worker_num_cpus: NonNegativeFloat = Field(
        1.0, description="With tensor/pipeline parallelism: Ray CPUs reserved in each vLLM worker's bundle (on CPU "
        "nodes, the core the worker computes on). The replica's own `num_cpus` is added to the first bundle.",
    )
    placement_strategy: Literal["auto", "STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "auto", description="With tensor/pipeline parallelism: how Ray spreads a replica's worker bundles over "
        "nodes. `auto`: STRICT_PACK (one node) when pipeline_parallel_size is 1, else PACK (fill a node, then the "
        "next). Ray's placement group strategies.",
    )
    resources: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="Custom Ray resources each replica needs, to put a model on a node "
        "pool: e.g. {\"accelerator_type:L4\": 0.001} or a resource your node types declare ({\"tide_pool_a\": 1}). "
        "With tensor/pipeline parallelism each worker's bundle asks for them. Ray's cluster autoscaler adds a "
        "node of a type that has them when none is free. CPUs and GPUs go in num_cpus / num_gpus.",
    )
    max_ongoing_requests: PositiveInt = Field(
        256, description="Requests Serve sends one replica at once; vLLM batches them, so keep it high."
    )
    graceful_shutdown_timeout_s: float = Field(
        300.0, gt=0, description="On scale-down, how long a draining replica may finish its in-flight requests "
        "(it gets no new ones) before it is stopped.",
    )
    max_surge_percent: int = Field(
        25, ge=0, le=100, description="During a rolling update (`tide deploy` with a changed model), extra "
        "replicas Serve may start, as a percent of the target, rounded up to whole replicas (so any value above 0 "
        "means at least one): the new replica starts and serves before the old one drains and stops. Needs room "
        "for one more replica (a free GPU, or a node Ray's autoscaler adds); 0 stops the old one first (a "
        "1-replica model is then down while its engine restarts).",
    )
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between engine health checks.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="Seconds a health check may take before failing.")
    engine_stuck_s: float = Field(
        60.0, gt=0, description="An engine holding requests that makes no step for this long fails its health "
        "check, and Serve replaces the replica.",
    )
    engine_start_timeout_s: float = Field(
        900.0, gt=0, description="Longest an engine may take to load and start (vLLM's VLLM_ENGINE_READY_TIMEOUT_S); "
        "past it the replica fails and Serve starts another.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> "ReplicaConfig":
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(f"initial ({self.initial}) must lie within min ({self.min}) and max ({self.max})")
        for name in self.resources:
            if name in ("CPU", "GPU", "memory", "object_store_memory") or not name.strip():
                raise ValueError(f"resources: {name!r} is not a custom resource (set num_cpus / num_gpus for "
                                 f"CPUs and GPUs)")
        return self

    @property
    def initial_replicas(self) -> int:
        return self.initial if self.initial is not None else max(self.min, 1)


class ModelConfig(_Strict):
    """One served model: its public name, where its weights are, and how its vLLM engine is built."""

    name: str = Field(description="Name clients put in the request's `model` field.")
    model: str = Field(description="Hugging Face id or local folder; relative paths resolve against the config file.")
    task: Literal["generate", "embed"] = Field(
        "generate", description="`generate`: chat and text completions; `embed`: /v1/embeddings on a vLLM pooling "
        "engine (`model: builtin:all-minilm-l6-v2` is the bundled embedder, no download).",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for vLLM's AsyncEngineArgs (dtype, max_model_len, ...)."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for the replica and its engine processes."
    )
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig, description="Replica count and resources.")
    lora: LoRAOptions | None = Field(
        None, description="LoRA adapters served on this model's replicas as `<name>:<adapter>` (vLLM multi-LoRA).",
    )
    autoscaling: PolicySettings = Field(
        default_factory=PolicySettings,
        description="Tide autoscaling policy settings (min/max come from `replicas`); used when "
        "replicas.min < replicas.max.",
    )
    cold_start_timeout_s: float = Field(
        180.0, gt=0, description="How long a request waits for a replica of a cold model before a 503 with "
        "Retry-After (streaming requests get SSE comment heartbeats meanwhile).",
    )
    max_held_requests: PositiveInt = Field(
        256, description="Requests that may wait for a cold model at once; more get 429 with Retry-After."
    )
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Bounded queue at the ingress: requests beyond what the "
        "running replicas take at once (replicas x max_num_seqs) plus `max_queued` get 429 with a Retry-After "
        "computed from the queue and its drain rate.",
    )
    autoscaling_policy: Literal["tide", "serve"] = Field(
        "tide", description="`tide`: queue-depth policy (`autoscaling`); `serve`: Ray Serve's built-in policy "
        "with `serve_autoscaling` passed through as its AutoscalingConfig (for comparisons).",
    )
    serve_autoscaling: dict[str, Any] = Field(
        default_factory=dict, description="Extra Serve AutoscalingConfig fields when autoscaling_policy is `serve`."
    )
    stream_batch_ms: NonNegativeFloat = Field(
        20.0,
        description="After the first token, send streamed tokens at most this often; tokens produced in between "
        "travel as one chunk (0 sends every engine step). Cuts per-token hops under load; TTFT is unaffected.",
    )
    router: Literal["prefix", "serve"] = Field(
        "prefix", description="`prefix`: send a prompt to the replica that got its longest prefix before (vLLM's "
        "prefix cache), unless that replica is much busier (serving.router); `serve`: Ray Serve's default "
        "power-of-two-choices router (for comparisons).",
    )
    routing: RouterConfig = Field(
        default_factory=RouterConfig, description="Prefix router settings when router is `prefix`.",
    )
    cpu_bind: str = Field(
        "rank",
        description="CPU builds only: `rank` pins each replica's engine threads to core (rank mod cores), "
        "`auto` leaves vLLM's default, anything else is passed as VLLM_CPU_OMP_THREADS_BIND.",
    )

    server_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of vLLM's own OpenAI layer for this model, as `vllm serve` takes them (underscores): "
        "tool_call_parser, enable_auto_tool_choice, chat_template, response_role, ... (VLLM_SERVER_ARGS lists "
        "them). The reasoning parser and structured-output backend are engine options: set them in engine_args.",
    )

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must be 1-128 of letters, digits and . _ : / - (not starting with one)")
        unknown = sorted(set(self.server_args) - VLLM_SERVER_ARGS)
        if unknown:
            raise ValueError(f"server_args: unknown option(s) {', '.join(unknown)}; vLLM's per-model OpenAI options "
                             f"are {', '.join(sorted(VLLM_SERVER_ARGS))}")
        if self.task == "embed" and {"tool_call_parser", "enable_auto_tool_choice"} & set(self.server_args):
            raise ValueError("server_args: tool calling needs a generating model (task `generate`)")
        if "model" in self.engine_args:
            raise ValueError("engine_args must not set `model`; use the model's `model` field")
        from .placement import parallel_problems

        problems = parallel_problems(self.engine_args, self.replicas.num_gpus)
        if problems:
            raise ValueError("; ".join(problems))
        if self.lora is not None and (self.engine_args.get("enable_lora") is False or self.task == "embed"):
            raise ValueError("lora: adapters need a generating model with LoRA enabled (task `generate`, "
                             "no `enable_lora: false` in engine_args)")
        return self

    def placement(self):
        """Where this model's replica and its vLLM workers run (serving.placement)."""
        from .placement import plan_placement

        r = self.replicas
        return plan_placement(self.engine_args, r.num_cpus, r.num_gpus, r.worker_num_cpus, r.placement_strategy,
                              r.resources)

    def hf_config(self) -> dict[str, Any] | None:
        """The model's config.json when it is on this machine (a local folder, or the Hugging Face cache)."""
        path: Any = Path(self.model) / "config.json"
        if not path.is_file():
            try:
                from huggingface_hub import try_to_load_from_cache

                path = try_to_load_from_cache(self.model, "config.json")
            except Exception:
                return None
            if not isinstance(path, str):
                return None
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def shape_problems(self) -> list[str]:
        """Parallel sizes the model's own shape rules out (when its config.json can be read here)."""
        from .placement import parallel_sizes, shape_problems

        tp, pp = parallel_sizes(self.engine_args)
        if tp * pp == 1:
            return []
        hf = self.hf_config()
        return shape_problems(tp, pp, hf) if hf else []

    def slots_per_replica(self) -> int:
        """Requests one replica's engine runs at once: its `max_num_seqs` (vLLM's default 256 when unset)."""
        return int(self.engine_args.get("max_num_seqs") or 256)

    def policy_config(self):
        """The autoscaling policy config for this model (bounds from `replicas`)."""
        from autoscale.policy import PolicyConfig

        return PolicyConfig(min_replicas=self.replicas.min, max_replicas=self.replicas.max,
                            **self.autoscaling.model_dump())


class IngressModel(BaseModel):
    """What the ingress and the front know of one model (the part of its config they act on), handed to the
    ingress deployment as plain data and read back as this type."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(description="cold_start_timeout_s: how long a request waits for a cold model.")
    max_held: int = Field(description="max_held_requests: requests that may wait for a cold model at once.")
    start_s: float = Field(description="The expected replica start (the policy's replica_start_s) until measured.")
    slots: int = Field(description="Requests one replica runs at once (max_num_seqs).")
    max_replicas: int
    workers: int = Field(1, description="vLLM workers per replica (tensor x pipeline parallel).")
    gpus: float = Field(0.0, description="GPUs per replica.")
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    task: Literal["generate", "embed"] = "generate"
    adapters: list[dict[str, Any]] = Field(default_factory=list, description="/v1/models cards of its adapters.")

    @classmethod
    def of(cls, m: ModelConfig) -> "IngressModel":
        p = m.placement()
        return cls(timeout_s=m.cold_start_timeout_s, max_held=m.max_held_requests,
                   start_s=m.policy_config().replica_start_s, slots=m.slots_per_replica(),
                   max_replicas=m.replicas.max, workers=p.world, gpus=p.gpus, admission=m.admission, task=m.task,
                   adapters=adapter_cards(m.name, m.lora))


# vLLM 0.32's FrontendArgs that shape one model's OpenAI answers (a unit test checks each still exists in vLLM).
# Listening, TLS, CORS and keys are Tide's front's job, so they are not among them.
VLLM_SERVER_ARGS = frozenset({
    "chat_template", "chat_template_content_format", "trust_request_chat_template", "default_chat_template_kwargs",
    "response_role", "return_tokens_as_token_ids", "enable_auto_tool_choice", "exclude_tools_when_tool_choice_none",
    "tool_call_parser", "tool_parser_plugin", "tool_strict_level", "max_log_len", "enable_prompt_tokens_details",
    "enable_force_include_usage", "enable_log_outputs", "log_error_stack", "enable_tokenizer_info_endpoint",
})


class ServerConfig(_Strict):
    """Where the HTTP ingress listens."""

    host: str = Field("127.0.0.1", description="Interface to bind; loopback unless you deliberately expose it.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port of the OpenAI-compatible endpoint.")
    request_timeout_s: float = Field(600.0, gt=0, description="Longest a request may take end to end.")
    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between SSE comment heartbeats on held streams.")
    replica_retries: int = Field(
        2, ge=0, le=5, description="Times a request is retried on another replica when its replica dies before any "
        "of the answer reached the client.",
    )
    max_body_bytes: PositiveInt = Field(4 * 1024 * 1024, description="Largest request body accepted (413 above).")
    ingress_replicas: PositiveInt = Field(
        1, description="Copies of the HTTP ingress deployment. With `front: haproxy` each runs its own HAProxy, and "
        "those on one node accept from one shared socket, so a front that dies loses no waiting connection; every "
        "front sends keys with limits to one of them, so the limits hold for all. With `front: ingress` and "
        "direct ingress, at most one per node, and per-key limits need one ingress."
    )
    direct_ingress: bool = Field(
        True,
        description="Serve HTTP from the ingress replica itself on `port` (Ray Serve's throughput-optimized direct "
        "ingress), skipping the Serve proxy hop: about 2x the tokens/s of the proxy path on 2 cores. Applies when "
        "Tide starts Ray; on a cluster, start each node's Ray with the variables of serving.ray_env.serve_env.",
    )
    front: Literal["ingress", "haproxy"] = Field(
        "haproxy",
        description="What listens on `port`. `haproxy` (default): HAProxy (shipped with Ray) sends each chat, "
        "completion and embeddings request straight to a replica's own HTTP server (vLLM's OpenAI app), routed by "
        "the body's `model`, with no Ray hop; what it cannot decide (other routes, cold models, keys with rate "
        "limits) goes to the ingress on `ingress_port`; `tide deploy` updates it without failing requests. "
        "`ingress`: the ingress replica (Serve direct ingress) governs every request and forwards it to a model "
        "replica over Ray; `tide deploy` restarts the app. Without direct_ingress the default is `ingress`.",
    )
    ingress_port: int | None = Field(
        None, ge=1, le=65534 - 8, description="With `front: haproxy`: the first of the ingress replicas' own loopback "
        "ports (default: port + 1; a rolling update uses up to 8 from there, new ingress beside the old).",
    )
    ingress_num_cpus: NonNegativeFloat = Field(0.0, description="Ray CPUs reserved per ingress replica.")
    ingress_malloc_arena_max: PositiveInt | None = Field(
        2,
        description="MALLOC_ARENA_MAX for the ingress process. With glibc's default (8 per core) freed memory "
        "strands in per-thread arenas: the ingress's RSS climbed ~14 MB under load before levelling off, its live "
        "heap flat. With 2 it levels off ~9 MB lower (benchmarks/RESULTS.md, soak). null: glibc's default.",
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="API keys (by SHA-256 digest, or raw from $TIDE_API_KEYS) with "
        "per-key rate limits; off while no key is configured.",
    )


    @model_validator(mode="after")
    def _front(self) -> "ServerConfig":
        if self.front == "haproxy" and not self.direct_ingress:
            if "front" not in self.model_fields_set:  # the default follows: Serve's proxy serves the port
                self.front = "ingress"
                return self
            raise ValueError("server.front: haproxy needs server.direct_ingress: true (the ingress behind it "
                             "listens on its own port)")
        return self

    @model_validator(mode="after")
    def _limits_in_one_ingress(self) -> "ServerConfig":
        a = self.auth
        limited = [k.name for k in a.keys if k.requests_per_minute or k.tokens_per_minute]
        if a.env_requests_per_minute or a.env_tokens_per_minute:
            limited.append(f"${a.keys_env}")
        n = self.ingress_replicas
        if n > 1 and limited and self.front == "ingress":  # behind HAProxy, one leader ingress governs them
            raise ValueError(f"server.ingress_replicas: {n} with per-key limits ({', '.join(limited)}) and "
                             f"server.front: ingress: each ingress keeps its own buckets, so the limits would allow "
                             f"{n}x what they say; use front: haproxy (limits then hold across fronts) or one "
                             "ingress replica")
        return self

    def private_ingress_port(self) -> int:
        """Where the ingress replica listens: the public port, or its own port behind HAProxy."""
        if self.front == "haproxy":
            return self.ingress_port or self.port + 1
        return self.port

    def ingress_port_range(self) -> tuple[int, int]:
        """The ports Serve's direct ingress may bind (behind HAProxy a few: an update starts the new ingress
        beside the old one)."""
        low = self.private_ingress_port()
        return low, low + (8 if self.front == "haproxy" else 1)


class TideConfig(_Strict):
    """The whole config file."""

    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP ingress settings.")
    models: list[ModelConfig] = Field(min_length=1, description="Models to serve; names must be unique.")

    @model_validator(mode="after")
    def _unique(self) -> "TideConfig":
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"model name {m.name!r} appears twice")
            seen.add(m.name)
        deployments: dict[str, str] = {}
        for m in self.models:
            other = deployments.setdefault(deployment_name(m.name), m.name)
            if other != m.name:
                raise ValueError(f"model names {other!r} and {m.name!r} map to the same Serve deployment "
                                 f"{deployment_name(m.name)!r}; rename one")
        clash = name_collisions(self.adapter_names())
        if clash:
            raise ValueError(f"adapter name(s) {', '.join(clash)} equal another model's name")
        for m in self.models:
            if self.server.front == "haproxy" and m.autoscaling_policy == "serve" and m.replicas.min < m.replicas.max:
                raise ValueError(
                    f"models.{m.name}.autoscaling_policy: `serve` counts requests at Serve's handles, and behind "
                    f"server.front: haproxy they go straight to the replicas' HTTP servers, so it would see none "
                    f"and never scale; keep the default `tide` policy (it reads the engines' queues) or set "
                    f"server.front: ingress")
        return self

    def adapter_names(self) -> dict[str, list[str]]:
        """Every model's LoRA adapter names (empty lists for models without adapters)."""
        return {m.name: sorted(m.lora.adapters) if m.lora else [] for m in self.models}

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


APP_NAME = "tide"  # the Serve application Tide deploys


def deployment_name(model_name: str) -> str:
    """The Serve deployment of a model (Serve names allow fewer characters than model names)."""
    return "model-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in model_name)


def _format_error(path: str | Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid config"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str | Path = "<config>", base_dir: Path | None = None) -> TideConfig:
    """Validate a loaded mapping; relative local model paths are made absolute against `base_dir`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with `models:` (got {type(data).__name__})")
    try:
        cfg = TideConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(source, e)) from None
    if base_dir is not None:
        for m in cfg.models:
            if m.model.startswith((".", "/", "~")):
                m.model = str((base_dir / Path(m.model).expanduser()).resolve())
            if m.lora is not None:
                m.lora.resolve_paths(base_dir)
    problems = [f"  models.{i}.lora: {p}" for i, m in enumerate(cfg.models) if m.lora for p in adapter_problems(m.lora)]
    problems += [f"  models.{i}.{p}" for i, m in enumerate(cfg.models) for p in m.shape_problems()]
    if problems:  # the engine would refuse these adapters, or die on the first request that names one
        raise ConfigError("\n".join([f"{source}: invalid config", *problems]))
    return cfg


def load_config(path: str | Path) -> TideConfig:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_config(data, source=p, base_dir=p.resolve().parent)
