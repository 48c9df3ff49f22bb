"""The public port's front: an HAProxy config written from Tide's config, and the runtime commands that keep
its replica table current (pure; serving/front/haproxy_proc.py runs the process).

Per request HAProxy reads the body's `model` (`json_query` on the buffered body), maps it (LoRA `base:adapter`
included) to that model's backend and sends the request straight to a replica's own HTTP server (vLLM's OpenAI
app, serving/replica/http_server.py): requests whose prompts begin alike go to the same replica (its prefix
cache), bounded so that no replica takes more than 1.5x the average load. A model's backend holds one server slot per
possible replica; the front's loop fills, drains and frees slots from the replicas' own reports.

What HAProxy cannot decide goes to an ingress replica (its `ingress` backend: every ingress replica of the
cluster, one slot each, so a front outlives the ingress that started it), which governs it as before:
every route but the three model routes, a model with no running replica (the cold-start holder), a body whose
`model` is past the buffer, a missing or wrong key (the ingress's 401), an unknown model (its 404).

Every request with a key that has rate limits, on any route, goes to one ingress of the cluster, the same one
from every front, so that its buckets and token settle hold for all fronts together: the `governor` backend
holds the ingresses in the order of their addresses and takes the first one up (`balance first`), so fronts
that know the same ingresses pick the same one, and the same next one when it is down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
BUFFER_BYTES = 65536  # HAProxy's tune.bufsize: a `model` within this much of the body is routed by the front
SLOT_PREFIX = "r"
INGRESS = "ingress"  # the backend of the ingress replicas (the governed path)
GOVERNOR = "governor"  # the backend of keys with rate limits: one ingress, the same from every front
INGRESS_SLOTS = 16  # ingress replicas one front can know at once (one per node, two while one rolls)
INGRESS_CHECK = "check inter 1s fall 1 rise 1 observe layer4 error-limit 1 on-error mark-down"
AFFINITY_CHARS = 512  # the prompt's head that picks a replica (a chat's system prompt, a few-shot preamble)


@dataclass(frozen=True)
class FrontModel:
    """One model as the front sees it: its names (the model and its `model:adapter` names), its queue bound."""

    name: str
    names: tuple[str, ...]
    slots: int  # requests one replica runs at once (max_num_seqs)
    max_queued: int  # the model's bounded queue beyond what its replicas run
    max_replicas: int


@dataclass(frozen=True)
class FrontSpec:
    host: str
    port: int
    ingress: str  # "host:port" of the ingress that holds a model's requests when none of its replicas can
    models: tuple[FrontModel, ...]
    auth: bool  # keys are configured: only `fast_keys` may skip the ingress
    fast_keys: tuple[str, ...] = ()  # SHA-256 digests of keys without rate limits
    request_timeout_s: float = 600.0
    socket: str = ""  # the runtime API's unix socket
    max_body_bytes: int = 4 * 1024 * 1024
    x_api_key: bool = True  # `x-api-key` is accepted besides `Authorization: Bearer`
    listen_fd: int | None = None  # the public port's socket, inherited (serving/front/listener.py)
    ingresses: tuple[str, ...] = ()  # ingress replicas known at start (their slots are filled in the config)
    limited_keys: tuple[str, ...] = ()  # SHA-256 digests of keys with rate limits: all go to one ingress


def backend(i: int) -> str:
    return f"m{i}"


def maps(spec: FrontSpec) -> dict[str, str]:
    """The map files the config reads: model name -> backend, key digest -> 1 (fast keys, limited keys),
    backend -> Retry-After."""
    models = "".join(f"{n} {backend(i)}\n" for i, m in enumerate(spec.models) for n in m.names)
    keys = "".join(f"{d} 1\n" for d in spec.fast_keys)
    limited = "".join(f"{d} 1\n" for d in spec.limited_keys)
    retry = "".join(f"{backend(i)} 1\n" for i in range(len(spec.models)))
    return {"models.map": models, "keys.map": keys, "limited.map": limited, "retry.map": retry}


def _error_file(status: int, reason: str, message: str, kind: str, code: str) -> str:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n{body}")


def error_files() -> dict[str, str]:
    """HAProxy's own answers, in OpenAI's error shape (its defaults are HTML)."""
    return {
        "e502.http": _error_file(502, "Bad Gateway", "The model replica failed while answering.",
                                 "service_unavailable_error", "replica_failed"),
        "e503.http": _error_file(503, "Service Unavailable", "No replica can take the request right now.",
                                 "service_unavailable_error", "unavailable"),
        "e504.http": _error_file(504, "Gateway Timeout", "The request timed out.", "timeout_error", "timeout"),
        "e400.http": _error_file(400, "Bad Request", "The request could not be parsed as HTTP.",
                                 "invalid_request_error", "bad_request"),
        "e408.http": _error_file(408, "Request Timeout", "The request was not received in time.",
                                 "invalid_request_error", "request_timeout"),
    }


def queue_full_body(model: str) -> str:
    """The ingress's own queue-full error (`serving.errors.queue_full`), as the front sends it."""
    return json.dumps({"error": {"message": f"Model `{model}` is overloaded: its queue is full. Retry after the "
                                 "seconds in Retry-After.", "type": "rate_limit_error", "param": None,
                                 "code": "model_overloaded"}})


