"""API keys: who may call Tide. Pure logic (no Ray, no FastAPI); the ingress asks `KeyRing` per request.

Only SHA-256 digests of keys are kept: keys from the config are given as digests, keys from the environment
variable are hashed as they are read and the raw strings dropped. A presented key is hashed and compared with
`hmac.compare_digest` against *every* stored digest, so the time taken does not depend on which key matched.
A plain (unsalted, fast) hash is enough because API keys are long random strings, not passwords: there is no
dictionary to try. Auth is on iff at least one key is configured.

Accepted headers: `Authorization: Bearer <key>` (what the OpenAI clients send) and `x-api-key: <key>` (what
some proxies and SDKs send; turn off with `accept_x_api_key: false`).

Hash a key for the config with `python -m serving.gate.auth` (reads the key from the terminal, prints the digest).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from ..errors import TideError, unauthorized

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
ENV_KEY_PREFIX = "env-"  # keys read from the environment are named env-1, env-2, ... in their order there


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyEntry(_Strict):
    """One API key, by the digest of its raw value, with its own rate limits."""

    name: str = Field(description="Who holds the key; shown in logs and rate-limit messages (never the key).")
    sha256: str = Field(
        repr=False, description="Lower-case hex SHA-256 of the raw key's UTF-8 bytes (`python -m serving.gate.auth`)."
    )
    requests_per_minute: PositiveInt | None = Field(None, description="Requests this key may send per minute; "
                                                    "None is unlimited.")
    tokens_per_minute: PositiveInt | None = Field(None, description="Prompt + completion tokens this key may use "
                                                  "per minute; None is unlimited.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"name {v!r} must be 1-64 of letters, digits and . _ : - (not starting with one)")
        return v

    @field_validator("sha256")
    @classmethod
    def _digest(cls, v: str) -> str:
        v = v.strip().lower()
        if not _HEX64.match(v):
            raise ValueError("must be the 64 hex digits of a SHA-256 digest (not the raw key)")
        return v


class AuthConfig(_Strict):
    """API keys and which paths need one. With no key configured (here or in `keys_env`), auth is off."""

    keys: list[KeyEntry] = Field(default_factory=list, description="Keys by digest, each with its limits.")
    keys_env: str | None = Field(
        "TIDE_API_KEYS", description="Environment variable holding comma-separated raw keys (hashed when read, "
        "the raw values are not kept); None ignores the environment.",
    )
    env_requests_per_minute: PositiveInt | None = Field(None, description="Requests/min for each key from "
                                                        "`keys_env`; None is unlimited.")
    env_tokens_per_minute: PositiveInt | None = Field(None, description="Tokens/min for each key from `keys_env`; "
                                                      "None is unlimited.")
    open_paths: list[str] = Field(
        default_factory=lambda: ["/health", "/", "/status", "/static/*"],
        description="Paths served without a key (exact, or a glob like `/static/*`): the health check and the "
        "browser pages. Everything else, /v1/* and /tide/status included, needs a key when auth is on.",
    )
    metrics_public: bool = Field(False, description="Serve `/metrics` without a key (for a scraper on a trusted "
                                 "network); False puts it behind a key like the API.")
    accept_x_api_key: bool = Field(True, description="Also accept the key in an `x-api-key` header, not only "
                                   "`Authorization: Bearer`.")

    @model_validator(mode="after")
    def _unique(self) -> "AuthConfig":
        names = [k.name for k in self.keys]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"key names must be unique; repeated: {', '.join(dup)}")
        digests = [k.sha256 for k in self.keys]
        if len(set(digests)) != len(digests):
            raise ValueError("two keys have the same sha256 (the same key listed twice)")
        if self.keys_env is not None and any(k.name.startswith(ENV_KEY_PREFIX) for k in self.keys):
            raise ValueError(f"key names starting with {ENV_KEY_PREFIX!r} are reserved for keys from `keys_env`")
        return self


def hash_key(raw: str) -> str:
    """Hex SHA-256 of a raw key: what the config stores instead of the key."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def parse_env_keys(value: str | None) -> list[str]:
    """The raw keys in a comma-separated environment value (blanks around and between commas ignored)."""
    return [k.strip() for k in (value or "").split(",") if k.strip()]


