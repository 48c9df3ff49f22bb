"""`POST /v1/embeddings` on the session cluster: the bundled all-MiniLM-L6-v2 on a real vLLM pooling engine,
called with the `openai` client, next to the generating models behind the same ingress."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration
EMBED = "minilm"


def _cos(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_similar_sentences_embed_closer_than_unrelated_ones(client):
    texts = ["A man is playing guitar.", "A person plays a guitar.", "The stock market fell sharply today.",
             "Shares dropped on Wall Street this afternoon."]
    out = client.embeddings.create(model=EMBED, input=texts)
    assert out.model == EMBED and [d.index for d in out.data] == [0, 1, 2, 3]
    vecs = [d.embedding for d in out.data]
    assert all(len(v) == 384 for v in vecs)
    assert all(abs(np.linalg.norm(v) - 1.0) < 1e-3 for v in vecs)  # normalised, as sentence-transformers does
    guitar, markets = _cos(vecs[0], vecs[1]), _cos(vecs[2], vecs[3])
    assert guitar > 0.6 and markets > 0.5
    assert max(_cos(vecs[0], vecs[2]), _cos(vecs[1], vecs[3])) < min(guitar, markets) - 0.3
    assert out.usage.prompt_tokens == out.usage.total_tokens > 4 * 5


def test_base64_matches_float_and_token_id_input_works(client, tide_url):
    f = client.embeddings.create(model=EMBED, input="hello world", encoding_format="float").data[0].embedding
    r = httpx.post(f"{tide_url}/v1/embeddings", json={"model": EMBED, "input": "hello world",
                                                       "encoding_format": "base64"}, timeout=60)
    assert r.status_code == 200
    b = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(b, f, atol=1e-6)
    ids = client.embeddings.create(model=EMBED, input=[[101, 7592, 2088, 102]]).data[0].embedding
    assert _cos(ids, f) > 0.99  # the same sentence as BERT token ids ([CLS] hello world [SEP])


@pytest.mark.parametrize("body,param", [
    ({"model": EMBED, "input": ""}, "input"),
    ({"model": EMBED, "input": []}, "input"),
    ({"model": EMBED, "input": "word " * 600}, "input"),  # past the model's 256-token context
    ({"model": EMBED, "input": "x", "dimensions": 12}, "dimensions"),
    ({"model": EMBED, "input": [[999999]]}, "input"),
    ({"model": EMBED, "input": "x", "bogus": 1}, "bogus"),
    ({"model": "tiny", "input": "x"}, "model"),  # a generating model serves no embeddings
])
def test_bad_embedding_requests_get_400_naming_the_field(tide_url, body, param):
    r = httpx.post(f"{tide_url}/v1/embeddings", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_chat_on_the_embedding_model_is_a_400_and_unknown_model_a_404(tide_url):
    r = httpx.post(f"{tide_url}/v1/chat/completions", timeout=60,
                   json={"model": EMBED, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"
    r = httpx.post(f"{tide_url}/v1/embeddings", json={"model": "nope", "input": "x"}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
