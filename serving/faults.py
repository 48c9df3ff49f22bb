"""Pure rules for failures: request deadlines, which errors are safe to retry, and when an engine is stuck.

The ingress retries a request on another replica only while nothing of it has reached the client (a
non-streamed request, or a stream before its first chunk): regenerating then is invisible to the caller.
"""

from __future__ import annotations

import math

from .errors import ENGINE_DEAD, TideError, bad_request

TIMEOUT_HEADER = "x-request-timeout"

# Errors that mean "the replica (or its actor) went away", not "your request is bad".
REPLICA_GONE = {"ActorDiedError", "ActorUnavailableError", "RayActorError", "EngineDeadError",
                 "DeploymentUnavailableError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError"}


def request_deadline_s(header: str | None, server_max_s: float) -> float:
    """Seconds this request may take: the `X-Request-Timeout` header when given (never above the server's
    limit), else the server's `request_timeout_s`."""
    if header is None or header.strip() == "":
        return server_max_s
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise bad_request(f"Header X-Request-Timeout must be a positive number of seconds, got {header[:40]!r}.",
                          "X-Request-Timeout", "invalid_timeout")
    return min(value, server_max_s)


def _chain(exc: BaseException | None):
    """`exc` and what caused it (Ray's `cause`, then `__cause__`), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "cause", None) or exc.__cause__


def replica_gone(exc: BaseException) -> bool:
    """True when the error says the replica or its engine died (retry elsewhere), False otherwise."""
    for e in _chain(exc):
        if type(e).__name__ in REPLICA_GONE:
            return True
        if isinstance(e, TideError):
            return e.code == "engine_dead"
    return False


def engine_died(exc: BaseException) -> bool:
    """True when the replica answered but its engine is dead: the replica stays routable until Serve's health
    checks replace it (seconds), so a retry must wait for that rather than count as another replica's answer."""
    for e in _chain(exc):
        if isinstance(e, TideError):
            return e.code == "engine_dead"
        if type(e).__name__ == ENGINE_DEAD:
            return True
    return False


def retry_wait_s(attempt: int, first_s: float = 0.25, most_s: float = 2.0) -> float:
    """Pause before retry `attempt` (0-based) of a request whose engine died: doubling, capped."""
    return min(first_s * 2 ** attempt, most_s)


def engine_stuck(now: float, last_progress: float, unfinished: int, stuck_after_s: float) -> bool:
    """An engine with work that has not made a step for `stuck_after_s` is stuck (hung kernel, stopped or
    wedged engine process): its health check fails and Serve replaces the replica."""
    return unfinished > 0 and now - last_progress > stuck_after_s
