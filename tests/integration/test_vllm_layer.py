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


def test_responses_api(client):
    r = client.responses.create(model="tiny", input="Say hi", max_output_tokens=8)
    assert r.status in ("completed", "incomplete") and r.output


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
