"""Prefix-cache hits in the simulator, through the production router (`autoscale.routing.PrefixRouter`).

Why sampled: the fleet model moves cohorts, so it cannot route every request. Each tick a sample of the
arriving requests (each with a tenant's shared prompt prefix, tenants Zipf-distributed) is routed by the
real router over the serving replicas and their queue lengths; each replica's prefix cache is modelled as an
LRU of `cache_prefixes` prefixes. The share of sampled requests that find their prefix cached scales the
prefill work of the whole tick's cohort. The router's choice is not used to split the cohort (admissions
still follow free slots); only its effect on prefill is. Meant for fleets up to a few thousand replicas.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from ..routing import PrefixRouter, RouterConfig


class PrefixWorkload(BaseModel):
    """Shared prompt prefixes (system prompts, agent instructions) and how requests are routed."""

    model_config = ConfigDict(extra="forbid")

    router: Literal["prefix", "least-loaded"] = Field(
        "prefix", description="`prefix`: autoscale.routing.PrefixRouter; `least-loaded`: its power-of-two fallback "
        "alone (what Serve does without a prefix-aware router).",
    )
    tenants: PositiveInt = Field(200, description="Distinct shared prefixes.")
    zipf_s: float = Field(1.1, gt=0, description="Zipf exponent of tenant popularity.")
    prefix_tokens: PositiveInt = Field(384, description="Shared prefix length (part of each prompt).")
    cache_prefixes: PositiveInt = Field(16, description="Prefixes one replica's KV cache keeps (LRU).")
    samples_per_tick: PositiveInt = Field(32, description="Requests routed per tick to estimate the hit rate.")
    imbalance_threshold: int = Field(8, ge=0, description="Router: queue excess that overrides a prefix hit.")
    seed: int = Field(0, description="Seed of tenant draws and of the router's random choices.")


class PrefixModel:
    """Routes a sample each tick; returns the share of prefix tokens served from cache."""

    def __init__(self, wl: PrefixWorkload):
        self.wl = wl
        rcfg = RouterConfig(block_tokens=16, imbalance_threshold=wl.imbalance_threshold,
                            min_match_blocks=1 if wl.router == "prefix" else 10**9)
        self.router = PrefixRouter(rcfg, random.Random(wl.seed))
        self.rng = np.random.default_rng(wl.seed)
        w = 1.0 / np.arange(1, wl.tenants + 1) ** wl.zipf_s
        self.p = w / w.sum()
        self.prompts = [list(range(t * 100_000, t * 100_000 + wl.prefix_tokens)) for t in range(wl.tenants)]
        self.caches: dict[int, OrderedDict[int, None]] = {}
        self.hits = self.routed = 0

    def step(self, arrivals: float, up: np.ndarray, queues: np.ndarray) -> float:
        """Hit share for this tick (0 when nothing arrives or nothing serves)."""
        ids = np.flatnonzero(up)
        for gone in [r for r in self.caches if not up[r]] if len(self.caches) else []:
            del self.caches[gone]  # stopped or failed: its cache is gone, and the router forgets it
            self.router.forget_replica(gone)
        m = min(int(round(arrivals)), self.wl.samples_per_tick)
        if m <= 0 or not len(ids):
            return 0.0
        cand = {int(i): float(queues[i]) for i in ids}
        hits = 0
        for tenant in self.rng.choice(self.wl.tenants, m, p=self.p):
            r = self.router.choose(self.prompts[tenant], cand).replica
            cache = self.caches.setdefault(r, OrderedDict())
            if tenant in cache:
                hits += 1
                cache.move_to_end(tenant)
            else:
                cache[tenant] = None
                if len(cache) > self.wl.cache_prefixes:
                    cache.popitem(last=False)
            cand[r] += 1
        self.hits += hits
        self.routed += m
        return hits / m

    @property
    def hit_rate(self) -> float:
        return self.hits / self.routed if self.routed else 0.0
