"""What `vllm serve` answers, Tide answers: requests served by vLLM's own OpenAI layer inside the model replica,
on the real engine and the tiny model, through Tide's ingress and the official `openai` client.

With random weights only constrained decoding produces valid JSON, so a tool call whose arguments parse and
keep to their enum proves the request really reached vLLM's structured-output machinery."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["unit"], "additionalProperties": False}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def _check_call(call) -> None:
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["unit"] in ("c", "f")


def test_named_and_required_tool_choice_give_calls_that_match_the_schema(client):
    out = client.chat.completions.create(model="tiny", messages=MSG, tools=[WEATHER], tool_choice=NAMED,
                                         max_tokens=40)
    (call,) = out.choices[0].message.tool_calls
    _check_call(call)
    out = client.chat.completions.create(model="tiny", messages=MSG, tools=[WEATHER], tool_choice="required",
                                         parallel_tool_calls=False, max_tokens=40)
    calls = out.choices[0].message.tool_calls
    assert calls and all(_check_call(c) is None for c in calls)


def test_streamed_tool_call_deltas_assemble_into_a_valid_call(client):
    args, name = "", None
    for chunk in client.chat.completions.create(model="tiny", messages=MSG, tools=[WEATHER], tool_choice=NAMED,
                                                max_tokens=40, stream=True):
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name = name or (d.function.name if d.function else None)
            args += (d.function.arguments or "") if d.function else ""
    assert name == "get_weather" and json.loads(args)["unit"] in ("c", "f")


def test_a_tool_result_turn_is_accepted(client):
    turn = [*MSG, {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"}]
    out = client.chat.completions.create(model="tiny", messages=turn, tools=[WEATHER], max_tokens=5)
    assert out.usage.completion_tokens >= 1


class Colour(BaseModel):
    colour: Literal["red", "blue"]


def test_json_schema_and_parse_with_a_pydantic_model(client):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "blue"]}},
              "required": ["colour"], "additionalProperties": False}
    out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=40, response_format={
        "type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert json.loads(out.choices[0].message.content)["colour"] in ("red", "blue")
    parsed = client.beta.chat.completions.parse(model="tiny", messages=MSG, max_tokens=40, response_format=Colour)
    assert parsed.choices[0].message.parsed.colour in ("red", "blue")
    regex = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=20,
                                           extra_body={"structured_outputs": {"regex": "(yes|no)"}})
    assert regex.choices[0].message.content in ("yes", "no")
    out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=30,
                                         response_format={"type": "json_object"})
    assert out.choices[0].message.content.lstrip().startswith("{")


def test_tokenize_and_detokenize_round_trip(tide_url):
    toks = httpx.post(f"{tide_url}/tokenize", json={"model": "tiny", "prompt": "import os\nprint(os)"},
                      timeout=60).json()
    assert toks["count"] == len(toks["tokens"]) > 0
    back = httpx.post(f"{tide_url}/detokenize", json={"model": "tiny", "tokens": toks["tokens"]}, timeout=60).json()
    assert "import os" in back["prompt"]


def test_responses_api_with_a_follow_up_on_another_engine(client):
    r = client.responses.create(model="tiny", input="Say hi", max_output_tokens=8)
    assert r.status in ("completed", "incomplete") and r.output
    same = client.responses.create(model="tiny", input="And again", previous_response_id=r.id, max_output_tokens=4)
    assert same.usage.input_tokens > r.usage.input_tokens  # the first turn is part of the prompt
    # tiny-auto runs the same weights in other replica processes, which never saw `r`: the store is shared
    other = client.responses.create(model="tiny-auto", input="And again", previous_response_id=r.id,
                                    max_output_tokens=4)
    assert other.usage.input_tokens == same.usage.input_tokens
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="tiny", input="x", previous_response_id="resp_nope", max_output_tokens=2)


def test_lora_adapters_work_through_vllm_layer(client):
    prompt = {"prompt": "def main(", "max_tokens": 12, "temperature": 0}
    own = {m: client.completions.create(model=m, **prompt).choices[0].text for m in ("tiny", "tiny:a")}
    assert own["tiny"] != own["tiny:a"]
    for m in ("tiny", "tiny:a"):  # repetition_penalty 1 changes nothing, but only vLLM's layer takes it
        out = client.completions.create(model=m, **prompt, extra_body={"repetition_penalty": 1.0})
        assert out.choices[0].text == own[m] and out.model == m
    call = client.chat.completions.create(model="tiny:b", messages=MSG, tools=[WEATHER], tool_choice=NAMED,
                                          max_tokens=40)
    _check_call(call.choices[0].message.tool_calls[0])


def test_streams_carry_usage_only_when_asked(client):
    ask = {"model": "tiny", "messages": MSG, "max_tokens": 4, "stream": True, "extra_body": {"min_p": 0.0}}
    chunks = list(client.chat.completions.create(**ask))
    assert chunks and all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    chunks = list(client.chat.completions.create(**ask, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


@pytest.mark.parametrize("body", [
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}], "tool_choice": {
        "type": "function", "function": {"name": "f"}}},
    {"response_format": {"type": "xml"}},
    {"structured_outputs": {"regex": "(unclosed"}},
    {"tool_choice": {"type": "function", "function": {"name": "not_a_tool"}}, "tools": [WEATHER]},
])
def test_bad_input_on_the_new_surface_is_a_4xx_openai_error(tide_url, client, body):
    r = httpx.post(f"{tide_url}/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 5,
                                                             **body}, timeout=60)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["message"] and err["type"]
    assert client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2).usage.completion_tokens >= 1


def test_tide_keeps_its_stricter_checks(tide_url):
    r = httpx.post(f"{tide_url}/v1/chat/completions", json={"model": "tiny", "max_tokens": 2, "tools": [WEATHER],
                                                             "messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400  # vLLM would accept the unknown role
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{tide_url}/v1", api_key="x", max_retries=0).chat.completions.create(
            model="nope", messages=MSG, tools=[WEATHER])


def test_embeddings_with_vllm_fields_match_tide_path(client):
    own = client.embeddings.create(model="minilm", input="the cat sat on the mat").data[0].embedding
    via = client.embeddings.create(model="minilm", input="the cat sat on the mat",
                                   extra_body={"truncate_prompt_tokens": 64}).data[0].embedding
    assert len(via) == len(own) == 384
    assert sum(a * b for a, b in zip(own, via)) > 0.999  # the same normalised vector (float noise aside)
    cut = client.embeddings.create(model="minilm", input="the cat sat on the mat",
                                   extra_body={"truncate_prompt_tokens": 3}).data[0].embedding
    assert sum(a * b for a, b in zip(own, cut)) < 0.99  # truncation really reached the engine


def test_logprobs_and_echo(client):
    chat = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, logprobs=True, top_logprobs=2,
                                          extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens == 6
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    text = client.completions.create(model="tiny", prompt="def main(", max_tokens=5, logprobs=1, echo=True,
                                     extra_body={"ignore_eos": True})
    choice = text.choices[0]
    assert choice.text.startswith("def main(")  # echo: the prompt comes back in front of the completion
    assert len(choice.logprobs.tokens) == text.usage.prompt_tokens + text.usage.completion_tokens


def test_pooling_routes_of_the_embedding_model(tide_url):
    score = httpx.post(f"{tide_url}/score", json={"model": "minilm", "text_1": "a cat", "text_2": [
        "a cat", "tax law"]}, timeout=60)
    assert score.status_code == 200, score.text[:300]
    same, other = (d["score"] for d in score.json()["data"])
    assert same > 0.99 and other < same
    rerank = httpx.post(f"{tide_url}/v1/rerank", json={"model": "minilm", "query": "a cat", "documents": [
        "tax law", "a cat"]}, timeout=60)
    assert rerank.status_code == 200, rerank.text[:300]
    assert rerank.json()["results"][0]["index"] == 1
    missing = httpx.post(f"{tide_url}/score", json={"model": "tiny", "text_1": "a", "text_2": "b"}, timeout=60)
    assert missing.status_code == 404 and missing.json()["error"]["type"]  # a chat model has no score route
