"""Check the embedding replica end to end without Ray Serve: start `EmbeddingServer` in-process on the built-in
all-MiniLM-L6-v2 and print its start time, embeddings/s, similarity sanity, agreement with a plain
`transformers` reference, bad-input answers and cancellation.

    flock /tmp/tide-ray.lock .venv/bin/python benchmarks/embed_check.py            # ~1-2 min on 2 cores
    flock /tmp/tide-ray.lock .venv/bin/python benchmarks/embed_check.py --eager    # skip torch.compile
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "vllm"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAIRS = ["A man is playing guitar.", "A person plays a guitar.", "The stock market fell today."]
BATCH = [f"Sentence number {i} is about {t}." for i, t in
         enumerate(["cats", "the weather", "football", "cooking pasta", "quantum physics", "a red car",
                    "the stock market", "guitars"] * 8)]


def cos(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def reference(texts: list[str]) -> list[list[float]]:
    """all-MiniLM-L6-v2 as sentence-transformers computes it: BERT, mean pooling over the mask, L2 norm."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from serving.replica.embedding_model import default_embedding_model

    path = default_embedding_model()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(v, dim=-1).tolist()


async def run(server, a: argparse.Namespace) -> None:
    from serving.replica.embeddings import EmbeddingRequest
    from serving.errors import TideError

    server._pusher = object()  # no stats hub outside Serve (it would start Ray)

    async def embed(inputs, **kw) -> dict:
        return json.loads(await server.embed(EmbeddingRequest(model="minilm", input=inputs, **kw)))

    body = await embed(PAIRS)
    v = [d["embedding"] for d in body["data"]]
    print(f"dim={len(v[0])} usage={body['usage']} norm={sum(x * x for x in v[0]) ** 0.5:.4f}")
    print(f"cos('{PAIRS[0]}', '{PAIRS[1]}') = {cos(v[0], v[1]):.4f}")
    print(f"cos('{PAIRS[0]}', '{PAIRS[2]}') = {cos(v[0], v[2]):.4f}")
    print(f"cos('{PAIRS[1]}', '{PAIRS[2]}') = {cos(v[1], v[2]):.4f}")
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.3, "similar sentences should embed closer"

    b64 = await embed(PAIRS[0], encoding_format="base64")
    import numpy as np

    raw = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    print(f"base64 == float: max |diff| = {float(np.abs(raw - np.asarray(v[0])).max()):.2e}")

    if a.reference:
        ref = reference(PAIRS)
        print("vs transformers reference: cos =", ", ".join(f"{cos(x, r):.6f}" for x, r in zip(v, ref)))

    for label, call in [("one request, 64 inputs", lambda: embed(BATCH)),
                        ("64 requests, 1 input each", lambda: asyncio.gather(*(embed(s) for s in BATCH)))]:
        rates = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            await call()
            rates.append(len(BATCH) / (time.perf_counter() - t0))
        print(f"{label}: {statistics.median(rates):.0f} embeddings/s (median of {a.rounds}; "
              f"{', '.join(f'{r:.0f}' for r in rates)})")

    for label, kw in [("too long", {"inputs": "word " * 400}), ("empty token list", {"inputs": [[1], []]}),
                      ("dimensions=128", {"inputs": "x", "dimensions": 128}),
                      ("token out of vocab", {"inputs": [1, 999999]})]:
        try:
            await embed(kw.pop("inputs"), **kw)
            print(f"{label}: accepted (unexpected)")
        except TideError as e:
            print(f"{label}: {e.status} param={e.param} code={e.code}: {e.message}")
        except Exception as e:  # pydantic's, before the replica: the ingress maps it to a 400
            from serving.errors import to_error

            err = to_error(e)
            print(f"{label}: {err.status} param={err.param}: {err.message}")

    task = asyncio.ensure_future(embed(["a fairly long sentence to embed " * 6] * 1024))
    await asyncio.sleep(0.2)
    busy = server.engine.get_num_unfinished_requests()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0.5)
    print(f"cancel: {busy} unfinished in the engine before, {server.engine.get_num_unfinished_requests()} after")
    print("stats (stat logger under pooling):", server.record_autoscaling_stats(),
          f"prompt_tokens={server.stats.counters.prompt_tokens} last_step={server.stats.counters.last_step:.0f}")
    print("info:", await server.info())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eager", action="store_true", help="enforce_eager (no torch.compile)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="skip the plain-transformers comparison")
    a = p.parse_args()

    from serving.replica.embeddings import EmbeddingServer

    cfg = {"name": "minilm", "model": "builtin:all-minilm-l6-v2",
           "engine_args": {"dtype": a.dtype, "enforce_eager": a.eager}}
    t0 = time.perf_counter()
    server = EmbeddingServer(cfg)
    print(f"engine start: {server.start_time_s:.1f}s (constructor {time.perf_counter() - t0:.1f}s; "
          f"eager={a.eager}, dtype={a.dtype}, max_model_len={server.max_model_len}, "
          f"VLLM_CPU_OMP_THREADS_BIND={os.environ.get('VLLM_CPU_OMP_THREADS_BIND')})", flush=True)
    try:
        asyncio.run(run(server, a))
    finally:
        server.engine.shutdown()
        server.engine = None  # shut down once, here, not again from __del__ at interpreter exit


if __name__ == "__main__":
    main()