def rejected_counts(stat_csv: str, names: dict[str, str]) -> dict[str, int]:
    """Requests the front turned away because a model's queue was full, per model, from `show stat`
    (`names`: backend -> model)."""
    lines = stat_csv.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    head = lines[0][2:].split(",")
    out: dict[str, int] = {}
    for line in lines[1:]:
        row = dict(zip(head, line.split(",")))
        be = row.get("pxname", "")
        if row.get("svname") == "BACKEND" and be.startswith("full_") and be[5:] in names:
            out[names[be[5:]]] = int(row.get("stot") or 0)
    return out


def render(spec: FrontSpec, folder: Path) -> str:
    """haproxy.cfg for `spec`; the map and error files it names are in `folder` (write_files)."""
    f = str(folder)
    timeout = int(spec.request_timeout_s) + 30  # the replica enforces the deadline; this is the backstop
    errors = "\n".join(f"    errorfile {code} {f}/e{code}.http" for code in (400, 408, 502, 503, 504))
    lines = [
        "global",
        f"    stats socket {spec.socket} mode 600 level admin",
        f"    tune.bufsize {BUFFER_BYTES}",
        # One thread: a model's queue bound is read (be_conn) and taken (use_backend) in one step, which two
        # threads evaluating two requests at once would not be (seen: 3 admitted where the bound left room for 1).
        "    nbthread 1",
        "",
        "defaults",
        "    mode http",
        "    option http-buffer-request",
        "    option http-server-close",  # one request per replica connection: be_conn counts requests in flight
        "    option abortonclose",
        "    option http-no-delay",  # a stream's small chunks leave at once (no MSG_MORE coalescing)
        "    timeout connect 2s",
        "    timeout http-request 30s",
        "    timeout queue 10s",
        f"    timeout client {timeout}s",
        f"    timeout server {timeout}s",
        "    timeout http-keep-alive 60s",
        "    retries 3",
        "    option redispatch 1",  # a retry goes to another replica
        # a replica gone before any byte answered; 503: its engine died (it also closed its listener, so the
        # retry finds it refused and marked down, and goes on to another replica or the ingress) or it is full
        "    retry-on conn-failure empty-response junk-response 503",
        errors,
        "",
        "frontend tide",
        f"    bind {f'fd@{spec.listen_fd}' if spec.listen_fd is not None else f'{spec.host}:{spec.port}'}",
        f"    acl model_route path {' '.join(MODEL_ROUTES)}",
        "    acl post method POST",
        "    http-request set-var(txn.model) req.body,json_query('$.model') if model_route post",
        f"    http-request set-var(txn.be) var(txn.model),map_str({f}/models.map) if model_route post",
        # the prompt's head (a completion's prompt, a chat's first message): equal heads go to the same replica,
        # whose vLLM prefix cache then skips their shared prefill
        f"    http-request set-var(txn.head) req.body,json_query('$.prompt'),bytes(0,{AFFINITY_CHARS}) if model_route post",
        f"    http-request set-var(txn.head) req.body,json_query('$.messages[0].content'),bytes(0,{AFFINITY_CHARS}) "
        "if model_route post !{ var(txn.head) -m found }",
        f"    http-request set-header x-tide-max-timeout {spec.request_timeout_s:g}",
        f"    http-request set-header x-tide-max-body {spec.max_body_bytes}",
    ]
    # the key's digest on every route when some keys have limits (they go to one ingress whatever the route),
    # else on the model routes only
    keyed = "" if spec.limited_keys else "{ var(txn.be) -m found } "
    uses = []
    if spec.auth:
        lines += [
            "    http-request set-var(txn.key) req.hdr(authorization),regsub('^[Bb]earer +',''),digest(sha256),hex,"
            f"lower if {keyed}{{ req.hdr(authorization) -m found }}",
        ]
        if spec.x_api_key:
            lines.append("    http-request set-var(txn.key) req.hdr(x-api-key),digest(sha256),hex,lower if "
                         f"{keyed}!{{ req.hdr(authorization) -m found }} {{ req.hdr(x-api-key) -m found }}")
        lines += [
            f"    acl key_ok var(txn.key),map_str({f}/keys.map,0) -m str 1",
        ]
        if spec.limited_keys:
            lines.append(f"    acl limited var(txn.key),map_str({f}/limited.map,0) -m str 1")
            uses.append(f"    use_backend {GOVERNOR} if limited")
    else:
        lines.append("    acl key_ok always_true")
    for i, m in enumerate(spec.models):
        b = backend(i)
        on = f"is_{b} up_{b} key_ok"
        lines += [
            f"    acl is_{b} var(txn.be) -m str {b}",
            f"    acl up_{b} nbsrv({b}) gt 0",
            f"    http-request set-var(txn.room) nbsrv({b}),mul({m.slots}),add({m.max_queued}) if {on}",
            f"    http-request set-var(txn.busy) be_conn({b}) if {on}",
            f"    http-request set-var(txn.room) var(txn.room),sub(txn.busy) if {on}",
        ]
        uses += [f"    use_backend full_{b} if {on} {{ var(txn.room) -m int le 0 }}", f"    use_backend {b} if {on}"]
    lines += [*uses, f"    default_backend {INGRESS}", ""]
    ingress = _backup_address(spec)
    for i, m in enumerate(spec.models):
        lines += [
            f"backend {backend(i)}",
            # prefix affinity with bounded load: no replica takes over 1.5x the average of requests in flight
            "    balance hash var(txn.head)",
            "    hash-type consistent",
            "    hash-balance-factor 150",
            "    option httpchk GET /health",
            "    http-check expect status 200",
            # a refused connection marks the replica down at once (it died): retries then go to another
            f"    server-template {SLOT_PREFIX} 1-{max(m.max_replicas, 1)} 127.0.0.1:1 disabled check inter 1s "
            f"fall 2 rise 1 maxconn {m.slots + m.max_queued} observe layer4 error-limit 1 on-error mark-down",
            f"    server ingress {ingress} backup",  # no replica left (all died or stopping): the ingress holds it
            "",
            f"backend full_{backend(i)}",  # the model's queue is full (a backend of its own: its count is the metric)
            f"    http-request return status 429 content-type application/json hdr Retry-After "
            f"\"%[str({backend(i)}),map_str({f}/retry.map,1)]\" file {f}/{backend(i)}.429.json",
            "",
        ]
    lines += [*_ingress_backend(INGRESS, spec), ""]
    if spec.limited_keys:
        lines += [*_ingress_backend(GOVERNOR, spec), ""]
    return "\n".join(lines)


