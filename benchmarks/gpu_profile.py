"""Measure a Llama-3-8B-shaped engine with plain torch on one GPU and write a simulator replica profile.

No vLLM, no real weights: random bf16 weights of Llama-3-8B's shapes (32 layers, hidden 4096, 32 query / 8 KV
heads of 128, MLP 14336, vocab 128256). Measures:
  * HBM bandwidth: a 4 GiB device-to-device copy (bytes read + written per second);
  * decode: one step (embed, 32 x [RMSNorm, QKV, RoPE, KV write, SDPA over a contiguous per-layer KV cache of
    ~1000 tokens per sequence, O, RMSNorm, SwiGLU MLP], norm, LM head, argmax) at each batch size, eager and
    replayed from a CUDA graph (the profile uses the graph numbers, as vLLM decodes from CUDA graphs);
  * prefill: B x S prompt tokens in one forward pass (causal SDPA, KV written, LM head on the last token only).
Writes <gpu>-llama3-8b-measured.json (autoscale/sim/profile.py's format) into --out and prints a table.

    python benchmarks/gpu_profile.py --out DIR              # GPU, ~1 min after start
    python benchmarks/gpu_profile.py --tiny --out /tmp/x    # CPU smoke test of the same code
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {
    "llama3-8b": dict(layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, inter=14336, vocab=128256),
    "tiny": dict(layers=2, hidden=256, heads=4, kv_heads=2, head_dim=64, inter=512, vocab=1000),
}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench(fn, dev: torch.device, reps: int, warmup: int = 2) -> float:
    """Median seconds of fn(), idle device before each call (so launch gaps count, as in serving)."""
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def rope_tables(pos: torch.Tensor, d: int, dev, dt) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    f = pos.to(dev, torch.float32)[:, None] * inv[None]
    f = torch.cat([f, f], -1)
    return f.cos().to(dt), f.sin().to(dt)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin


class Llama:
    """Random-weight Llama of the given shape with a contiguous KV cache [batch, kv_heads, positions, head_dim]."""

    def __init__(self, c: dict, dev: torch.device, dt: torch.dtype, max_batch: int, positions: int):
        self.c, self.dev, self.dt = c, dev, dt
        h, nq, nkv, d = c["hidden"], c["heads"], c["kv_heads"], c["head_dim"]

        def w(*shape):
            return torch.randn(*shape, device=dev, dtype=dt) * 0.02

        self.embed = w(c["vocab"], h)
        self.lm_head = w(c["vocab"], h)
        self.norm = torch.ones(h, device=dev, dtype=dt)
        self.layers = [dict(ln1=torch.ones(h, device=dev, dtype=dt), ln2=torch.ones(h, device=dev, dtype=dt),
                            qkv=w((nq + 2 * nkv) * d, h), o=w(h, nq * d), gate_up=w(2 * c["inter"], h),
                            down=w(h, c["inter"])) for _ in range(c["layers"])]
        self.kv = [(torch.zeros(max_batch, nkv, positions, d, device=dev, dtype=dt),
                    torch.zeros(max_batch, nkv, positions, d, device=dev, dtype=dt)) for _ in range(c["layers"])]
        self.layer_params = sum(t.numel() for L in self.layers for t in L.values())
        self.weight_bytes = sum(t.numel() * t.element_size() for L in self.layers for t in L.values()) + \
            2 * self.embed.numel() * self.embed.element_size() + self.norm.numel() * self.norm.element_size()

    def _mlp(self, L: dict, x: torch.Tensor) -> torch.Tensor:
        h = F.rms_norm(x, (x.shape[-1],), L["ln2"], 1e-5)
        g, u = F.linear(h, L["gate_up"]).chunk(2, -1)
        return x + F.linear(F.silu(g) * u, L["down"])

    def decode(self, tokens: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """One decode step for len(tokens) sequences, each with `pos` tokens already cached; next tokens."""
        c, b = self.c, tokens.shape[0]
        nq, nkv, d = c["heads"], c["kv_heads"], c["head_dim"]
        x = self.embed[tokens]
        for L, (kc, vc) in zip(self.layers, self.kv):
            h = F.rms_norm(x, (x.shape[-1],), L["ln1"], 1e-5)
            q, k, v = F.linear(h, L["qkv"]).split([nq * d, nkv * d, nkv * d], -1)
            q = rope(q.view(b, nq, d), cos, sin)
            kc[:b, :, pos] = rope(k.view(b, nkv, d), cos, sin)
            vc[:b, :, pos] = v.view(b, nkv, d)
            # GQA decode: the nq/nkv query heads of one KV head are that head's "query positions" (no mask)
            o = F.scaled_dot_product_attention(q.view(b, nkv, nq // nkv, d), kc[:b, :, :pos + 1], vc[:b, :, :pos + 1])
            x = self._mlp(L, x + F.linear(o.reshape(b, nq * d), L["o"]))
        return F.linear(F.rms_norm(x, (x.shape[-1],), self.norm, 1e-5), self.lm_head).argmax(-1)

    def prefill(self, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Forward B x S prompt tokens (causal), write their KV, return each sequence's next token."""
        c, (bsz, s) = self.c, tokens.shape
        nq, nkv, d = c["heads"], c["kv_heads"], c["head_dim"]
        x = self.embed[tokens.reshape(-1)]
        for L, (kc, vc) in zip(self.layers, self.kv):
            h = F.rms_norm(x, (x.shape[-1],), L["ln1"], 1e-5)
            q, k, v = F.linear(h, L["qkv"]).split([nq * d, nkv * d, nkv * d], -1)
            q = rope(q.view(bsz, s, nq, d), cos[:, None], sin[:, None]).transpose(1, 2)
            k = rope(k.view(bsz, s, nkv, d), cos[:, None], sin[:, None]).transpose(1, 2)
            v = v.view(bsz, s, nkv, d).transpose(1, 2)
            n = bsz * nkv * s * d  # this prompt batch's KV, laid out in the front of the cache buffers
            kc.view(-1)[:n].view(bsz, nkv, s, d).copy_(k)
            vc.view(-1)[:n].view(bsz, nkv, s, d).copy_(v)
            g = nq // nkv
            o = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=True)
            x = self._mlp(L, x + F.linear(o.transpose(1, 2).reshape(bsz * s, nq * d), L["o"]))
        last = x.view(bsz, s, -1)[:, -1]
        return F.linear(F.rms_norm(last, (last.shape[-1],), self.norm, 1e-5), self.lm_head).argmax(-1)


