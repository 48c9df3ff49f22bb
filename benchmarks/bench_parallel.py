"""Tensor/pipeline parallel on the tiny model, CPU numbers: engine start time and tokens/s, TP 1 vs 2 vs PP 2.

    python benchmarks/bench_parallel.py --rounds 3

Each run is a fresh process with vLLM's engine (`vllm.LLM`, the `mp` executor Tide uses on CPU, Tide's CPU
worker), one core per worker (VLLM_CPU_OMP_THREADS_BIND), configurations alternating round by round. Prints a
Markdown table with medians and ratios against TP 1 (also written to benchmarks/out/parallel.md). On a 2-core
machine a second worker gets the second core, but it also shares it with everything else: these say what the
parallel path costs here, not what TP buys on GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
CONFIGS = {"TP 1": (1, 1, "1"), "TP 2": (2, 1, "1|0"), "PP 2": (1, 2, "1|0")}

RUN = r'''
import json, os, sys, time
def main():
    tp, pp, requests, tokens = (int(x) for x in sys.argv[1:5])
    from vllm import LLM, SamplingParams
    t0 = time.monotonic()
    kw = dict(model=sys.argv[5], dtype="float32", enforce_eager=True, max_model_len=1024, max_num_seqs=64,
              tensor_parallel_size=tp, pipeline_parallel_size=pp)
    if tp * pp > 1:
        kw.update(distributed_executor_backend="mp", worker_cls="serving.patches.cpu_worker.TideCPUWorker")
    llm = LLM(**kw)
    start_s = time.monotonic() - t0
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    llm.generate(["warm up"], params)
    prompts = [f"Request {i}: tell me about the sea" for i in range(requests)]
    t1 = time.monotonic()
    out = llm.generate(prompts, params)
    dt = time.monotonic() - t1
    n = sum(len(o.outputs[0].token_ids) for o in out)
    print("RESULT " + json.dumps({"start_s": start_s, "tok_s": n / dt, "tokens": n}), flush=True)
if __name__ == "__main__":
    main()
'''


def run_once(tp: int, pp: int, bind: str, requests: int, tokens: int) -> dict:
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": bind, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    model = str(ROOT / ".models" / "tiny-llama")
    p = subprocess.run([sys.executable, "-c", RUN, str(tp), str(pp), str(requests), str(tokens), model],
                       env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"TP {tp} PP {pp} failed:\n{p.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    runs: dict[str, list[dict]] = {k: [] for k in CONFIGS}
    for r in range(a.rounds):
        order = list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]
        for name in order:
            tp, pp, bind = CONFIGS[name]
            res = run_once(tp, pp, bind, a.requests, a.tokens)
            runs[name].append(res)
            print(f"round {r + 1} {name}: start {res['start_s']:.1f}s, {res['tok_s']:.0f} tok/s", flush=True)
    base_tok = statistics.median(x["tok_s"] for x in runs["TP 1"])
    base_start = statistics.median(x["start_s"] for x in runs["TP 1"])
    lines = ["| config | engine start s (median) | per round | tok/s (median) | per round | tok/s vs TP 1 "
             "| start vs TP 1 |", "|---|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        st, tk = statistics.median(x["start_s"] for x in rs), statistics.median(x["tok_s"] for x in rs)
        starts = "/".join(f"{x['start_s']:.0f}" for x in rs)
        toks = "/".join(f"{x['tok_s']:.0f}" for x in rs)
        lines.append(f"| {name} | {st:.1f} | {starts} | {tk:,.0f} | {toks} | {tk / base_tok:.2f}x "
                     f"| {st / base_start:.2f}x |")
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "parallel.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
