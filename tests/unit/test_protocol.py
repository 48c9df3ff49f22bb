from serving.protocol import ChatCompletionRequest, CompletionRequest


def test_stop_string_becomes_list_and_seed_passes():
    req = CompletionRequest(model="m", prompt="hi", stop="x", seed=3, temperature=0, top_k=5)
    assert req.stop == ["x"] and req.seed == 3 and req.temperature == 0 and req.top_k == 5


def test_prompts_forms():
    assert CompletionRequest(model="m", prompt="a").prompts() == ["a"]
    assert CompletionRequest(model="m", prompt=[1, 2]).prompts() == [[1, 2]]
    assert CompletionRequest(model="m", prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(model="m", prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]


def test_chat_max_completion_tokens_wins_and_developer_is_system():
    req = ChatCompletionRequest(
        model="m",
        messages=[{"role": "developer", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        max_tokens=5, max_completion_tokens=9,
    )
    assert req.requested_max_tokens() == 9
    assert req.chat_messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}]


# ---- tools and structured outputs: checked here with the field's path, run by vLLM's layer ----

import pytest  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from serving.errors import to_error  # noqa: E402

MSGS = [{"role": "user", "content": "x"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}}, "required": ["city"]}}}


def test_openai_tool_and_format_shapes_are_accepted():
    req = ChatCompletionRequest(model="m", messages=MSGS, tools=[TOOL], tool_choice="required", logprobs=True,
                                top_logprobs=3, response_format={"type": "json_schema", "json_schema": {
                                    "name": "out", "schema": {"type": "object"}, "strict": True}})
    assert req.tools[0].function.name == "get_weather" and req.response_format.json_schema.json_schema
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert ChatCompletionRequest(model="m", messages=MSGS, tools=[TOOL], tool_choice=named).tool_choice
    assert CompletionRequest(model="m", prompt="x", echo=True, logprobs=2).logprobs == 2


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{**TOOL, "function": {**TOOL["function"], "parameters": {"type": "nope"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, None),
    ({"tool_choice": "required"}, None),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {"minimum": "low"}}}},
     "response_format.json_schema.schema"),
    ({"top_logprobs": 2}, None),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_bad_tools_and_formats_are_400s_naming_the_field(extra, param):
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, **extra})
    err = to_error(e.value)
    assert err.status == 400 and err.param == param, err.message
