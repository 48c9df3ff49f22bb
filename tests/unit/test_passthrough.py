"""Which requests go to vLLM's own OpenAI layer, and what the ingress reads of them (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from serving.config import VLLM_SERVER_ARGS, ModelConfig
from serving.passthrough import VLLM_ONLY_FIELDS, VllmRequest, needs_vllm, usage_tokens
from serving.protocol import ChatCompletionRequest, CompletionRequest

CHAT_FIELDS = frozenset(ChatCompletionRequest.model_fields)
TEXT_FIELDS = frozenset(CompletionRequest.model_fields)
MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, vllm", [
    ({"model": "m", "messages": MSG}, False),
    ({"model": "m", "messages": MSG, "temperature": 0.5, "stream": True}, False),
    ({"model": "m", "messages": MSG, "tools": [], "tool_choice": "auto"}, True),
    ({"model": "m", "messages": MSG, "response_format": {"type": "json_object"}}, True),
    ({"model": "m", "messages": MSG, "logprobs": True, "top_logprobs": 2}, False),  # not yet routed (README)
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
    ({"model": "m", "prompt": "x", "echo": False}, False),
    ({"model": "m", "prompt": "x", "min_p": 0.1}, True),
    ({"model": "m", "prompt": "x", "tools": []}, False),  # a chat-only field on a text completion
    ({"model": "m", "prompt": "x", "suffix": "y"}, False),
])
def test_completion_bodies(body, vllm):
    assert needs_vllm("completion", body, TEXT_FIELDS) is vllm


def test_the_field_lists_match_vllm():
    """An upgrade of vLLM that renames or drops a field fails here, not in a user's request."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VChat
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest as VText

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
