"""Measured replica start time, as a pure update over successive (time, target, running) observations.

Why: the policy projects rising demand one replica start ahead. The configured `replica_start_s` is a guess;
on a real cluster a start may include node provisioning and take far longer (or, with a warm cache, less).
Each replica "level" k (the k-th replica) is timed from the first observation where the target reached k
while fewer than k ran, until running reaches k. Levels the target drops below before they start are
forgotten (a cancelled start is not a sample). Samples feed an EWMA. No clock: the caller passes `now`.
"""

from __future__ import annotations

from typing import Any, Mapping

START_SMOOTHING = 0.5  # EWMA weight of a new start-time sample


def _ewma_repeat(ewma: float | None, value: float, n: int, alpha: float) -> float | None:
    """EWMA after n equal samples (a batch of replicas that started together), in O(1)."""
    if n <= 0:
        return ewma
    if ewma is None:
        ewma, n = value, n - 1
    return value + (1 - alpha) ** n * (ewma - value)


def track_start(
    state: Mapping[str, Any] | None, now: float, target: int, running: int, alpha: float = START_SMOOTHING
) -> dict[str, Any]:
    """New tracker state: {"pending": [[first level, last level, since], ...], "ewma": s or None, "samples": n}.

    Pending levels are kept as runs (levels that the target reached at the same time), so that a fleet of
    thousands of replicas costs a few entries, not one per replica."""
    st = dict(state or {})
    ewma, samples = st.get("ewma"), int(st.get("samples", 0))
    runs: list[list[float]] = []
    for lo, hi, since in sorted((int(a), int(b), float(c)) for a, b, c in st.get("pending") or []):
        started = min(hi, running) - lo + 1
        if started > 0:  # those replicas now serve: one sample each
            ewma = _ewma_repeat(ewma, max(now - since, 0.0), started, alpha)
            samples += started
            lo = running + 1
        hi = min(hi, target)  # levels above the target were cancelled
        if lo <= hi:
            runs.append([lo, hi, since])
    low = runs[0][0] if runs else target + 1
    if running + 1 < low and running + 1 <= target:  # uncovered below (a replica died): timed from now
        runs.insert(0, [running + 1, min(low - 1, target), now])
    top = int(runs[-1][1]) if runs else running
    if target > top:
        runs.append([max(top, running) + 1, target, now])
    return {"pending": runs, "ewma": ewma, "samples": samples}


def measured_start_s(state: Mapping[str, Any] | None) -> float | None:
    """The EWMA of measured starts, or None before the first sample."""
    return None if not state else state.get("ewma")
