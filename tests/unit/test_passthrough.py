"""Which requests go to vLLM's own OpenAI layer, and what the ingress reads of them (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from serving.config import VLLM_SERVER_ARGS, ModelConfig
from serving.front.passthrough import VllmRequest, drop_usage_event, relay, usage_tokens, with_stream_usage
from serving.protocol import ChatCompletionRequest, CompletionRequest
from serving.validation import VLLM_ONLY_FIELDS, needs_vllm

CHAT_FIELDS = frozenset(ChatCompletionRequest.model_fields)
TEXT_FIELDS = frozenset(CompletionRequest.model_fields)
MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, vllm", [
    ({"model": "m", "messages": MSG}, False),
    ({"model": "m", "messages": MSG, "temperature": 0.5, "stream": True}, False),
    # OpenAI's own fields: Tide checks them first (a 400 names the field), then vLLM's layer answers
    ({"model": "m", "messages": MSG, "tools": [], "tool_choice": "auto"}, False),
    ({"model": "m", "messages": MSG, "response_format": {"type": "json_object"}}, False),
    ({"model": "m", "messages": MSG, "logprobs": True, "top_logprobs": 2}, False),
    ({"model": "m", "messages": MSG, "echo": True}, True),
    ({"model": "m", "messages": MSG, "prompt_logprobs": 1}, True),
    ({"model": "m", "messages": MSG, "min_p": 0.1, "repetition_penalty": 1.1}, True),
    ({"model": "m", "messages": MSG, "tools": [], "no_such_field": 1}, False),  # Tide's 400 names it
    ({"model": "m", "messages": MSG, "no_such_field": 1}, False),
    ({"model": "m", "messages": [{"role": "assistant", "tool_calls": []}, {"role": "tool", "content": "x",
                                                                            "tool_call_id": "1"}]}, True),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, True),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x", "tool_call_id": "1"}]}, False),  # unknown role
    ({"model": "m", "messages": "not a list"}, False),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}], "tools": []}, False),  # Tide's 400 on role
])
def test_chat_bodies(body, vllm):
    assert needs_vllm("chat", body, CHAT_FIELDS) is vllm


@pytest.mark.parametrize("body, vllm", [
    ({"model": "m", "prompt": "x"}, False),
    ({"model": "m", "prompt": "x", "echo": True}, False),
    ({"model": "m", "prompt": "x", "logprobs": 2}, False),
    ({"model": "m", "prompt": "x", "response_format": {"type": "json_object"}}, True),
    ({"model": "m", "prompt": "x", "top_logprobs": 2}, False),  # a chat-only field: Tide's 400 names it
    ({"model": "m", "prompt": "x", "min_p": 0.1}, True),
    ({"model": "m", "prompt": "x", "tools": []}, False),  # a chat-only field on a text completion
    ({"model": "m", "prompt": "x", "suffix": "y"}, False),
])
def test_completion_bodies(body, vllm):
    assert needs_vllm("completion", body, TEXT_FIELDS) is vllm


@pytest.mark.parametrize("body, vllm", [
    ({"model": "m", "input": "x"}, False),
    ({"model": "m", "input": "x", "truncate_prompt_tokens": 8}, True),
    ({"model": "m", "input": "x", "embed_dtype": "float16", "encoding_format": "base64"}, True),
    ({"model": "m", "input": "x", "tools": []}, False),
])
def test_embedding_bodies(body, vllm):
    from serving.protocol import EmbeddingRequest

    assert needs_vllm("embed", body, frozenset(EmbeddingRequest.model_fields)) is vllm


def test_the_field_lists_match_vllm():
    """An upgrade of vLLM that renames or drops a field fails here, not in a user's request."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VChat
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest as VText
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingCompletionRequest as VEmbed

    from serving.protocol import EmbeddingRequest

    assert VLLM_ONLY_FIELDS["embed"] <= set(VEmbed.model_fields) - set(EmbeddingRequest.model_fields)
    assert VLLM_ONLY_FIELDS["chat"] <= set(VChat.model_fields) - CHAT_FIELDS
    assert VLLM_ONLY_FIELDS["completion"] <= set(VText.model_fields) - TEXT_FIELDS


