"""SDK wire logic: request building, SSE decoding, chunk parsing and typed errors (no network, no Ray)."""

import json

import pytest

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from serving.errors import TideError
from serving.sdk import errors as E
from serving.sdk.wire import SSEDecoder, build_request, chunks_from_events, event_chunk, parse_response


def _event(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _vllm_stream(kind):
    """SSE text shaped as vLLM 0.32's layer sends it (its extra fields included), split as a replica yields it."""
    base = {"id": "cmpl-1", "created": 1, "model": "tiny"}
    if kind == "chat":
        base["object"] = "chat.completion.chunk"
        deltas = [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}]
        chunks = [{**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]}
                  for d in deltas]
        chunks[-1]["choices"][0].update(finish_reason="stop", stop_reason=None, token_ids=None)
    else:
        base["object"] = "text_completion"
        chunks = [{**base, "choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": f,
                                        "stop_reason": None, "prompt_logprobs": None}]}
                  for t, f in (("Hel", None), ("lo", "stop"))]
    usage = {**base, "choices": [], "usage": {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2,
                                              "prompt_tokens_details": None}}
    return [_event(c) for c in chunks] + [_event(usage) + "data: [DONE]\n\n"]


def test_build_request_validates_like_the_server():
    req = build_request("chat", "tiny", False, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert req == {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "model": "tiny",
                   "stream": False}  # only what the caller set: defaults stay the server's
    with pytest.raises(E.BadRequest) as ei:
        build_request("chat", "tiny", False, messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert ei.value.param == "max_tokens" and ei.value.status == 400
    with pytest.raises(E.BadRequest, match="Unrecognized request argument supplied: bogus"):
        build_request("completion", "tiny", False, prompt="x", bogus=1)
    with pytest.raises(E.BadRequest) as ei:
        build_request("chat", "tiny", True, messages=[])
    assert ei.value.param == "messages"
    with pytest.raises(E.BadRequest) as ei:
        build_request("chat", "tiny", True, messages=[{"role": "user", "content": "\ud800"}])
    assert ei.value.code == "invalid_unicode"


def test_build_request_leaves_vllm_fields_to_vllm():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    req = build_request("chat", "tiny", False, messages=[{"role": "user", "content": "hi"}], tools=tools,
                        tool_choice="required")
    assert req["tools"] == tools and req["tool_choice"] == "required"
    assert build_request("completion", "tiny", True, prompt="x", logprobs=2)["logprobs"] == 2


def test_decoder_joins_data_lines_and_skips_heartbeats():
    d = SSEDecoder()
    text = ": waiting for a replica (1s)\n\ndata: {\"a\":\ndata: 1}\n\ndata: [DONE]\n\n"
    assert list(d.feed(text)) == ['{"a":\n1}', "[DONE]"]
    assert d.close() is None


def test_decoder_handles_events_split_across_feeds_and_crlf():
    d = SSEDecoder()
    assert list(d.feed("data: {\"x\"")) == []
    assert list(d.feed(": 1}\r\n\r\n")) == ['{"x": 1}']  # a line split across feeds is joined
    d2 = SSEDecoder()
    events = [e for piece in ["data: one\r\n", "\r\n", "data:two\n", "\n"] for e in d2.feed(piece)]
    assert events == ["one", "two"]
    d3 = SSEDecoder()
    assert d3.feed_line("data: tail") is None and d3.close() == "tail"


def test_decoder_ignores_other_fields():
    d = SSEDecoder()
    assert list(d.feed("event: x\nid: 3\ndata: y\n\n")) == ["y"]


@pytest.mark.parametrize("kind,cls", [("chat", ChatCompletionChunk), ("completion", Completion)])
def test_vllm_streams_parse_into_openai_chunks(kind, cls):
    d = SSEDecoder()
    events = [e for s in _vllm_stream(kind) for e in d.feed(s)]
    chunks = list(chunks_from_events(kind, events))
    assert all(isinstance(c, cls) for c in chunks)
    text = "".join((c.choices[0].delta.content or "") if kind == "chat" else c.choices[0].text
                   for c in chunks if c.choices)
    assert text == "Hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


def test_whole_responses_parse_into_openai_types():
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok", "refusal": None,
                                                 "annotations": None, "audio": None, "function_call": None,
                                                 "tool_calls": [], "reasoning": None},
                         "logprobs": None, "finish_reason": "length", "stop_reason": None, "token_ids": None}],
            "service_tier": None, "system_fingerprint": None, "prompt_logprobs": None, "prompt_token_ids": None,
            "kv_transfer_params": None, "usage": {"prompt_tokens": 2, "total_tokens": 4, "completion_tokens": 2}}
    text = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "text": "ok", "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "total_tokens": 4, "completion_tokens": 2}}
    for kind, cls, body in (("chat", ChatCompletion, chat), ("completion", Completion, text)):
        resp = parse_response(kind, json.dumps(body))
        assert isinstance(resp, cls) and resp.usage.total_tokens == 4
    assert parse_response("chat", json.dumps(chat)).choices[0].message.content == "ok"