def _ingress_backend(name: str, spec: FrontSpec) -> list[str]:
    """One slot per ingress replica, the ones known at start filled in (the loop keeps them current from the
    hub): a refused connection (a stopping ingress closed its listener) marks that one down and the request goes
    to another. The governor's slots are in address order and it takes the first one up."""
    known = governor_order(spec.ingresses) if name == GOVERNOR else spec.ingresses
    return [
        f"backend {name}",
        *(["    balance first"] if name == GOVERNOR else []),
        "    retry-on conn-failure",
        *[f"    server {SLOT_PREFIX}{i} {addr} {INGRESS_CHECK}" for i, addr in enumerate(known, 1)],
        f"    server-template {SLOT_PREFIX} {len(known) + 1}-{INGRESS_SLOTS} 127.0.0.1:1 disabled {INGRESS_CHECK}",
        # while its slots move (an ingress came or went, a moved slot not yet checked up), the front's own ingress
        *([f"    server ingress {_backup_address(spec)} backup"] if name == GOVERNOR else []),
    ]


def _backup_address(spec: FrontSpec) -> str:
    host, _, port = spec.ingress.rpartition(":")
    return f"{host or '127.0.0.1'}:{port or 1}{'' if spec.ingress else ' disabled'}"


def point_at(server: str, addr: str, state: str = "ready") -> list[str]:
    """Runtime API commands that aim `server` (backend/name) at `addr` (host:port) in `state`."""
    host, _, port = addr.rpartition(":")
    return [f"set server {server} addr {host} port {port}", f"set server {server} state {state}"]


