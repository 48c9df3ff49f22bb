"""The ingress's front door, in the order a request meets it: API key, per-key rate limit, the model's queue.

No Ray and no FastAPI here: the ingress passes headers, the clock and the capacity in, and gets back either a
`Pass` to release when the request ends or a `Refused` with the status, OpenAI error body and headers to send.
Only key digests reach this object (the raw keys were hashed where `tide serve` ran).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .admission import AdmissionConfig, AdmissionGate, Reject
from .auth import UNAUTHORIZED_HEADERS, AuthConfig, KeyEntry, KeyRing, authorize
from ..errors import TideError, queue_full, rate_limited
from .ratelimit import Allowed, Limited, Limits, RateLimiter, estimate_tokens, ratelimit_headers

Clock = Callable[[], float]
# Completion tokens charged on arrival for a request without max_tokens (settled with the real usage at the end):
# charging the whole rest of a long context would refuse every such request of a key with a modest limit.
UNSET_MAX_TOKENS_CHARGE = 1024


@dataclass
class Refused(Exception):
    """A request turned away at the door: send `error` with `headers` (401 or 429)."""

    error: TideError
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""


@dataclass
class Pass:
    """An admitted request. `headers` go on the response; call `done` exactly once when it ends (idempotent)."""

    headers: dict[str, str]
    _done: Callable[[int | None], None]
    _finished: bool = False

    def done(self, used_tokens: int | None = None) -> None:
        """Free the queue slot and settle the key's token charge with the real usage (None keeps the estimate)."""
        if not self._finished:
            self._finished = True
            self._done(used_tokens)

    def failed(self, status: int) -> None:
        """End a request that failed with `status`: refused by the replica (4xx) used no tokens; one cut short
        (timeout, client gone, replica died) may have used some, so it keeps the estimate."""
        self.done(None if status in (499, 504) or status >= 500 else 0)

    def __del__(self) -> None:
        # Safety net: a stream whose client left before its body started is never iterated, so its `finally`
        # never runs; the slot must still come back when the response object is dropped.
        if not self._finished:
            try:
                self.done(None)
            except Exception:  # noqa: BLE001 - nothing can be raised from __del__
                pass


def prompt_chars(req: Any) -> int:
    """Characters (or token ids) of a request's prompt or inputs, for the admission-time estimate."""
    if hasattr(req, "messages"):
        return sum(len(m.get("content") or "") for m in req.chat_messages())
    items = req.inputs() if hasattr(req, "inputs") else req.prompts()  # embeddings have inputs
    return sum(len(p) * (1 if isinstance(p, str) else 4) for p in items)


class Guard:
    """Keys, rate limits and one bounded queue per model; one instance per ingress replica."""

    def __init__(self, auth: AuthConfig, admission: Mapping[str, AdmissionConfig], clock: Clock = time.monotonic):
        self.ring = KeyRing.from_config(auth, environ={})  # digests only; the replica's environment is not read
        self.limiter = RateLimiter()
        self.gates = {name: AdmissionGate(cfg, capacity=0) for name, cfg in admission.items()}
        self.clock = clock

    def check_key(self, path: str, headers: Mapping[str, str]) -> KeyEntry | None:
        """The caller's key entry (None on open paths or with auth off); raises Refused(401) otherwise."""
        d = authorize(self.ring, path, headers.get("authorization"), headers.get("x-api-key"))
        if isinstance(d, TideError):
            raise Refused(d, dict(UNAUTHORIZED_HEADERS), "unauthorized")
        return d

    def admit(self, model: str, key: KeyEntry | None, req: Any, capacity: int,
              max_model_len: int | None) -> Pass:
        """Charge the key's buckets, then take a slot in the model's queue; raises Refused(429) when either is full.

        `capacity` is what the model's running replicas take at once (replicas x max_num_seqs)."""
        now = self.clock()
        limits = Limits(key.requests_per_minute, key.tokens_per_minute) if key is not None else Limits()
        estimate = 0
        headers: dict[str, str] = {}
        if not limits.unlimited:
            wanted = req.requested_max_tokens() if hasattr(req, "requested_max_tokens") else 0  # 0: embeddings
            if wanted is None:
                rest = (max_model_len or UNSET_MAX_TOKENS_CHARGE) - math.ceil(prompt_chars(req) / 4)
                wanted = max(0, min(UNSET_MAX_TOKENS_CHARGE, rest))
            estimate = estimate_tokens(prompt_chars(req), wanted, max_model_len, getattr(req, "n", 1))
            d = self.limiter.charge(key.name, limits, now, estimate)
            if isinstance(d, Limited):
                retry = {"Retry-After": d.retry_after_header} if d.retry_after_header else {}
                raise Refused(rate_limited(key.name, d.limit, d.limit_value, d.requested, d.retry_after_s), retry, f"rate_limited_{d.limit}")
            assert isinstance(d, Allowed)
            headers = ratelimit_headers(limits, d)
        gate = self.gates[model]
        gate.set_capacity(capacity)
        a = gate.try_admit(now)
        if isinstance(a, Reject):
            if not limits.unlimited:
                self.limiter.refund(key.name, limits, now, estimate)
            raise Refused(queue_full(model, a.in_flight, a.limit, a.retry_after_s), {"Retry-After": str(a.retry_after_s)}, "queue_full")

        def done(used: int | None) -> None:
            t = self.clock()
            gate.release(t)
            if not limits.unlimited and used is not None:
                self.limiter.settle(key.name, limits, t, estimate, used)

        return Pass(headers, done)
