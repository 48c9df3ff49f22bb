"""LoRA adapters on the session cluster: `tiny:a` and `tiny:b` run on `tiny`'s replicas with their adapter
(vLLM multi-LoRA on the CPU engine, with Tide's fix for base requests batched with adapter requests)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.integration
PROMPT = {"prompt": "def main(", "max_tokens": 16, "temperature": 0}


def _text(client, model: str) -> str:
    out = client.completions.create(model=model, **PROMPT)
    assert out.model == model  # the response names what was asked for, adapter included
    return out.choices[0].text


def test_adapters_are_listed_like_vllm_lists_them(client):
    cards = {m.id: m for m in client.models.list().data}
    assert {"tiny:a", "tiny:b"} <= set(cards)
    a = cards["tiny:a"].model_dump()
    assert a["parent"] == "tiny" and a["root"].endswith("tiny-lora-a")


def test_each_adapter_changes_the_output_and_mixed_batches_keep_them_apart(client):
    alone = {m: _text(client, m) for m in ("tiny", "tiny:a", "tiny:b")}
    assert len(set(alone.values())) == 3, alone  # base, a and b all generate differently
    models = ["tiny", "tiny:a", "tiny:b"] * 4
    with ThreadPoolExecutor(len(models)) as pool:  # one engine batch mixing base and adapter requests
        mixed = list(pool.map(lambda m: _text(client, m), models))
    assert mixed == [alone[m] for m in models]


def test_adapter_chat_streams(client):
    chunks = list(client.chat.completions.create(model="tiny:a", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=5, stream=True))
    assert chunks and all(c.model == "tiny:a" for c in chunks)


def test_unknown_adapter_is_a_404(tide_url):
    for model in ("tiny:nope", "tiny-auto:a"):
        r = httpx.post(f"{tide_url}/v1/completions", json={"model": model, **PROMPT}, timeout=60)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "model_not_found" and model in r.json()["error"]["message"]
