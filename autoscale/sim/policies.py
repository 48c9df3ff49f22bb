"""The policies the simulator can drive, behind one call shape, registered by name.

`tide` is Tide's production path itself (`autoscale.controller.step`: start-time tracking + `decide_load`).
`serve-default` re-implements Ray Serve 2.60's default rule as a small pure function, from
`ray/serve/autoscaling_policy.py` (`replica_queue_length_autoscaling_policy`, `_apply_scaling_factors`,
`_apply_delay_logic`, `_get_cold_start_scale_up_replicas`) plus the controller's min/max bounds and its
averaging of `total_num_requests` over `look_back_period_s`. `fixed` keeps the fleet at max (a baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat

from ..policy import Load, PolicyConfig
from ..controller import step as tide_step


@dataclass(frozen=True)
class FleetView:
    """What a policy sees on one tick: the same facts Serve's AutoscalingContext carries."""

    now: float
    target: int  # replicas asked for (running + starting)
    running: int  # replicas serving
    load: Load  # Tide's summary of the engines' stats (+ requests queued before any engine)
    total_requests: float  # Serve's total_num_requests: ongoing at replicas + queued at handles


class Policy(Protocol):
    def __call__(self, view: FleetView, state: dict[str, Any]) -> tuple[int, dict[str, Any]]: ...


class ServeDefaultConfig(BaseModel):
    """Ray Serve's AutoscalingConfig fields the default policy reads (defaults are Serve 2.60's)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    target_ongoing_requests: PositiveFloat = Field(2.0, description="Requests per replica the policy aims at.")
    upscale_delay_s: NonNegativeFloat = Field(30.0, description="Upscale decisions must persist this long.")
    downscale_delay_s: NonNegativeFloat = Field(600.0, description="Downscale decisions must persist this long.")
    downscale_to_zero_delay_s: NonNegativeFloat | None = Field(None, description="1 -> 0 delay (None: downscale's).")
    upscaling_factor: PositiveFloat = Field(1.0, description="Multiplier on the upscale step.")
    downscaling_factor: PositiveFloat = Field(1.0, description="Multiplier on the downscale step.")
    look_back_period_s: PositiveFloat = Field(30.0, description="Window the request count is averaged over.")


def _scaling_factors(desired: float, current: int, cfg: ServeDefaultConfig) -> int:
    if current == 0:
        return math.ceil(desired)
    delta = desired - current
    factor = cfg.upscaling_factor if delta > 0 else cfg.downscaling_factor
    scaled = math.ceil(current + factor * delta)
    if math.ceil(float(desired)) < current and scaled == current:
        scaled -= 1
    return scaled


def _delay(desired: int, target: int, cfg: ServeDefaultConfig, st: dict[str, Any], now: float) -> int:
    decision, since = target, st.get("since")
    direction = (desired > target) - (desired < target)
    if direction == 0 or direction != st.get("dir"):
        since = None
    if direction > 0:
        since = now if since is None else since
        if now - since + 1e-6 >= cfg.upscale_delay_s:
            decision, since = desired, None
    elif direction < 0:
        delay = cfg.downscale_delay_s
        if target == 1 and cfg.downscale_to_zero_delay_s is not None:
            delay = cfg.downscale_to_zero_delay_s
        if target != 1:
            desired = max(1, desired)
        since = now if since is None else since
        if now - since + 1e-6 >= delay:
            decision, since = desired, None
    st.update({"since": since, "dir": direction})
    return decision


def serve_default(view: FleetView, state: dict[str, Any], cfg: ServeDefaultConfig) -> tuple[int, dict[str, Any]]:
    """Serve's default policy: replicas = averaged ongoing requests / target_ongoing_requests, with delays."""
    st = dict(state)
    window = [(t, v) for t, v in st.get("window", []) if t > view.now - cfg.look_back_period_s]
    window.append((view.now, view.total_requests))
    st["window"] = window
    total = sum(v for _, v in window) / len(window)

    def bound(n: int) -> int:
        return max(cfg.min_replicas, min(cfg.max_replicas, n))

    if view.running == 0 and view.total_requests > 0:  # cold-start fast path
        return bound(max(math.ceil(cfg.upscaling_factor), view.target)), st
    desired: float = view.target if view.running == 0 else total / cfg.target_ongoing_requests
    scaled = _scaling_factors(desired, view.running, cfg)
    if view.running == 0 and scaled > 0:
        return bound(scaled), st
    return bound(_delay(max(0, scaled), view.target, cfg, st, view.now)), st


def make_policy(name: str, min_replicas: int, max_replicas: int, overrides: dict[str, Any] | None = None) -> Policy:
    """Build a policy by name; the error names an unknown one and lists the known."""
    kw = {"min_replicas": min_replicas, "max_replicas": max_replicas, **(overrides or {})}
    if name == "tide":
        cfg = PolicyConfig(**kw)

        def tide(view: FleetView, state: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            d, st = tide_step(cfg, state, view.now, view.target, view.running, view.load)
            return d.replicas, st

        return tide
    if name == "serve-default":
        scfg = ServeDefaultConfig(**kw)
        return lambda view, state: serve_default(view, state, scfg)
    if name == "fixed":
        return lambda view, state: (max_replicas, state)
    raise ValueError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}")


POLICIES: tuple[str, ...] = ("tide", "serve-default", "fixed")
