"""Bad input gets an OpenAI-shaped 4xx, never a 500, and the replica keeps serving afterwards."""

import json
import urllib.error
import urllib.request

import openai
import pytest


def post(url: str, body: bytes | str, path="/v1/chat/completions", ctype="application/json"):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def assert_openai_error(body, status_expected, status):
    assert status == status_expected, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    "body, status, param",
    [
        ("{not json", 400, None),
        ("[1, 2]", 400, None),
        (json.dumps({**CHAT, "model": "no-such-model"}), 404, "model"),
        (json.dumps({**CHAT, "messages": []}), 400, "messages"),
        (json.dumps({**CHAT, "max_tokens": 0}), 400, "max_tokens"),
        (json.dumps({**CHAT, "max_tokens": -5}), 400, "max_tokens"),
        (json.dumps({**CHAT, "temperature": "warm"}), 400, "temperature"),
        (json.dumps({**CHAT, "n": "two"}), 400, "n"),
        (json.dumps({**CHAT, "messages": "hello"}), 400, "messages"),
        (json.dumps({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}), 400, "messages[0].role"),
        (json.dumps({**CHAT, "unknown_field": 1}), 400, "unknown_field"),
        (json.dumps({**CHAT, "max_tokens": 100000}), 400, "max_tokens"),
        (json.dumps({**CHAT, "n": 2, "temperature": 0}), 400, "n"),  # vLLM: "n must be 1 when using greedy sampling"
        (json.dumps({k: v for k, v in CHAT.items() if k != "model"}), 400, "model"),
        # text and bytes that break parsers and encoders below the schema (issue 14)
        (json.dumps({**CHAT, "messages": [{"role": "user", "content": "\u0000\ud800"}]}), 400,
         "messages[0].content"),
        ("[" * 100_000 + "]" * 100_000, 400, None),
        (json.dumps({**CHAT, "stop": ["\udfff"]}), 400, "stop[0]"),
        (json.dumps({**CHAT, "model": "\ud800"}), 400, "model"),
        (json.dumps({**CHAT, "\udc00": 1}), 400, "\\udc00"),
        (json.dumps({**CHAT, "temperature": float("nan")}), 400, None),
        (json.dumps({**CHAT, "temperature": 2.0}).replace("2.0", "1e999"), 400, "temperature"),  # parses as inf
        ('{"model": "tiny", "messages": [], "max_tokens": 1' + "0" * 5000 + "}", 400, None),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff"}]}', 400, None),
    ],
)
def test_bad_chat_requests(tide_url, body, status, param):
    code, resp = post(tide_url, body)
    assert_openai_error(resp, status, code)
    assert resp["error"]["param"] == param


def test_lone_surrogates_in_completions_and_embeddings(tide_url):
    for path, body in (("/v1/completions", {"model": "tiny", "prompt": "a\ud800b", "max_tokens": 2}),
                       ("/v1/completions", {"model": "tiny", "prompt": "x", "stream": True, "stop": "\udbff"}),
                       ("/v1/embeddings", {"model": "minilm", "input": ["fine", "\udc00"]})):
        code, resp = post(tide_url, json.dumps(body), path)
        assert_openai_error(resp, 400, code)
        assert resp["error"]["code"] == "invalid_unicode", resp


def test_prompt_longer_than_context(tide_url):
    code, resp = post(tide_url, json.dumps({"model": "tiny", "prompt": "hello world " * 700}), "/v1/completions")
    assert_openai_error(resp, 400, code)
    assert resp["error"]["code"] == "context_length_exceeded" and resp["error"]["param"] == "prompt"
    code, resp = post(tide_url, json.dumps({**CHAT, "messages": [{"role": "user", "content": "word " * 2000}]}))
    assert_openai_error(resp, 400, code)
    assert resp["error"]["param"] == "messages"


def test_token_ids_out_of_vocabulary(tide_url):
    code, resp = post(tide_url, json.dumps({"model": "tiny", "prompt": [1, 99999999]}), "/v1/completions")
    assert_openai_error(resp, 400, code)


def test_oversized_body_is_413(tide_url):
    code, resp = post(tide_url, json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5_000_000}]}))
    assert_openai_error(resp, 413, code)


def test_unknown_route_is_openai_shaped_404(tide_url):
    code, resp = post(tide_url, "{}", "/v1/nope")
    assert_openai_error(resp, 404, code)


def test_streaming_bad_request_is_plain_4xx_not_a_broken_stream(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x " * 3000}], stream=True)
    assert e.value.status_code == 400


def test_replica_keeps_serving_after_bad_input(client, tide_url):
    for body in ["{", json.dumps({**CHAT, "max_tokens": 0}), json.dumps({"model": "tiny", "prompt": "a " * 5000}),
                 "[" * 100_000, json.dumps({**CHAT, "messages": [{"role": "user", "content": "\ud800"}]})]:
        post(tide_url, body)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "still there?"}],
                                       max_tokens=3)
    assert r.usage.completion_tokens == 3
