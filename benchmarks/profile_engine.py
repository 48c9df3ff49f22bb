"""Measure the real vLLM engine (tiny model, CPU) and write the simulator's replica profile.

For each batch size B: B concurrent streaming requests (same prompt, fixed output length, ignore_eos) on one
AsyncLLM; records TTFT (median over the batch) and the decode step time (TPOT: (e2e - ttft) / (tokens - 1)).
One long-prompt request with max_tokens=1 gives the prefill rate. The KV-cache size comes from the engine.
Engine settings match benchmarks/bench_autoscale.py (float32, eager, max_num_seqs 16), pinned to the last core.

    flock /tmp/tide-ray.lock .venv/bin/python benchmarks/profile_engine.py      # ~1-2 min on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CORES = sorted(os.sched_getaffinity(0))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(CORES[-1]))
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "vllm"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


async def one(engine, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(ttft, e2e, output tokens) of one streamed request."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0,
                        output_kind=RequestOutputKind.DELTA)
    t0 = time.perf_counter()
    ttft, n = None, 0
    async for out in engine.generate(prompt, sp, request_id=uuid.uuid4().hex):
        got = len(out.outputs[0].token_ids)
        if got and ttft is None:
            ttft = time.perf_counter() - t0
        n += got
    return ttft or 0.0, time.perf_counter() - t0, n


async def measure(a: argparse.Namespace) -> dict:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    t0 = time.perf_counter()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=str(ROOT / ".models" / "tiny-llama"), dtype="float32", enforce_eager=True, max_model_len=1024,
        max_num_seqs=a.max_num_seqs))
    start_s = time.perf_counter() - t0
    print(f"engine up in {start_s:.1f}s", flush=True)
    try:
        cache = engine.vllm_config.cache_config
        sched = engine.vllm_config.scheduler_config
        kv_tokens = int((cache.num_gpu_blocks or 0) * cache.block_size)
        prompt_tokens = len(engine.tokenizer.encode(PROMPT)) if getattr(engine, "tokenizer", None) else 16
        await one(engine, PROMPT, 8)  # warm-up
        rows = []
        for b in a.batches:
            ttfts, tpots, wall = [], [], []
            for _ in range(a.repeats):
                t = time.perf_counter()
                res = await asyncio.gather(*[one(engine, PROMPT, a.output_tokens) for _ in range(b)])
                wall.append(time.perf_counter() - t)
                ttfts += [r[0] for r in res]
                tpots += [(r[1] - r[0]) / max(r[2] - 1, 1) for r in res]
            tok_s = b * a.output_tokens / statistics.median(wall)
            rows.append({"batch": b, "ttft_s": statistics.median(ttfts), "tpot_s": statistics.median(tpots),
                         "tokens_per_s": tok_s})
            print(f"  batch {b:3d}: TTFT {rows[-1]['ttft_s'] * 1000:7.1f} ms  TPOT {rows[-1]['tpot_s'] * 1000:6.2f} ms"
                  f"  {tok_s:8.0f} tok/s", flush=True)
        long_prompt = PROMPT * max(1, a.prefill_tokens // max(prompt_tokens, 1))
        n_long = len(engine.tokenizer.encode(long_prompt)) if getattr(engine, "tokenizer", None) else a.prefill_tokens
        pre = [(await one(engine, long_prompt, 1))[0] for _ in range(3)]
        prefill_tps = n_long / statistics.median(pre)
        print(f"  prefill: {n_long} tokens in {statistics.median(pre) * 1000:.1f} ms -> {prefill_tps:.0f} tok/s")
    finally:
        engine.shutdown()
    return {
        "name": "cpu-tiny",
        "description": "Tide's tiny Llama (1.4M params, float32, eager) on one core of this 2-core CPU machine, "
                       "measured by benchmarks/profile_engine.py on the real vLLM AsyncLLM.",
        "assumptions": [f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, engine pinned to core "
                        f"{os.environ['VLLM_CPU_OMP_THREADS_BIND']}, {a.repeats} repeats per batch size",
                        f"prompt {prompt_tokens} tokens, {a.output_tokens} output tokens per request",
                        "cold_start_s is the replica start measured in benchmarks/out/autoscale.json "
                        "(Serve actor + engine load + the other replica sharing 2 cores), not this process's start"],
        "batch": [r["batch"] for r in rows],
        "tpot_s": [r["tpot_s"] for r in rows],
        "ttft_s": [r["ttft_s"] for r in rows],
        "tokens_per_s": [r["tokens_per_s"] for r in rows],
        "profile_prompt_tokens": prompt_tokens,
        "prefill_tokens_per_s": prefill_tps,
        "max_num_seqs": a.max_num_seqs,
        "max_num_batched_tokens": int(sched.max_num_batched_tokens),
        "kv_cache_tokens": kv_tokens,
        "engine_start_s": start_s,
        "cold_start_s": a.cold_start_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--max-num-seqs", type=int, default=16, help="as in benchmarks/bench_autoscale.py")
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cold-start-s", type=float, default=52.0,
                   help="replica start measured by the autoscaling benchmark (target 2 -> 2nd replica serving)")
    p.add_argument("--out", type=Path, default=ROOT / "autoscale" / "profiles" / "cpu-tiny.json")
    a = p.parse_args()
    prof = asyncio.run(measure(a))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(prof, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
