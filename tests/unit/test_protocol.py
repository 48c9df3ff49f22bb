from serving.protocol import ChatCompletionRequest, CompletionRequest


def test_sampling_kwargs_defaults_follow_openai():
    req = CompletionRequest(model="m", prompt="hi")
    kw = req.sampling_kwargs(max_tokens=7)
    assert kw["temperature"] == 1.0 and kw["top_p"] == 1.0 and kw["n"] == 1 and kw["max_tokens"] == 7
    assert kw["stop"] is None and "top_k" not in kw


def test_stop_string_becomes_list_and_seed_passes():
    req = CompletionRequest(model="m", prompt="hi", stop="x", seed=3, temperature=0, top_k=5)
    kw = req.sampling_kwargs(max_tokens=1)
    assert kw["stop"] == ["x"] and kw["seed"] == 3 and kw["temperature"] == 0 and kw["top_k"] == 5


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


def test_include_usage():
    assert CompletionRequest(model="m", prompt="a", stream=True,
                             stream_options={"include_usage": True}).include_usage
    assert not CompletionRequest(model="m", prompt="a", stream=True).include_usage
