"""Prove vLLM multi-LoRA works on this CPU build with Tide's tiny model and two self-built adapters.

Starts AsyncLLM (float32, eager, max_model_len 1024) twice: plain, then with enable_lora, and generates greedy
text for the same prompts with no adapter, adapter a and adapter b (also mixed in one batch). Prints start
times and the texts; exits 1 unless (with Tide's CPU fix) base != a != b != base, the base text is the same with
LoRA enabled, and a mixed batch gives each request the text it gets alone. Also runs bare vLLM (no fix) to show
the bug the fix is for (pass --fix-only to skip that run).

    flock /tmp/tide-ray.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/lora_check.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / ".models" / "tiny-llama"
PROMPTS = ["def main(", "import os\n", "Hi"]


async def run_engine(enable_lora: bool, adapters: dict[str, Path], fix: bool = True
                     ) -> tuple[float, dict[str, list[str]]]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    from serving.lora import LoRAOptions, engine_lora_args, lora_request

    opts = LoRAOptions(adapters={k: str(v) for k, v in adapters.items()}, max_lora_rank=8) if enable_lora else None
    extra = engine_lora_args(opts, cpu=fix) if opts else {}
    started = time.monotonic()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=str(BASE), served_model_name="tiny", dtype="float32", enforce_eager=True, max_model_len=1024,
        **extra))
    start_s = time.monotonic() - started
    try:
        tok = engine.get_tokenizer()
        params = SamplingParams(temperature=0.0, max_tokens=24, output_kind=RequestOutputKind.FINAL_ONLY)

        async def one(prompt: str, adapter: str | None, rid: str) -> str:
            req = lora_request(opts, adapter) if adapter else None
            ids = tok.encode(prompt)
            text = ""
            async for out in engine.generate({"prompt_token_ids": ids}, params, rid, lora_request=req):
                text = out.outputs[0].text
            return text

        if opts:  # load (and validate) every adapter up front, as the replica should at start
            t = time.monotonic()
            for name in sorted(opts.adapters):
                await engine.add_lora(lora_request(opts, name))
            print(f"  add_lora for {len(opts.adapters)} adapters: {time.monotonic() - t:.2f}s; "
                  f"loaded ids {sorted(await engine.list_loras())}")
        names: list[str | None] = [None] + (sorted(adapters) if enable_lora else [])
        results: dict[str, list[str]] = {}
        for name in names:  # one adapter at a time
            results[str(name)] = [await one(p, name, f"{name}-{i}") for i, p in enumerate(PROMPTS)]
        if enable_lora:  # all at once: base and both adapters in the same batches
            jobs = [one(p, n, f"mix-{n}-{i}") for n in names for i, p in enumerate(PROMPTS)]
            mixed = await asyncio.gather(*jobs)
            k = 0
            for n in names:
                results[f"{n}+mixed"] = mixed[k:k + len(PROMPTS)]
                k += len(PROMPTS)
        return start_s, results
    finally:
        engine.shutdown()


def main() -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    sys.path.insert(0, str(ROOT))
    from serving.tools.tiny_lora import build_tiny_lora

    tmp = Path(tempfile.mkdtemp(prefix="tide-lora-"))
    t = time.monotonic()
    adapters = {"a": build_tiny_lora(BASE, tmp / "a", seed=1), "b": build_tiny_lora(BASE, tmp / "b", seed=2)}
    print(f"built 2 adapters in {time.monotonic() - t:.2f}s under {tmp}")

    plain_s, plain = asyncio.run(run_engine(False, {}))
    print(f"engine start without LoRA: {plain_s:.1f}s")
    runs = {"with Tide's CPU fix": True, "without the fix (bare vLLM)": False}
    if "--fix-only" in sys.argv:
        runs.pop("without the fix (bare vLLM)")
    ok = True
    for label, fix in runs.items():
        lora_s, lora = asyncio.run(run_engine(True, adapters, fix=fix))
        print(f"===== enable_lora, {label}: engine start {lora_s:.1f}s")
        for k, texts in [("plain-engine base", plain["None"])] + list(lora.items()):
            print(f"--- {k}")
            for p, txt in zip(PROMPTS, texts):
                print(f"  {p!r} -> {txt!r}")
        checks = {
            "base same with and without enable_lora": plain["None"] == lora["None"],
            "adapter a differs from base": lora["a"] != lora["None"],
            "adapter b differs from base": lora["b"] != lora["None"],
            "adapter a differs from b": lora["a"] != lora["b"],
            "mixed batch == one at a time": all(lora[f"{n}+mixed"] == lora[n] for n in ("None", "a", "b")),
        }
        for name, passed in checks.items():
            print(f"{'PASS' if passed else 'FAIL'}: {name}")
            if fix:
                ok &= passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
