"""vLLM's error bodies in OpenAI's words; the bodies below are what vLLM 0.32's layer sent on the tiny model."""

import json

import pytest

from serving.vllm_errors import error_type, named_field, openai_error_bytes

CONTEXT = ("This model's maximum context length is 1024 tokens. However, your prompt contains at least 1025 input "
           "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input "
           "prompt. (parameter=input_tokens, value=1025)")


def vllm(message, param=None, type_="BadRequestError", code=400) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def fixed(status, body, path="/v1/chat/completions", keys=()):
    return json.loads(openai_error_bytes(status, body, path, keys))["error"]


@pytest.mark.parametrize("path, field", [("/v1/chat/completions", "messages"), ("/v1/completions", "prompt"),
                                         ("/v1/embeddings", "input")])
def test_context_length_names_the_input_and_the_openai_code(path, field):
    e = fixed(400, vllm(CONTEXT, "input_tokens"), path, ["model", field])
    assert e == {"message": CONTEXT, "type": "invalid_request_error", "param": field,
                 "code": "context_length_exceeded"}


def test_a_field_vllm_named_is_kept():
    msg = "max_tokens=100000 cannot be greater than max_model_len=1024. (parameter=max_tokens, value=100000)"
    e = fixed(400, vllm(msg, "max_tokens"), keys=["model", "messages", "max_tokens"])
    assert (e["param"], e["code"], e["type"]) == ("max_tokens", None, "invalid_request_error")


def test_out_of_vocabulary_names_the_input():
    assert fixed(400, vllm("Token id 99999999 is out of vocabulary"), "/v1/completions",
                 ["model", "prompt"])["param"] == "prompt"


@pytest.mark.parametrize("message, keys, param", [
    ("n must be 1 when using greedy sampling, got 2.", ["model", "messages", "n", "temperature"], "n"),
    ("Model 'minilm' does not support Matryoshka embeddings; dimensions must be unset (received dimensions=12).",
     ["model", "input", "dimensions"], "dimensions"),
    ('tool_choice="required" requires --tool-call-parser to be set', ["model", "messages", "tools", "tool_choice"],
     "tool_choice"),
    ("Grammar error: at 1(8): invalid regex", ["model", "messages", "structured_outputs"], None),
    ("something about n and model", ["model", "n"], None),  # neither is named as the subject
])
def test_a_field_the_message_names(message, keys, param):
    assert named_field(message, keys) == param


@pytest.mark.parametrize("status, given, expected", [
    (400, "BadRequestError", "invalid_request_error"), (404, "NotFoundError", "not_found_error"),
    (500, "InternalServerError", "server_error"), (400, "invalid_request_error", "invalid_request_error"),
    (429, None, "rate_limit_error"), (401, "Unauthorized", "authentication_error"), (422, None,
                                                                                     "invalid_request_error"),
])
def test_error_types_are_openai_names(status, given, expected):
    assert error_type(status, given) == expected


def test_fastapi_details_and_plain_text_become_error_objects():
    assert fixed(404, b'{"detail": "Not Found"}') == {"message": "Not Found", "type": "not_found_error",
                                                      "param": None, "code": None}
    e = fixed(422, json.dumps({"detail": [{"loc": ["body"], "msg": "bad"}]}).encode())
    assert e["type"] == "invalid_request_error" and "bad" in e["message"]
    assert fixed(502, b"upstream gone")["message"] == "upstream gone"
    assert fixed(500, b"")["message"] == "HTTP 500"


def test_vllm_404_for_a_stored_response_keeps_its_param():
    e = fixed(404, json.dumps({"error": {"message": "Response with id 'resp_x' not found.",
                                         "type": "invalid_request_error", "param": "response_id",
                                         "code": 404}}).encode(), "/v1/responses/resp_x")
    assert (e["param"], e["type"], e["code"]) == ("response_id", "invalid_request_error", None)
