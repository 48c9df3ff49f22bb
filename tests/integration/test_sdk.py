"""The Python SDK against the real session cluster: Serve handles from this driver and the HTTP clients,
both returning the `openai` package's types and raising the SDK's typed errors."""

from __future__ import annotations

import asyncio

import pytest

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from serving.sdk import AsyncTideClient, BadRequest, ModelNotFound, TideClient, get_model

pytestmark = pytest.mark.integration
MSGS = [{"role": "user", "content": "Tell me about the moon."}]


@pytest.fixture(scope="module")
def tiny(tide_url, model_name):
    return get_model(model_name)


@pytest.fixture(scope="module")
def http(tide_url):
    with TideClient(tide_url + "/v1", timeout_s=120) as c:
        yield c


def _chat_text(chunks) -> str:
    return "".join(c.delta.content or "" for ch in chunks for c in ch.choices)


def test_handle_chat_whole_and_streamed_agree(tiny):
    whole = tiny.chat(MSGS, max_tokens=12, temperature=0, ignore_eos=True)
    assert isinstance(whole, ChatCompletion) and whole.usage.completion_tokens == 12
    chunks = list(tiny.chat_stream(MSGS, max_tokens=12, temperature=0, ignore_eos=True,
                                   stream_options={"include_usage": True}))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert _chat_text(chunks) == whole.choices[0].message.content  # greedy: same text either way
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_handle_completion_and_batch_prompts(tiny):
    one = tiny.complete("The tide", max_tokens=5, temperature=0, ignore_eos=True)
    assert isinstance(one, Completion) and one.usage.completion_tokens == 5
    many = tiny.complete(["a", "b", "c"], max_tokens=3, ignore_eos=True)
    assert [c.index for c in many.choices] == [0, 1, 2]
    streamed = list(tiny.complete_stream("The tide", max_tokens=5, temperature=0, ignore_eos=True))
    assert "".join(c.text for ch in streamed for c in ch.choices) == one.choices[0].text


def test_handle_async_variants(tiny):
    async def go():
        whole = await tiny.achat(MSGS, max_tokens=6, temperature=0, ignore_eos=True)
        text = ""
        async for ch in tiny.achat_stream(MSGS, max_tokens=6, temperature=0, ignore_eos=True):
            text += "".join(c.delta.content or "" for c in ch.choices)
        done = await tiny.acomplete("x", max_tokens=2)
        chunks = [ch async for ch in tiny.acomplete_stream("x", max_tokens=2, ignore_eos=True)]
        return whole, text, done, chunks
    whole, text, done, chunks = asyncio.run(go())
    assert text == whole.choices[0].message.content and isinstance(done, Completion) and chunks


def test_handle_errors_are_typed(tide_url, tiny):
    with pytest.raises(ModelNotFound, match="`nope` does not exist") as ei:
        get_model("nope")
    assert ei.value.status == 404 and ei.value.code == "model_not_found"
    with pytest.raises(BadRequest) as ei:  # caught by the replica: past the context window
        tiny.complete("word " * 2000, max_tokens=4)
    assert ei.value.status == 400 and ei.value.param == "prompt" and ei.value.code == "context_length_exceeded"
    with pytest.raises(BadRequest) as ei:  # caught here, before any call
        tiny.chat_stream(MSGS, max_tokens=0)
    assert ei.value.param == "max_tokens"
    with pytest.raises(BadRequest):
        list(tiny.chat_stream([{"role": "user", "content": "word " * 2000}], max_tokens=4))


def test_handle_stream_stopped_early_leaves_the_model_usable(tiny):
    for chunk in tiny.chat_stream(MSGS, max_tokens=200, ignore_eos=True):
        break
    assert tiny.chat(MSGS, max_tokens=2).usage.completion_tokens >= 1


def test_http_client_matches_the_handle(http, tiny, model_name):
    assert model_name in [m.id for m in http.models().data]
    over_http = http.chat(model_name, MSGS, max_tokens=10, temperature=0, ignore_eos=True)
    assert isinstance(over_http, ChatCompletion)
    assert over_http.choices[0].message.content == tiny.chat(MSGS, max_tokens=10, temperature=0,
                                                              ignore_eos=True).choices[0].message.content
    streamed = list(http.chat_stream(model_name, MSGS, max_tokens=10, temperature=0, ignore_eos=True))
    assert _chat_text(streamed) == over_http.choices[0].message.content
    done = http.complete(model_name, [[1, 2, 3]], max_tokens=3, ignore_eos=True)
    assert done.usage.prompt_tokens == 3 and done.usage.completion_tokens == 3
    assert set(http.status()["models"]) >= {model_name}


def test_http_errors_are_typed(http, model_name):
    with pytest.raises(ModelNotFound) as ei:
        http.chat("nope", MSGS)
    assert ei.value.status == 404 and ei.value.param == "model"
    with pytest.raises(ModelNotFound):
        list(http.chat_stream("nope", MSGS))
    with pytest.raises(BadRequest) as ei:
        http.complete(model_name, "word " * 2000, max_tokens=4)
    assert ei.value.status == 400 and "context" in str(ei.value).lower()


def test_async_http_client_streams_concurrently(tide_url, model_name):
    async def go():
        async with AsyncTideClient(tide_url) as c:
            async def one(i):
                return [ch async for ch in c.complete_stream(model_name, f"n{i}", max_tokens=8, ignore_eos=True,
                                                             stream_options={"include_usage": True})]
            streams = await asyncio.gather(*(one(i) for i in range(4)))
            whole = await c.chat(model_name, MSGS, max_tokens=3)
            with pytest.raises(ModelNotFound):
                await c.complete("nope", "x")
            return streams, whole
    streams, whole = asyncio.run(go())
    assert [s[-1].usage.completion_tokens for s in streams] == [8, 8, 8, 8]
    assert whole.usage.completion_tokens >= 1