def governor_order(ingresses: "set[str] | tuple[str, ...]") -> tuple[str, ...]:
    """The governor's slots, first to last: the same in every front that knows the same ingresses."""
    return tuple(sorted(ingresses))[:INGRESS_SLOTS]


def governor_commands(before: tuple[str, ...], after: tuple[str, ...]) -> list[str]:
    """Runtime API commands that turn the governor's slots from `before` into `after` (governor_order)."""
    cmds = []
    for i, addr in enumerate(after, 1):
        if i > len(before) or before[i - 1] != addr:
            cmds += point_at(f"{GOVERNOR}/{SLOT_PREFIX}{i}", addr)
    cmds += [f"set server {GOVERNOR}/{SLOT_PREFIX}{i} state maint" for i in range(len(after) + 1, len(before) + 1)]
    return cmds


def ingress_table(spec: FrontSpec) -> "Table":
    """The ingress slots as `render` fills them from `spec.ingresses`."""
    return {addr: (Slot(INGRESS, i), False) for i, addr in enumerate(spec.ingresses, 1)}


def backup_commands(spec: FrontSpec, address: str) -> list[str]:
    """Point every model backend's backup server (its requests when no replica can take them), and the
    governor's, at `address`."""
    servers = [backend(i) for i in range(len(spec.models))] + ([GOVERNOR] if spec.limited_keys else [])
    return [c for be in servers for c in point_at(f"{be}/ingress", address)]


def write_files(spec: FrontSpec, folder: Path) -> Path:
    """Write haproxy.cfg and everything it reads into `folder`; returns the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in {**maps(spec), **error_files()}.items():
        (folder / name).write_text(text)
    for i, m in enumerate(spec.models):
        (folder / f"{backend(i)}.429.json").write_text(queue_full_body(m.name))
    cfg = folder / "haproxy.cfg"
    cfg.write_text(render(spec, folder))
    return cfg


@dataclass(frozen=True)
class Slot:
    backend: str
    index: int  # 1-based, as server-template numbers them

    @property
    def server(self) -> str:
        return f"{self.backend}/{SLOT_PREFIX}{self.index}"


Table = dict[str, tuple[Slot, bool]]  # address -> (its slot, draining)


def plan_slots(current: Table, wanted: dict[str, tuple[str, bool]], capacity: dict[str, int]) -> tuple[Table, list[str]]:
    """Runtime API commands that make the servers match `wanted` (address -> (backend, draining)).

    An address keeps its slot while it is wanted; a new one takes the lowest free slot of its backend (none free:
    left out until one frees); a gone one is put in maintenance. Returns the new table and the commands."""
    table = {a: v for a, v in current.items() if a in wanted and wanted[a][0] == v[0].backend}
    cmds = [f"set server {slot.server} state maint" for a, (slot, _) in current.items() if a not in table]
    for addr, (be, draining) in sorted(wanted.items()):
        state = "drain" if draining else "ready"
        if addr in table:
            slot, was = table[addr]
            if was != draining:
                cmds.append(f"set server {slot.server} state {state}")
                table[addr] = (slot, draining)
            continue
        used = {s.index for s, _ in table.values() if s.backend == be}
        free = [i for i in range(1, capacity.get(be, 0) + 1) if i not in used]
        if not free:
            continue
        slot = Slot(be, free[0])
        table[addr] = (slot, draining)
        cmds += point_at(slot.server, addr, state)
    return table, cmds
