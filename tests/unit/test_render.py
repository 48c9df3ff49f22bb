import json
from dataclasses import dataclass, field

from serving.protocol import ChatCompletion, ChatCompletionChunk, Completion
from serving.render import DONE, Renderer


@dataclass
class C:
    index: int
    text: str
    token_ids: list = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Out:
    outputs: list


def parse(sse: str) -> list:
    events = [e for e in sse.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def test_chat_stream_role_deltas_finish_and_usage():
    r = Renderer("chat", "id1", "m", 5, n=2, prompt_tokens=[3], include_usage=True)
    (start,) = parse(r.start())
    assert [c["delta"] for c in start["choices"]] == [{"role": "assistant", "content": ""}] * 2
    (d,) = parse(r.delta(0, Out([C(0, "he", [1]), C(1, "yo", [2])])))
    assert [c["delta"]["content"] for c in d["choices"]] == ["he", "yo"] and d["usage"] is None
    (d2,) = parse(r.delta(0, Out([C(0, "", [3], "length")])))
    assert d2["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    usage, done = parse(r.end())
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert done == "[DONE]"


def test_empty_step_renders_nothing_but_counts_tokens():
    r = Renderer("completion", "id", "m", 0, n=1, prompt_tokens=[1])
    assert r.delta(0, Out([C(0, "", [9])])) == "" and r.completion_tokens == 1
    assert r.start() == "" and r.end() == DONE


def test_completion_indices_span_prompts_and_choices():
    r = Renderer("completion", "id", "m", 0, n=2, prompt_tokens=[2, 4])
    (d,) = parse(r.delta(1, Out([C(1, "x", [1], "stop")])))
    assert d["choices"][0]["index"] == 3 and d["object"] == "text_completion" and "usage" not in d


def test_whole_response_joins_deltas_in_order():
    r = Renderer("chat", "id", "m", 0, n=1, prompt_tokens=[4])
    r.add(0, Out([C(0, "Hel", [1, 2])]))
    r.add(0, Out([C(0, "lo", [3], "stop")]))
    body = json.loads(r.response_bytes())
    assert body["object"] == "chat.completion"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "logprobs": None,
                                "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_unicode_is_kept_verbatim():
    r = Renderer("completion", "id", "m", 0, n=1, prompt_tokens=[1])
    r.add(0, Out([C(0, "héllo ✓", [1], "stop")]))
    assert "héllo ✓".encode() in r.response_bytes()


def test_rendered_bytes_match_the_protocol_models():
    """The hot path writes dicts for speed; the pydantic models of the wire format must accept them as they are."""
    chat = Renderer("chat", "id", "m", 1, n=2, prompt_tokens=[3], include_usage=True)
    events = (parse(chat.start()) + parse(chat.delta(0, Out([C(0, "a", [1]), C(1, "", [2], "stop")])))
              + parse(chat.end())[:-1])
    for ev in events:
        ChatCompletionChunk.model_validate(ev)
    chat.add(0, Out([C(0, "a", [1], "stop"), C(1, "b", [2], "length")]))
    ChatCompletion.model_validate_json(chat.response_bytes())
    text = Renderer("completion", "id", "m", 1, n=1, prompt_tokens=[2, 2])
    for ev in parse(text.delta(1, Out([C(0, "x", [1], "stop")]))):
        Completion.model_validate(ev)
    text.add(0, Out([C(0, "x", [1], "stop")]))
    Completion.model_validate_json(text.response_bytes())
