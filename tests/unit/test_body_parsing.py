"""Every way a request body can be bad at the byte level gets a 400 naming the problem, never an exception
that would become a 500: the class of input behind `"\\u0000\\ud800"` and 100,000 nested brackets."""

from __future__ import annotations

import json

import pytest

from serving.errors import TideError, error_body, printable
from serving.httpio import parse_json_body
from serving.sdk.errors import BadRequest
from serving.sdk.wire import build_request
from serving.validation import lone_surrogate_path

CHAT = '{"model": "tiny", "messages": [{"role": "user", "content": %s}]}'


@pytest.mark.parametrize("body, says, param", [
    (CHAT % r'"\u0000\ud800"', "lone UTF-16 surrogate", "messages[0].content"),
    (CHAT % r'"ok \udfff"', "lone UTF-16 surrogate", "messages[0].content"),
    (CHAT % r'"\ud800\u0041"', "lone UTF-16 surrogate", "messages[0].content"),  # a high one, no low after it
    ('{"model": "tiny", "stop": ["\\udc00"], "prompt": "x"}', "lone UTF-16 surrogate", "stop[0]"),
    ('{"\\ud800": 1}', "lone UTF-16 surrogate", "\\ud800"),  # a key; the message stays encodable
    ("[" * 100_000 + "]" * 100_000, "nested too deeply", None),
    ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply", None),
    ('{"temperature": NaN}', "NaN is not valid JSON", None),
    ('{"temperature": -Infinity}', "-Infinity is not valid JSON", None),
    ('{"n": 1' + "0" * 5000 + "}", "Exceeds the limit", None),
    ("\xff", "could not parse", None),
    ("", "could not parse", None),
    ('"just a string"', "must be a JSON object", None),
])
def test_bad_bodies_are_400_naming_the_problem(body, says, param):
    raw = body.encode("utf-8") if body != "\xff" else b"\xff\xfe{"
    with pytest.raises(TideError) as e:
        parse_json_body(raw)
    assert e.value.status == 400 and says in e.value.message, e.value.message
    assert e.value.param == param
    json.dumps(e.value.body(), ensure_ascii=False).encode("utf-8")  # what JSONResponse does: must not raise


def test_valid_escapes_and_pairs_pass():
    data = parse_json_body((CHAT % r'"\ud83d\ude00 \u00e9 \u0000"').encode())
    assert data["messages"][0]["content"] == "\U0001F600 \u00e9 \x00"
    assert parse_json_body(b'{"a": [[[[1]]]]}') == {"a": [[[[1]]]]}


def test_lone_surrogate_path_walks_deep_values_without_recursion():
    deep: object = "\udc80"
    for _ in range(50_000):
        deep = [deep]
    assert lone_surrogate_path({"x": deep}) == "x" + "[0]" * 50_000
    assert lone_surrogate_path({"a": ["fine", {"b": "caf\u00e9"}]}) is None


def test_error_bodies_quoting_client_text_always_encode():
    body = error_body("Model `\ud800` not found", "not_found_error", "\udfff")
    assert json.dumps(body, ensure_ascii=False).encode("utf-8")
    assert printable("plain") == "plain" and printable("\ud800") == "\\ud800"


def test_sdk_refuses_lone_surrogates_before_sending():
    with pytest.raises(BadRequest) as e:
        build_request("chat", "tiny", False, messages=[{"role": "user", "content": "\x00\ud800"}])
    assert e.value.param == "messages[0].content"
    with pytest.raises(BadRequest):
        build_request("completion", "tiny", False, prompt="x", temperature=float("nan"))