def hbm_copy_gbps(dev: torch.device, nbytes: int, reps: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), dev, reps)
    del src, dst
    return 2 * nbytes / t / 1e9


def gemm_tflops(dev: torch.device, dt: torch.dtype, n: int, reps: int) -> float:
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    t = bench(lambda: a @ b, dev, reps)
    return 2 * n ** 3 / t / 1e12


def measure(tiny: bool, batches: list[int], context: int, prefill: list[str], reps: int, copy_gib: float,
            graphs: bool) -> dict:
    """All device work; returns the raw numbers (JSON-able) that `build_profile` turns into a profile."""
    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = torch.bfloat16
    c = SHAPES["tiny" if tiny else "llama3-8b"]
    graphs = graphs and dev.type == "cuda"
    prefill_shapes = [tuple(int(v) for v in s.split("x")) for s in prefill]
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        gpu, total_mem = props.name, props.total_memory
        free0, _ = torch.cuda.mem_get_info(dev)
        context_bytes = total_mem - free0  # CUDA context and anything else not ours
    else:
        gpu, total_mem, context_bytes = "cpu", 0, 0
    print(f"device {gpu} ({total_mem / 2**30:.1f} GiB), torch {torch.__version__}, cuda graphs: {graphs}", flush=True)

    t0 = time.perf_counter()
    copy = hbm_copy_gbps(dev, int(copy_gib * 2**30), max(reps // 2, 3))
    print(f"HBM copy {copy_gib:g} GiB: {copy:.0f} GB/s (read + write)", flush=True)
    n = 256 if tiny else 8192
    tflops = gemm_tflops(dev, dt, n, 10)
    print(f"bf16 GEMM {n}^3: {tflops:.0f} TFLOP/s", flush=True)

    max_b = max(batches)
    positions = max(context + 8, max(b * s for b, s in prefill_shapes) // max_b + 1)
    m = Llama(c, dev, dt, max_b, positions)
    kv_bytes_per_token = c["layers"] * c["kv_heads"] * c["head_dim"] * 2 * torch.finfo(dt).bits // 8
    sync(dev)
    print(f"model: {m.weight_bytes / 1e9:.2f} GB weights, KV cache {max_b} x {positions} positions "
          f"({kv_bytes_per_token // 1024} KiB/token), built in {time.perf_counter() - t0:.1f}s", flush=True)

    # decode at `context` cached tokens per sequence
    cos, sin = rope_tables(torch.tensor([context]), c["head_dim"], dev, dt)
    rows = []
    print(f"{'batch':>5} {'eager ms':>9} {'graph ms':>9} {'tok/s':>9}", flush=True)
    for b in batches:
        tok = torch.randint(0, c["vocab"], (b,), device=dev)
        with torch.inference_mode():
            eager = bench(lambda: m.decode(tok, context, cos, sin), dev, reps)
            graph_t = None
            if graphs:
                try:
                    s = torch.cuda.Stream(dev)
                    s.wait_stream(torch.cuda.current_stream(dev))
                    with torch.cuda.stream(s):
                        for _ in range(3):
                            m.decode(tok, context, cos, sin)
                    torch.cuda.current_stream(dev).wait_stream(s)
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        m.decode(tok, context, cos, sin)
                    graph_t = bench(g.replay, dev, reps, warmup=3)
                    del g
                except Exception as e:  # keep the eager number rather than lose the run
                    print(f"batch {b}: CUDA graph failed, eager only: {e!r}", flush=True)
                    graphs = False
        step = graph_t or eager
        rows.append(dict(batch=b, eager_s=eager, graph_s=graph_t, step_s=step))
        print(f"{b:5d} {eager * 1000:9.2f} {(graph_t or float('nan')) * 1000:9.2f} {b / step:9.0f}", flush=True)

    # prefill
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    pre = []
    for bsz, s in prefill_shapes:
        cs, sn = rope_tables(torch.arange(s), c["head_dim"], dev, dt)
        tok = torch.randint(0, c["vocab"], (bsz, s), device=dev)
        with torch.inference_mode():
            t = bench(lambda: m.prefill(tok, cs, sn), dev, max(reps // 4, 3))
        pre.append(dict(batch=bsz, seq=s, s=t, tokens_per_s=bsz * s / t,
                        tflops=2 * m.layer_params * bsz * s / t / 1e12))
        print(f"prefill {bsz}x{s}: {t * 1000:.1f} ms, {bsz * s / t:,.0f} tok/s "
              f"(~{pre[-1]['tflops']:.0f} TFLOP/s in the layers' matmuls)", flush=True)
    act_peak = torch.cuda.max_memory_allocated(dev) - base if dev.type == "cuda" else 0
    return dict(gpu=gpu, device=dev.type, torch=torch.__version__, total_mem_bytes=total_mem,
                cuda_context_bytes=context_bytes, cuda_graphs=graphs, context_tokens=context, reps=reps,
                hbm_copy_GBps=copy, gemm_bf16_tflops=tflops, weight_bytes=m.weight_bytes,
                kv_bytes_per_token=kv_bytes_per_token, decode=rows, prefill=pre, prefill_activation_bytes=act_peak)


def build_profile(r: dict, date: str, prompt_tokens: int, mem_util: float, cold_start_s: float,
                  tiny: bool = False) -> dict:
    """The simulator profile (autoscale/sim/profile.py's fields) from `measure`'s numbers; raw ones under "measured"."""
    gpu, graphs, rows, pre = r["gpu"], r["cuda_graphs"], r["decode"], r["prefill"]
    short = next((k for k in ("h100", "h200", "a100", "l40s", "l4", "b200") if k in gpu.lower()),
                 "cpu" if r["device"] == "cpu" else "gpu")
    name = f"{short}-llama3-8b-measured" + ("-tiny" if tiny else "")
    ttft_pre = next((p["s"] for p in pre if p["batch"] == 1 and p["seq"] == prompt_tokens), None)
    if ttft_pre is None:
        ttft_pre = prompt_tokens / pre[0]["tokens_per_s"]
    budget = max(pre, key=lambda p: p["batch"] * p["seq"])
    total, wb, act, ctx_b = r["total_mem_bytes"], r["weight_bytes"], r["prefill_activation_bytes"], \
        r["cuda_context_bytes"]
    kv_tokens = int((mem_util * total - wb - act - ctx_b) / r["kv_bytes_per_token"]) if total else 524288
    return {
        "name": name,
        "description": f"Measured with plain torch (not vLLM) on one {gpu}, {date}, by benchmarks/gpu_profile.py: "
                       f"random bf16 weights of Llama-3-8B's shapes, decode "
                       f"{'replayed from CUDA graphs' if graphs else 'eager'}, HBM copy {r['hbm_copy_GBps']:.0f} GB/s.",
        "assumptions": [
            f"measured {date} on {gpu} ({total / 2**30:.0f} GiB), torch {r['torch']}; median of {r['reps']} "
            f"decode steps per batch size; unfused torch ops (RMSNorm, RoPE, SwiGLU), SDPA "
            f"({'CUDA graph' if graphs else 'eager'}), contiguous KV cache, no paged attention, argmax sampling",
            f"decode step = one token for every sequence of the batch, each with {r['context_tokens']} tokens in "
            f"KV cache",
            f"ttft = step time at the batch + 1x{prompt_tokens} prefill ({ttft_pre * 1000:.1f} ms), no chunked "
            f"prefill mixing or scheduler overhead",
            f"prefill_tokens_per_s from {budget['batch']}x{budget['seq']} prompt tokens in one forward pass",
            f"KV cache = {mem_util:.0%} of {total / 1e9:.0f} GB minus weights {wb / 1e9:.1f} GB, prefill "
            f"activations {act / 1e9:.1f} GB and CUDA context {ctx_b / 1e9:.1f} GB -> {kv_tokens} tokens",
            f"cold start {cold_start_s:.0f} s is not measured (the derived profile's: container + weights from "
            f"local disk), node provisioning separate",
            "no HTTP, tokenizer, detokenizer or vLLM scheduler time: a real server is slower per step",
        ],
        "batch": [x["batch"] for x in rows],
        "tpot_s": [x["step_s"] for x in rows],
        "ttft_s": [x["step_s"] + ttft_pre for x in rows],
        "tokens_per_s": [x["batch"] / x["step_s"] for x in rows],
        "profile_prompt_tokens": prompt_tokens,
        "prefill_tokens_per_s": budget["tokens_per_s"],
        "max_num_seqs": 256,
        "max_num_batched_tokens": 8192,
        "kv_cache_tokens": kv_tokens,
        "cold_start_s": cold_start_s,
        "measured": r,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    p.add_argument("--context", type=int, default=1000, help="KV tokens per sequence at the timed decode step")
    p.add_argument("--prefill", nargs="+", default=["1x512", "1x2048", "4x2048"], help="BxS prompt shapes")
    p.add_argument("--prompt-tokens", type=int, default=512, help="profile_prompt_tokens (TTFT column)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--copy-gib", type=float, default=4.0)
    p.add_argument("--no-graphs", action="store_true", help="decode eagerly only")
    p.add_argument("--cold-start-s", type=float, default=90.0, help="not measured here: the derived profile's")
    p.add_argument("--mem-util", type=float, default=0.9, help="vLLM gpu_memory_utilization for the KV size")
    p.add_argument("--date", default=time.strftime("%Y-%m-%d", time.gmtime()))
    p.add_argument("--from-raw", type=Path, help="build the profile from a raw JSON (`measure`'s numbers) instead")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    a = p.parse_args()
    if a.tiny:
        a.batches, a.context, a.reps, a.copy_gib = [b for b in a.batches if b <= 8], 64, 3, 1 / 64
        a.prefill, a.prompt_tokens = ["1x32", "2x64"], 32
    if a.from_raw:
        raw = json.loads(a.from_raw.read_text())
    else:
        raw = measure(a.tiny, a.batches, a.context, a.prefill, a.reps, a.copy_gib, not a.no_graphs)
    prof = build_profile(raw, a.date, a.prompt_tokens, a.mem_util, a.cold_start_s, a.tiny)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"{prof['name']}.json"
    path.write_text(json.dumps(prof, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
