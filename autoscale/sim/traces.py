"""Request arrivals, binned into simulator ticks: built-in shapes (Poisson, diurnal, flash crowd) or a CSV replay.

A trace is three arrays over ticks: arrivals, and the mean prompt and output length of those arrivals. The
simulator works on cohorts per tick (not one object per request), which is what lets a simulated day with a
million users run in seconds.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt


@dataclass
class Trace:
    name: str
    dt: float  # tick length, seconds
    arrivals: np.ndarray  # requests arriving in each tick
    prompt_tokens: np.ndarray  # mean prompt length of that tick's arrivals
    output_tokens: np.ndarray  # mean output length
    clients: np.ndarray | None = None  # closed loop: clients per tick, each resubmits when answered (no think time)

    @property
    def duration_s(self) -> float:
        return len(self.arrivals) * self.dt

    @property
    def total(self) -> int:
        return int(self.arrivals.sum())


def closed_loop_trace(name: str, phases: list[tuple[float, int]], dt: float, prompt_tokens: float,
                      output_tokens: float) -> Trace:
    """Phases of (seconds, concurrent clients), like benchmarks/bench_autoscale.py's load generator: arrivals
    are not given but follow from completions (the simulator tops the system up to `clients`)."""
    clients = np.concatenate([np.full(max(int(round(d / dt)), 0), float(c)) for d, c in phases])
    n = len(clients)
    return Trace(name, dt, np.zeros(n), np.full(n, prompt_tokens), np.full(n, output_tokens), clients)


class TraceConfig(BaseModel):
    """Shape of a built-in trace. Rates are requests per second for the whole fleet."""

    model_config = ConfigDict(extra="forbid")

    duration_s: PositiveFloat = Field(3600.0, description="Length of the trace.")
    users: PositiveInt = Field(10_000, description="Active users at the peak of the day.")
    requests_per_user_per_h: PositiveFloat = Field(30.0, description="Requests one active user sends per hour.")
    prompt_tokens: PositiveFloat = Field(512, description="Mean prompt length.")
    output_tokens: PositiveFloat = Field(256, description="Mean output length.")
    trough_fraction: float = Field(0.2, ge=0, le=1, description="Diurnal: night load as a share of the peak.")
    period_s: PositiveFloat = Field(86_400.0, description="Diurnal: length of one day.")
    flash_at_s: NonNegativeFloat = Field(600.0, description="Flash crowd: when the crowd arrives.")
    flash_multiplier: PositiveFloat = Field(5.0, description="Flash crowd: load during the crowd, as x base.")
    flash_duration_s: PositiveFloat = Field(600.0, description="Flash crowd: how long it stays.")
    seed: int = Field(0, description="Random seed of the arrival process.")

    @property
    def peak_rate(self) -> float:
        return self.users * self.requests_per_user_per_h / 3600.0


def rate_curve(kind: str, cfg: TraceConfig, t: np.ndarray) -> np.ndarray:
    """Arrival rate (requests/s) at times t for a built-in trace kind."""
    peak = cfg.peak_rate
    if kind == "poisson":
        return np.full_like(t, peak)
    if kind == "diurnal":  # trough at t=0 (night), peak at half a period
        lo = cfg.trough_fraction
        return peak * (lo + (1 - lo) * 0.5 * (1 - np.cos(2 * math.pi * t / cfg.period_s)))
    if kind == "flash-crowd":
        base = peak / cfg.flash_multiplier
        crowd = (t >= cfg.flash_at_s) & (t < cfg.flash_at_s + cfg.flash_duration_s)
        return np.where(crowd, peak, base)
    raise ValueError(f"unknown trace {kind!r}: use one of {', '.join(BUILTIN)} or a CSV path")


BUILTIN = ("poisson", "diurnal", "flash-crowd")


def builtin_trace(kind: str, cfg: TraceConfig, dt: float) -> Trace:
    """Poisson arrivals at the kind's rate curve, one draw per tick."""
    n = max(int(math.ceil(cfg.duration_s / dt)), 1)
    t = (np.arange(n) + 0.5) * dt
    lam = rate_curve(kind, cfg, t) * dt
    arrivals = np.random.default_rng(cfg.seed).poisson(lam).astype(np.float64)
    return Trace(kind, dt, arrivals, np.full(n, cfg.prompt_tokens), np.full(n, cfg.output_tokens))


class TraceError(ValueError):
    """A bad trace file; the message names the file, line and column."""


COLUMNS = ("timestamp", "prompt_tokens", "output_tokens")


def read_csv_trace(path: Path, dt: float) -> Trace:
    """CSV with a header `timestamp,prompt_tokens,output_tokens` (seconds from any origin; lengths in tokens)."""
    try:
        f = path.open(newline="")
    except OSError as e:
        raise TraceError(f"{path}: cannot read trace ({e.strerror})") from None
    rows: list[tuple[float, float, float]] = []
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != list(COLUMNS):
            raise TraceError(f"{path}: line 1: header must be {','.join(COLUMNS)}, got {','.join(header or [])!r}")
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 3:
                raise TraceError(f"{path}: line {line}: expected 3 columns, got {len(row)}")
            vals = []
            for col, cell in zip(COLUMNS, row):
                try:
                    v = float(cell)
                except ValueError:
                    raise TraceError(f"{path}: line {line}, column {col}: not a number: {cell!r}") from None
                if not math.isfinite(v) or v < 0 or (col == "output_tokens" and v < 1):
                    raise TraceError(f"{path}: line {line}, column {col}: must be a finite number >= "
                                     f"{1 if col == 'output_tokens' else 0}, got {cell!r}")
                vals.append(v)
            rows.append((vals[0], vals[1], vals[2]))
    if not rows:
        raise TraceError(f"{path}: no requests in the trace")
    a = np.array(rows)
    t = a[:, 0] - a[:, 0].min()
    n = int(t.max() // dt) + 1
    idx = (t // dt).astype(np.int64)
    arrivals = np.bincount(idx, minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        prompt = np.bincount(idx, a[:, 1], n) / arrivals
        output = np.bincount(idx, a[:, 2], n) / arrivals
    prompt = np.where(arrivals > 0, prompt, a[:, 1].mean())
    output = np.where(arrivals > 0, output, a[:, 2].mean())
    return Trace(path.stem, dt, arrivals, prompt, output)


def load_trace(spec: str, cfg: TraceConfig, dt: float) -> Trace:
    """A built-in name or a CSV path."""
    if spec in BUILTIN:
        return builtin_trace(spec, cfg, dt)
    p = Path(spec)
    if p.suffix.lower() == ".csv" or p.exists():
        return read_csv_trace(p, dt)
    raise TraceError(f"unknown trace {spec!r}: use one of {', '.join(BUILTIN)} or a CSV file path")
