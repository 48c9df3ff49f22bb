"""Several streamed text completions at once with the async HTTP client (they share the engine's batch).

Runs as-is against `make serve`:  .venv/bin/python examples/complete_async_http.py [--url URL] [--n 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from serving.sdk import AsyncTideClient, TideError


async def one(tide: AsyncTideClient, model: str, i: int, max_tokens: int) -> tuple[int, int, float]:
    t0 = time.perf_counter()
    first = None
    pieces = 0
    async for chunk in tide.complete_stream(model, f"Story {i}:", max_tokens=max_tokens, ignore_eos=True):
        first = first or time.perf_counter() - t0
        pieces += sum(1 for c in chunk.choices if c.text)
    return i, pieces, first or 0.0


async def run(args: argparse.Namespace) -> int:
    async with AsyncTideClient(args.url) as tide:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(tide, args.model, i, args.max_tokens) for i in range(args.n)))
        wall = time.perf_counter() - t0
    for i, pieces, ttft in results:
        print(f"stream {i}: {pieces} chunks, first after {1000 * ttft:.0f} ms")
    print(f"{args.n} streams x {args.max_tokens} tokens in {wall:.2f} s")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("TIDE_URL", "http://127.0.0.1:8000"), help="Tide endpoint")
    p.add_argument("--model", default="tiny")
    p.add_argument("--n", type=int, default=4, help="concurrent streams")
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args()
    try:
        return asyncio.run(run(args))
    except TideError as e:  # every SDK error, including ConnectionFailed
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
