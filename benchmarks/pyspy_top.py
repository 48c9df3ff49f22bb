"""Where a Python process's CPU goes, from a py-spy profile in raw (collapsed-stack) format.

Each line of `py-spy record -f raw` is `frame;frame;...;frame COUNT`, outermost first. Every sample is charged
to the innermost frame's package (the "self" time, grouped as below) and to its function, and every frame's
package also gets the sample "inclusive" once (how much time runs under vLLM's OpenAI layer, say).

    python benchmarks/pyspy_top.py benchmarks/out/pyspy-tide-front-model-replica.txt
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

GROUPS = [  # (group, what the frame's file path holds), first match wins
    ("vLLM OpenAI layer", "vllm/entrypoints/"), ("vLLM AsyncLLM / outputs", "vllm/v1/engine/"),
    ("vLLM other", "vllm/"), ("Tide", "/serving/"), ("Tide", "/autoscale/"), ("uvicorn / h11 / httptools", "uvicorn/"),
    ("uvicorn / h11 / httptools", "h11/"), ("uvicorn / h11 / httptools", "httptools/"),
    ("FastAPI / Starlette", "starlette/"), ("FastAPI / Starlette", "fastapi/"), ("pydantic", "pydantic"),
    ("Ray Serve", "ray/serve/"), ("Ray core", "ray/"), ("ZMQ / msgspec", "zmq/"), ("ZMQ / msgspec", "msgspec"),
    ("tokenizers / transformers", "transformers/"), ("tokenizers / transformers", "tokenizers"),
    ("json", "json/"), ("asyncio", "asyncio/"), ("threading / queue", "threading.py"),
    ("threading / queue", "queue.py"), ("logging", "logging/"), ("grpc", "grpc/"),
]
FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def group_of(frame: str) -> str:
    m = FRAME.match(frame)
    path = m.group("file") if m else frame
    return next((g for g, mark in GROUPS if mark in path), "other Python / native")


def function_of(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    return f"{m.group('fn')} ({'/'.join(Path(m.group('file')).parts[-2:])})"


def read(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarize(path: Path, top: int = 12) -> str:
    stacks = read(path)
    total = sum(n for _, n in stacks) or 1
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    funcs: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        own[group_of(frames[-1])] += n
        funcs[function_of(frames[-1])] += n
        for g in {group_of(f) for f in frames}:
            under[g] += n
    lines = [f"{path.name}: {total} samples (busy threads only)", "",
             "| package | self | inclusive |", "|---|---|---|"]
    groups = sorted(under, key=lambda g: (-own[g], -under[g]))
    lines += [f"| {g} | {own[g] / total:.0%} | {under[g] / total:.0%} |" for g in groups]
    lines += ["", "| function (self time) | share |", "|---|---|"]
    lines += [f"| `{f}` | {n / total:.1%} |" for f, n in funcs.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", type=Path, nargs="+")
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    print("\n\n".join(summarize(p, a.top) for p in a.profiles))


if __name__ == "__main__":
    main()
