"""Per-key rate limits: a token bucket for requests/min and one for tokens/min. Pure; the caller passes `now`.

Tokens are not known when a request arrives, so admission charges an estimate (prompt tokens + max_tokens,
an upper bound) and `settle` reconciles it with the real usage when the request ends: the unused part goes back,
an underestimate becomes debt (the bucket may go below zero and refills from there). A request turned away
after it was charged (bad input, full queue) gets everything back with `refund`.

Each bucket holds a full minute's allowance (the burst) and refills continuously at limit/60 per second.
Memory is bounded: at most `max_keys` buckets, and a bucket that has refilled to full is dropped first,
since a full bucket behaves exactly like a missing one.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass



@dataclass(frozen=True)
class Limits:
    """A key's per-minute limits; None means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive or None (got {v})")

    @property
    def unlimited(self) -> bool:
        return self.requests_per_minute is None and self.tokens_per_minute is None


@dataclass
class Bucket:
    """A token bucket: `level` of `capacity`, refilling at capacity/60 per second (level may be negative: debt)."""

    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
            self.updated = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` can be taken (0 if it can now)."""
        return max(0.0, (amount - self.level) * 60.0 / self.capacity)

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.level >= self.capacity


@dataclass(frozen=True)
class Allowed:
    """The request may go ahead; `tokens` were charged (settle them later). Remaining is None when unlimited."""

    tokens: int
    remaining_requests: int | None
    remaining_tokens: int | None


@dataclass(frozen=True)
class Limited:
    """The request must wait: `limit` ("requests" or "tokens") ran out. `retry_after_s` is None when the request
    alone needs more tokens than the key's whole per-minute limit, so waiting would never help."""

    limit: str
    limit_value: int
    requested: int
    retry_after_s: float | None

    @property
    def retry_after_header(self) -> str | None:
        """Whole seconds for the Retry-After header (at least 1), or None when retrying cannot succeed."""
        return None if self.retry_after_s is None else str(max(1, math.ceil(self.retry_after_s)))


Decision = Allowed | Limited


@dataclass
class _KeyState:
    requests: Bucket | None
    tokens: Bucket | None


class RateLimiter:
    """Token buckets per key name. Keys come from the configured key ring, so their number is small; the cap
    is a safety net."""

    def __init__(self, max_keys: int = 10_000):
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1 (got {max_keys})")
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _KeyState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _state(self, key: str, limits: Limits, now: float) -> _KeyState:
        st = self._keys.get(key)
        if st is None:
            self._make_room(now)
            st = _KeyState(None, None)
            self._keys[key] = st
        self._keys.move_to_end(key)
        st.requests = _fit(st.requests, limits.requests_per_minute, now)
        st.tokens = _fit(st.tokens, limits.tokens_per_minute, now)
        return st

    def _make_room(self, now: float) -> None:
        if len(self._keys) < self.max_keys:
            return
        self.prune(now)
        while len(self._keys) >= self.max_keys:
            self._keys.popitem(last=False)  # least recently used; loses its debt, the price of bounded memory

    def prune(self, now: float) -> int:
        """Drop buckets that have refilled to full (no information lost). Returns how many were dropped."""
        idle = [k for k, st in self._keys.items()
                if all(b is None or b.full(now) for b in (st.requests, st.tokens))]
        for k in idle:
            del self._keys[k]
        return len(idle)

    def charge(self, key: str, limits: Limits, now: float, tokens: int) -> Decision:
        """Take one request and `tokens` (the estimate) from the key's buckets, all or nothing."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0 (got {tokens})")
        if limits.unlimited:
            return Allowed(tokens, None, None)
        tpm = limits.tokens_per_minute
        if tpm is not None and tokens > tpm:
            return Limited("tokens", tpm, tokens, None)
        st = self._state(key, limits, now)
        waits = []
        if st.requests is not None:
            waits.append((st.requests.wait_s(1), "requests", limits.requests_per_minute, 1))
        if st.tokens is not None:
            waits.append((st.tokens.wait_s(tokens), "tokens", tpm, tokens))
        wait, which, value, requested = max(waits, key=lambda w: w[0])
        if wait > 0:
            return Limited(which, value, requested, wait)
        if st.requests is not None:
            st.requests.level -= 1
        if st.tokens is not None:
            st.tokens.level -= tokens
        return Allowed(tokens, _remaining(st.requests), _remaining(st.tokens))

    def refund(self, key: str, limits: Limits, now: float, tokens: int, requests: int = 1) -> None:
        """Give back what `charge` took for a request that was then turned away (never above the capacity)."""
        st = self._keys.get(key)
        if st is None:
            return  # pruned or evicted since: it was full, so there is nothing to give back
        st.requests = _fit(st.requests, limits.requests_per_minute, now)
        st.tokens = _fit(st.tokens, limits.tokens_per_minute, now)
        if st.requests is not None:
            st.requests.level = min(st.requests.capacity, st.requests.level + requests)
        if st.tokens is not None:
            st.tokens.level = min(st.tokens.capacity, st.tokens.level + tokens)

    def settle(self, key: str, limits: Limits, now: float, charged: int, used: int) -> None:
        """Reconcile the estimate charged at admission with the tokens really used (refund or debt)."""
        if used < 0:
            raise ValueError(f"used must be >= 0 (got {used})")
        st = self._keys.get(key)
        if st is None:
            if used <= charged:
                return  # nothing to give back to a full bucket
            st = self._state(key, limits, now)
        st.tokens = _fit(st.tokens, limits.tokens_per_minute, now)
        if st.tokens is not None:
            st.tokens.level = min(st.tokens.capacity, st.tokens.level + charged - used)


def _fit(bucket: Bucket | None, per_minute: int | None, now: float) -> Bucket | None:
    """The bucket for the current limit: created full, refilled to `now`, resized if the limit changed."""
    if per_minute is None:
        return None
    if bucket is None:
        return Bucket(float(per_minute), float(per_minute), now)
    bucket.refill(now)
    if bucket.capacity != per_minute:
        bucket.level = min(bucket.level, float(per_minute))
        bucket.capacity = float(per_minute)
    return bucket


def _remaining(bucket: Bucket | None) -> int | None:
    return None if bucket is None else max(0, math.floor(bucket.level))


def estimate_tokens(prompt_chars: int, max_tokens: int | None, max_model_len: int | None, n: int = 1) -> int:
    """Tokens to charge at admission, before anything is tokenized (the ingress never tokenizes): about 4
    characters per prompt token (OpenAI's rule of thumb) plus `n` completions of `max_tokens`, or of the rest of
    the context when max_tokens is unset. `settle` corrects it with the real usage."""
    prompt = math.ceil(max(prompt_chars, 0) / 4)
    if max_tokens is None:
        max_tokens = max((max_model_len or 0) - prompt, 0)
    return prompt + max(n, 1) * max_tokens


def ratelimit_headers(limits: Limits, allowed: Allowed) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for an allowed request (only for the limits the key has)."""
    out = {}
    if limits.requests_per_minute is not None and allowed.remaining_requests is not None:
        out["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        out["x-ratelimit-remaining-requests"] = str(allowed.remaining_requests)
    if limits.tokens_per_minute is not None and allowed.remaining_tokens is not None:
        out["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        out["x-ratelimit-remaining-tokens"] = str(allowed.remaining_tokens)
    return out
