"""SDK wire logic: request building, SSE decoding, chunk parsing and typed errors (no network, no Ray)."""

import json

import pytest

from serving.errors import TideError
from serving.protocol import ChatCompletion, ChatCompletionChunk, Completion
from serving.render import Renderer
from serving.sdk import errors as E
from serving.sdk.wire import (SSEDecoder, build_request, chunks_from_events, event_chunk, parse_response,
                              request_json)


class _Out:
    def __init__(self, text, finish=None, index=0):
        self.outputs = [type("C", (), {"index": index, "text": text, "token_ids": [1] * len(text),
                                       "finish_reason": finish})()]


def _rendered_stream(kind, include_usage=False):
    """The exact strings a replica yields, from the server's own renderer."""
    r = Renderer(kind, "id-1", "tiny", 1, 1, [3], include_usage)
    parts = [r.start(), r.delta(0, _Out("Hel")), r.delta(0, _Out("lo", "stop")), r.end()]
    return [p for p in parts if p]


def test_build_request_validates_like_the_server():
    req = build_request("chat", "tiny", False, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert req.model == "tiny" and req.max_tokens == 4 and not req.stream
    with pytest.raises(E.BadRequest) as ei:
        build_request("chat", "tiny", False, messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert ei.value.param == "max_tokens" and ei.value.status == 400
    with pytest.raises(E.BadRequest, match="Unrecognized request argument supplied: bogus"):
        build_request("completion", "tiny", False, prompt="x", bogus=1)
    with pytest.raises(E.BadRequest) as ei:
        build_request("chat", "tiny", True, messages=[])
    assert ei.value.param == "messages"


def test_request_json_sends_only_what_was_set():
    req = build_request("completion", "tiny", True, prompt="x", stop="a")
    assert request_json(req) == {"model": "tiny", "prompt": "x", "stop": ["a"], "stream": True}


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
def test_rendered_streams_parse_back_into_protocol_chunks(kind, cls):
    d = SSEDecoder()
    events = [e for s in _rendered_stream(kind, include_usage=True) for e in d.feed(s)]
    chunks = list(chunks_from_events(kind, events))
    assert all(isinstance(c, cls) for c in chunks)
    text = "".join((c.choices[0].delta.content or "") if kind == "chat" else c.choices[0].text
                   for c in chunks if c.choices)
    assert text == "Hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_whole_responses_parse_into_protocol_models():
    for kind, cls in (("chat", ChatCompletion), ("completion", Completion)):
        r = Renderer(kind, "id", "tiny", 1, 1, [2])
        r.add(0, _Out("ok", "length"))
        resp = parse_response(kind, r.response_bytes())
        assert isinstance(resp, cls) and resp.usage.total_tokens == 4


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
