"""The OpenAI-compatible API, driven with the official `openai` client against the real engine."""

import json
import urllib.request

import pytest


def test_models_lists_the_configured_models(client, tide_config):
    models = client.models.list()
    expected = []
    for m in tide_config.models:  # each model, then its LoRA adapters as `model:adapter`
        expected += [m.name] + [f"{m.name}:{a}" for a in sorted(m.lora.adapters if m.lora else [])]
    assert [m.id for m in models.data] == expected


def test_health_reports_every_engine_ready(tide_url, model_name):
    with urllib.request.urlopen(f"{tide_url}/health") as r:
        assert r.status == 200
        body = json.loads(r.read())
    assert body["status"] == "ok" and body["models"][model_name] == "ready"
    assert body["models"]["tiny-zero"] in ("ready", "scaled_to_zero")  # a cold model is not woken by /health


def test_chat_completion_with_usage(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Hello!"}],
                                       max_tokens=12)
    assert r.object == "chat.completion" and r.model == model_name
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("length", "stop")
    # the chat template wraps 'Hello!' in bos/user/end/assistant tokens: more prompt tokens than words
    assert r.usage.prompt_tokens > 3
    assert r.usage.completion_tokens <= 12 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_usage_counts_prompt_tokens_exactly(client, model_name):
    r = client.completions.create(model=model_name, prompt=[5, 6, 7, 8], max_tokens=5, temperature=0)
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 5
    assert r.choices[0].finish_reason == "length"


def test_streaming_chat_yields_many_chunks_and_matches_non_streaming(client, model_name):
    kw = dict(model=model_name, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=64,
              temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # streamed as it is generated (tokens coalesced every stream_batch_ms), not one blob at the end
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert text == whole
    assert chunks[-1].usage.completion_tokens == 64 and chunks[-1].choices == []


def test_streaming_completion(client, model_name):
    chunks = list(client.completions.create(model=model_name, prompt="def main():", max_tokens=10, stream=True))
    assert len(chunks) >= 2
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "text_completion" for c in chunks)


def test_temperature_zero_is_deterministic(client, model_name):
    outs = {client.completions.create(model=model_name, prompt="import os\n", max_tokens=20, temperature=0)
            .choices[0].text for _ in range(3)}
    assert len(outs) == 1


def test_seed_makes_sampling_repeatable_and_differs_across_seeds(client, model_name):
    def run(seed):
        return client.completions.create(model=model_name, prompt="x = ", max_tokens=20, temperature=1.0,
                                         seed=seed).choices[0].text

    assert run(7) == run(7)
    assert len({run(7), run(8), run(9)}) > 1


def test_n_choices(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "hi"}], n=3,
                                       max_tokens=6, temperature=1.0, seed=1)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 18
    streamed = list(client.completions.create(model=model_name, prompt="hi", n=2, max_tokens=4, temperature=1.0,
                                              stream=True))
    assert {choice.index for c in streamed for choice in c.choices} == {0, 1}


def test_batch_of_prompts(client, model_name):
    r = client.completions.create(model=model_name, prompt=["a", "b"], n=2, max_tokens=3, temperature=1.0)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]


def test_stop_string_truncates_output(client, model_name):
    kw = dict(model=model_name, prompt="for i in range(10):", temperature=0, max_tokens=40)
    full = client.completions.create(**kw).choices[0].text
    assert len(full) > 10
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = client.completions.create(**kw, stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_top_p_and_max_tokens_one(client, model_name):
    # tiny prompts and max_tokens=1 once killed a CPU worker (bf16 + eager): keep them covered
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                                       top_p=0.5)
    assert r.usage.completion_tokens == 1


@pytest.mark.parametrize("stream", [False, True])
def test_handle_call_through_serve(tide_url, model_name, stream):
    """The model deployment called through a Serve DeploymentHandle (what the Python SDK builds on): its
    `openai` method runs one HTTP request through vLLM's layer and yields (status, headers), then the bytes."""
    from ray import serve

    from serving.app import APP_NAME
    from serving.config import deployment_name

    handle = serve.get_deployment_handle(deployment_name(model_name), app_name=APP_NAME).options(stream=True)

    def call(body):
        (status, headers), *parts = list(handle.openai.remote(
            "POST", "/v1/completions", json.dumps(body).encode(), {"content-type": "application/json"},
            prompt=body["prompt"]))
        return status, dict(headers), b"".join(parts)

    body = {"model": model_name, "prompt": "hello", "max_tokens": 5, "temperature": 0}
    status, headers, raw = call(body)
    assert status == 200 and headers["content-type"] == "application/json"
    whole = json.loads(raw)
    assert whole["usage"]["completion_tokens"] == 5
    if stream:
        status, headers, raw = call({**body, "stream": True})
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        events = [json.loads(e[6:]) for e in raw.decode().split("\n\n") if e.startswith("data: {")]
        assert "".join(c["text"] for e in events for c in e["choices"]) == whole["choices"][0]["text"]
        assert raw.endswith(b"data: [DONE]\n\n")
    status, _, raw = call({**body, "max_tokens": 0})
    assert status == 400 and json.loads(raw)["error"]["message"]
