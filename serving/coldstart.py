"""Holding requests for a model that has no replica yet (scaled to zero, or all replicas starting).

Pure pieces only: the cap on held requests and the Retry-After arithmetic. The ingress does the waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class HoldGate:
    """At most `limit` requests wait for a cold model at once; the rest are told to come back (429)."""

    limit: int
    held: int = 0

    def try_hold(self) -> bool:
        if self.held >= self.limit:
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held = max(self.held - 1, 0)


def retry_after_s(expected_start_s: float, waited_s: float) -> int:
    """Seconds a client should wait before retrying: the rest of the expected start, at least 1.

    Past the expected start (a slow start) we cannot know better, so a quarter of it.
    """
    remaining = expected_start_s - waited_s
    if remaining <= 0:
        return max(1, math.ceil(expected_start_s / 4))
    return max(1, math.ceil(remaining))


def update_start_estimate(previous_s: float | None, observed_s: float, weight: float = 0.5) -> float:
    """Running estimate of how long a cold start takes on this cluster (EWMA of what we observed)."""
    return observed_s if previous_s is None else weight * observed_s + (1 - weight) * previous_s