def test_server_args_are_vllm_frontend_options():
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    assert VLLM_SERVER_ARGS <= {f.name for f in dataclasses.fields(FrontendArgs)}


def test_unknown_server_args_are_refused_at_config_load():
    ok = ModelConfig.model_validate({"name": "m", "model": "/x", "server_args": {"tool_call_parser": "pythonic"}})
    assert ok.server_args == {"tool_call_parser": "pythonic"}
    with pytest.raises(ValueError, match="unknown option.*port"):
        ModelConfig.model_validate({"name": "m", "model": "/x", "server_args": {"port": 1}})
    with pytest.raises(ValueError, match="generating model"):
        ModelConfig.model_validate({"name": "m", "model": "/x", "task": "embed",
                                    "server_args": {"tool_call_parser": "pythonic"}})


def test_usage_and_estimates():
    assert usage_tokens(b'data: {"usage": {"prompt_tokens": 3, "total_tokens": 9}}\n\ndata: [DONE]') == 9
    assert usage_tokens(b'{"total_tokens": 1} {"total_tokens": 12}') == 12
    assert usage_tokens(b"data: [DONE]") is None
    r = VllmRequest({"messages": MSG, "max_completion_tokens": 7, "n": 2})
    assert r.requested_max_tokens() == 7 and r.n == 2 and r.prompts() == ['[{"role": "user", "content": "hi"}]']
    assert VllmRequest({"input": "x", "n": True}).n == 1 and VllmRequest({"input": "x"}).requested_max_tokens() is None


@pytest.mark.parametrize("body, added, options", [
    ({"stream": True}, True, {"include_usage": True}),
    ({"stream": True, "stream_options": {"continuous_usage_stats": False}}, True,
     {"continuous_usage_stats": False, "include_usage": True}),
    ({"stream": True, "stream_options": {"include_usage": True}}, False, {"include_usage": True}),
    ({"stream": True, "stream_options": {"include_usage": False}}, False, {"include_usage": False}),
    ({"stream": True, "stream_options": "bad"}, False, "bad"),  # vLLM's 400 names it
    ({"stream": False}, False, None),
    ({}, False, None),
])
def test_streams_ask_for_usage_only_when_the_client_did_not_say(body, added, options):
    assert with_stream_usage(body) is added
    assert body.get("stream_options") == options


def test_the_usage_chunk_tide_asked_for_is_not_relayed():
    first = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    usage = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
    done = b"data: [DONE]\n\n"
    stream = first + usage + done
    for cut in range(1, len(stream)):  # wherever the replica's chunks happen to split the events
        sent, rest = drop_usage_event(stream[:cut])
        more, rest = drop_usage_event(rest + stream[cut:])
        assert sent + more == first + done and rest == b""
    sent, rest = drop_usage_event(first[:-1])
    assert (sent, rest) == (b"", first[:-2] + b"\n")


def test_relay_hides_the_usage_chunk_and_still_settles_on_it():
    import asyncio

    chunks = [b'data: {"choices":[{"delta":{}}]}\n\ndata: {"choices":[],"us',
              b'age":{"total_tokens":7}}\n\n', b"data: [DONE]\n\n"]

    class Gen:
        def __init__(self):
            self.it = iter(chunks)

        def __aiter__(self):
            return self

        async def __anext__(self):
            try:
                return next(self.it)
            except StopIteration:
                raise StopAsyncIteration from None

        def cancel(self):
            pass

    async def run(hide):
        seen = []
        out = [c async for c in relay(Gen(), 10, seen.append, hide)]
        return b"".join(out), seen[0]

    assert asyncio.run(run(True)) == (b'data: {"choices":[{"delta":{}}]}\n\ndata: [DONE]\n\n', 7)
    assert asyncio.run(run(False)) == (b"".join(chunks), 7)