def test_stream_without_done_is_an_error_not_a_short_answer():
    chunk = json.dumps({"id": "i", "object": "text_completion", "created": 1, "model": "m",
                        "choices": [{"index": 0, "text": "a", "logprobs": None, "finish_reason": None}]})
    with pytest.raises(E.TideAPIError, match="before \\[DONE\\]"):
        list(chunks_from_events("completion", [chunk]))


def test_error_event_raises_typed_error():
    body = {"error": {"message": "The model's engine died", "type": "service_unavailable_error",
                      "param": None, "code": "service_unavailable"}}
    with pytest.raises(E.Unavailable) as ei:
        event_chunk("chat", json.dumps(body))
    assert ei.value.status == 503 and isinstance(ei.value, TideError)
    with pytest.raises(E.TideAPIError, match="not JSON"):
        event_chunk("chat", "garbage")
    assert event_chunk("chat", "[DONE]") is None


@pytest.mark.parametrize("status,cls", [(400, E.BadRequest), (413, E.BadRequest), (404, E.ModelNotFound),
                                        (429, E.RateLimited), (503, E.Unavailable), (504, E.RequestTimeout),
                                        (500, E.ServerError), (502, E.ServerError), (418, E.BadRequest)])
def test_status_maps_to_typed_error(status, cls):
    err = E.from_body(status, {"error": {"message": "m", "type": "t", "param": "p", "code": "model_not_found"}})
    assert type(err) is cls and err.status == status and err.param == "p" and str(err) == "m"


def test_retry_after_and_non_json_bodies():
    err = E.from_body(429, {"error": {"message": "busy", "type": "rate_limit_error"}}, "7")
    assert err.retry_after_s == 7.0
    err = E.from_body(502, "<html>bad gateway</html>", "soon")
    assert isinstance(err, E.ServerError) and "bad gateway" in err.message and err.retry_after_s is None
    # a 404 for a wrong path is not a missing model
    assert type(E.from_body(404, {"error": {"message": "Not Found", "type": "not_found_error"}})) is E.BadRequest


@pytest.mark.parametrize("type_,code,cls", [
    ("invalid_request_error", "model_not_found", E.ModelNotFound), ("invalid_request_error", None, E.BadRequest),
    ("rate_limit_error", None, E.RateLimited), ("timeout_error", "timeout", E.RequestTimeout),
    ("server_error", None, E.ServerError)])
def test_stream_error_kinds(type_, code, cls):
    assert type(E.from_stream_error({"error": {"message": "x", "type": type_, "code": code}})) is cls


def test_from_exception_maps_replica_errors():
    from serving.errors import bad_request, model_not_found

    assert type(E.from_exception(bad_request("no", "prompt"))) is E.BadRequest
    assert type(E.from_exception(model_not_found("x"))) is E.ModelNotFound
    assert type(E.from_exception(RuntimeError("boom"))) is E.ServerError
    typed = E.ModelNotFound("gone", 404, "invalid_request_error", "model", "model_not_found")
    assert E.from_exception(typed) is typed


def test_get_model_without_a_ray_connection_says_how_to_connect(monkeypatch):
    import ray

    from serving.sdk import ConnectionFailed, get_model

    # in a full run the integration session's Ray may still be up: this process is "not connected" here
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(ConnectionFailed, match="call serving.sdk.connect\\(address\\) first"):
        get_model("tiny")  # and it must not start a local Ray (the unit conftest would make that raise)


def test_token_auth_opt_in(monkeypatch, tmp_path):
    from serving.sdk.handle import use_ray_token_auth

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    assert use_ray_token_auth() is False and "RAY_AUTH_MODE" not in __import__("os").environ
    (tmp_path / "tok").write_text("x" * 64)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert use_ray_token_auth() is True and __import__("os").environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit choice wins
    assert use_ray_token_auth() is False
