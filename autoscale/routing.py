"""Prefix-cache-aware replica choice, as a pure object: a Serve request router and the simulator both call it.

Why: vLLM's prefix cache skips the prefill of prompt blocks a replica has already seen (system prompts, chat
history). Sending a request where its prefix was sent before saves that prefill, but only while that replica
is not much busier than the rest; past a threshold, load wins (power of two choices on queue length).

The router remembers, in a bounded LRU, which replica each prompt-prefix block (a chained hash of the first
k blocks) was last sent to. It never sees the engines' caches: the match is what it *expects* to be cached.
No clock, no Ray; randomness from an injected `random.Random` so tests and the simulator are reproducible.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

ReplicaId = Hashable


class RouterConfig(BaseModel):
    """Settings of the prefix-aware router."""

    model_config = ConfigDict(extra="forbid")

    block_tokens: PositiveInt = Field(16, description="Tokens per prefix block (vLLM's KV block size is 16).")
    block_chars: PositiveInt = Field(
        64, description="Characters per block when the prompt is text rather than token ids (about 16 tokens)."
    )
    max_blocks: PositiveInt = Field(
        100_000, description="Prefix blocks remembered (LRU); bounds the router's memory to about 100 B each."
    )
    imbalance_threshold: NonNegativeInt = Field(
        8, description="Prefer the replica holding the longest prefix unless its queue exceeds the least "
        "loaded candidate's by more than this many requests.",
    )
    min_match_blocks: PositiveInt = Field(1, description="Shorter expected matches than this are ignored.")


@dataclass(frozen=True)
class Route:
    """The chosen replica, how many prefix blocks it is expected to hold, and why (for logs and tests)."""

    replica: ReplicaId
    matched_blocks: int
    reason: str


def prefix_blocks(prompt: str | Sequence[int], cfg: RouterConfig) -> list[int]:
    """Chained hashes of the prompt's complete blocks: block k's hash covers blocks 0..k (like vLLM's)."""
    if isinstance(prompt, str):
        size, items = cfg.block_chars, prompt
    else:
        size, items = cfg.block_tokens, list(prompt)
    out, h = [], 0
    for i in range(0, len(items) - size + 1, size):
        chunk = items[i:i + size]
        h = hash((h, chunk if isinstance(chunk, str) else tuple(chunk)))
        out.append(h)
    return out


class PrefixRouter:
    """Remembers where prefixes went; picks a replica for each new prompt."""

    def __init__(self, cfg: RouterConfig | None = None, rng: random.Random | None = None):
        self.cfg = cfg or RouterConfig()
        self.rng = rng or random.Random(0)
        self._owner: OrderedDict[int, ReplicaId] = OrderedDict()  # block hash -> replica, oldest first

    def __len__(self) -> int:
        return len(self._owner)

    def _match(self, blocks: list[int], queues: Mapping[ReplicaId, float]) -> tuple[ReplicaId | None, int]:
        """Replica (among candidates) expected to hold the longest prefix, and its length in blocks."""
        best, n = None, 0
        for k, h in enumerate(blocks):
            owner = self._owner.get(h)
            if owner is None or owner not in queues:
                break  # chained hashes: a miss at block k means no longer match anywhere
            best, n = owner, k + 1
        return best, n

    def _least_loaded(self, queues: Mapping[ReplicaId, float]) -> ReplicaId:
        """Power of two choices: two random candidates, the shorter queue (ties: the first drawn)."""
        ids = list(queues)
        if len(ids) <= 2:
            return min(ids, key=lambda r: queues[r])
        a, b = self.rng.sample(ids, 2)
        return a if queues[a] <= queues[b] else b

    def choose(self, prompt: str | Sequence[int], queues: Mapping[ReplicaId, float]) -> Route:
        """Pick a replica for `prompt` among `queues` (candidate id -> requests queued or running there)."""
        if not queues:
            raise ValueError("no candidate replicas to route to")
        blocks = prefix_blocks(prompt, self.cfg)
        owner, n = self._match(blocks, queues)
        fallback = self._least_loaded(queues)
        lightest = min(queues.values())
        if owner is not None and n >= self.cfg.min_match_blocks:
            if queues[owner] - lightest <= self.cfg.imbalance_threshold:
                route = Route(owner, n, f"prefix hit: {n} block(s)")
            else:
                route = Route(fallback, 0, f"prefix owner overloaded ({queues[owner]:.0f} vs {lightest:.0f} queued)")
        else:
            route = Route(fallback, 0, "no cached prefix: least loaded of two")
        self._remember(blocks, route.replica)
        return route

    def record(self, prompt: str | Sequence[int], replica: ReplicaId) -> None:
        """Note where `prompt` actually went. `choose` assumes its pick; Serve may send a request elsewhere
        (the pick was full), and then this moves the prefix to the replica that really caches it."""
        self._remember(prefix_blocks(prompt, self.cfg), replica)

    def _remember(self, blocks: list[int], replica: ReplicaId) -> None:
        for h in blocks:
            self._owner[h] = replica
            self._owner.move_to_end(h)
        while len(self._owner) > self.cfg.max_blocks:
            self._owner.popitem(last=False)

    def forget_replica(self, replica: ReplicaId) -> int:
        """Drop everything remembered for a replica that went away (scale-down, failure). Returns blocks dropped."""
        gone = [h for h, r in self._owner.items() if r == replica]
        for h in gone:
            del self._owner[h]
        return len(gone)