def resolve_env(cfg: AuthConfig, environ: Mapping[str, str] | None = None) -> AuthConfig:
    """The same config with the environment's keys hashed into `keys` and `keys_env` off.

    Call it where `tide serve` starts and ship the result to the ingress replica: only digests travel through
    Ray (runtime environments and actor arguments are visible in Ray's dashboard and state API)."""
    ring = KeyRing.from_config(cfg, environ)
    return cfg.model_copy(update={"keys": list(ring.entries), "keys_env": None})


def presented_key(authorization: str | None, x_api_key: str | None = None, accept_x_api_key: bool = True) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>` first, then `x-api-key` if accepted."""
    if authorization:
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            return rest.strip()
    if accept_x_api_key and x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


@dataclass(frozen=True)
class KeyRing:
    """The digests that may call Tide, plus which paths are open. Safe to print: it holds no raw key."""

    entries: tuple[KeyEntry, ...] = ()
    open_paths: tuple[str, ...] = ()
    metrics_public: bool = False
    accept_x_api_key: bool = True
    _digests: tuple[bytes, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg: AuthConfig, environ: Mapping[str, str] | None = None) -> "KeyRing":
        """Keys from the config plus those in `cfg.keys_env` (hashed here; raw values are not kept)."""
        env = os.environ if environ is None else environ
        entries = list(cfg.keys)
        seen = {k.sha256 for k in entries}
        raw_keys = parse_env_keys(env.get(cfg.keys_env)) if cfg.keys_env else []
        for i, raw in enumerate(raw_keys, 1):
            digest = hash_key(raw)
            if digest in seen:
                continue  # the same key in the config and the environment: the config's entry (and limits) win
            seen.add(digest)
            entries.append(KeyEntry(name=f"{ENV_KEY_PREFIX}{i}", sha256=digest,
                                    requests_per_minute=cfg.env_requests_per_minute,
                                    tokens_per_minute=cfg.env_tokens_per_minute))
        return cls(tuple(entries), tuple(cfg.open_paths), cfg.metrics_public, cfg.accept_x_api_key,
                   tuple(bytes.fromhex(e.sha256) for e in entries))

    @property
    def enabled(self) -> bool:
        """Auth is on iff any key is configured."""
        return bool(self.entries)

    def is_open(self, path: str) -> bool:
        """Whether `path` is served without a key (always true when auth is off)."""
        if not self.enabled:
            return True
        if path == "/metrics" or path.startswith("/metrics/"):
            return self.metrics_public
        return any(fnmatch.fnmatchcase(path, p) if "*" in p else path == p for p in self.open_paths)

    def check(self, authorization: str | None, x_api_key: str | None = None) -> KeyEntry | None:
        """The entry whose key the request presents, or None. Compares against every entry, matched or not."""
        raw = presented_key(authorization, x_api_key, self.accept_x_api_key)
        if raw is None:
            return None
        digest = hashlib.sha256(raw.encode("utf-8")).digest()
        found: KeyEntry | None = None
        for entry, stored in zip(self.entries, self._digests):
            if hmac.compare_digest(digest, stored):  # no early exit: same work whichever entry matches
                found = entry
        return found


UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}


def authorize(ring: KeyRing, path: str, authorization: str | None,
              x_api_key: str | None = None) -> KeyEntry | TideError | None:
    """One decision per request: None (open path or auth off), the caller's entry, or the 401 to send."""
    if ring.is_open(path):
        return None
    entry = ring.check(authorization, x_api_key)
    if entry is not None:
        return entry
    return unauthorized(presented_key(authorization, x_api_key, ring.accept_x_api_key) is not None)


if __name__ == "__main__":  # pragma: no cover - a convenience for operators
    import getpass

    print(hash_key(getpass.getpass("API key (not echoed): ")))
