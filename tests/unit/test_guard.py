"""The ingress's front door (keys, per-key limits, bounded queue) on a fake clock, with no Ray and no HTTP."""

import gc

import pytest

from serving.gate.admission import AdmissionConfig
from serving.gate.auth import AuthConfig, KeyEntry, hash_key
from serving.gate.guard import Guard, Refused, prompt_chars
from serving.protocol import ChatCompletionRequest, CompletionRequest


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(keys=(), max_queued=2, **auth) -> tuple[Guard, Clock]:
    clock = Clock()
    cfg = AuthConfig(keys=list(keys), keys_env=None, **auth)
    return Guard(cfg, {"m": AdmissionConfig(max_queued=max_queued)}, clock), clock


def key(name="alice", raw="sk-alice", **limits) -> KeyEntry:
    return KeyEntry(name=name, sha256=hash_key(raw), **limits)


def chat(text="hello", max_tokens=10, n=1) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": text}], max_tokens=max_tokens, n=n)


def test_auth_off_lets_everything_through_without_a_key():
    g, _ = make()
    assert g.check_key("/v1/chat/completions", {}) is None
    assert g.check_key("/metrics", {}) is None


def test_missing_and_wrong_keys_get_401_with_www_authenticate():
    g, _ = make([key()])
    with pytest.raises(Refused) as e:
        g.check_key("/v1/chat/completions", {})
    assert e.value.error.status == 401 and e.value.headers == {"WWW-Authenticate": "Bearer"}
    assert e.value.reason == "unauthorized" and "didn't provide an API key" in e.value.error.message
    with pytest.raises(Refused) as e:
        g.check_key("/v1/models", {"authorization": "Bearer sk-wrong"})
    assert e.value.error.code == "invalid_api_key" and "sk-wrong" not in e.value.error.message


def test_right_key_in_either_header_returns_its_entry():
    g, _ = make([key(), key("bob", "sk-bob")])
    assert g.check_key("/v1/completions", {"authorization": "Bearer sk-bob"}).name == "bob"
    assert g.check_key("/v1/completions", {"x-api-key": "sk-alice"}).name == "alice"


def test_open_paths_and_metrics_switch():
    g, _ = make([key()])
    assert g.check_key("/health", {}) is None and g.check_key("/static/app.js", {}) is None
    with pytest.raises(Refused):
        g.check_key("/metrics", {})
    g2, _ = make([key()], metrics_public=True)
    assert g2.check_key("/metrics", {}) is None


def test_request_limit_gives_429_with_retry_after_and_refills_with_time():
    g, clock = make([key(requests_per_minute=2)], max_queued=100)
    k = g.check_key("/v1/chat/completions", {"authorization": "Bearer sk-alice"})
    passes = [g.admit("m", k, chat(), capacity=10, max_model_len=1024) for _ in range(2)]
    assert passes[1].headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(Refused) as e:
        g.admit("m", k, chat(), capacity=10, max_model_len=1024)
    assert e.value.error.status == 429 and e.value.reason == "rate_limited_requests"
    assert e.value.headers == {"Retry-After": "30"}  # one request of 2/min comes back in 30 s
    clock.t += 30
    g.admit("m", k, chat(), capacity=10, max_model_len=1024)


def test_token_limit_charges_the_estimate_and_settles_with_real_usage():
    g, clock = make([key(tokens_per_minute=100)], max_queued=100)
    k = g.check_key("/v1/completions", {"authorization": "Bearer sk-alice"})
    p = g.admit("m", k, chat("x" * 40, max_tokens=50), capacity=10, max_model_len=1024)  # 10 + 50 charged
    assert p.headers["x-ratelimit-remaining-tokens"] == "40"
    with pytest.raises(Refused) as e:
        g.admit("m", k, chat("x" * 40, max_tokens=50), capacity=10, max_model_len=1024)
    assert e.value.reason == "rate_limited_tokens"
    p.done(12)  # only 12 were used: 48 come back
    g.admit("m", k, chat("x" * 40, max_tokens=50), capacity=10, max_model_len=1024)


def test_a_request_larger_than_the_whole_limit_gets_429_without_retry_after():
    g, _ = make([key(tokens_per_minute=100)])
    k = g.check_key("/v1/completions", {"authorization": "Bearer sk-alice"})
    with pytest.raises(Refused) as e:
        g.admit("m", k, chat(max_tokens=500), capacity=10, max_model_len=1024)
    assert e.value.headers == {} and e.value.error.param == "max_tokens"


def test_full_queue_gets_429_and_refunds_the_keys_charge():
    g, clock = make([key(requests_per_minute=3)], max_queued=1)
    k = g.check_key("/v1/completions", {"authorization": "Bearer sk-alice"})
    first = g.admit("m", k, chat(), capacity=0, max_model_len=1024)  # no replica running: only the queue
    with pytest.raises(Refused) as e:
        g.admit("m", k, chat(), capacity=0, max_model_len=1024)
    assert e.value.reason == "queue_full" and e.value.error.code == "model_overloaded"
    assert int(e.value.headers["Retry-After"]) >= 1
    first.done(5)
    # the refused request's charge came back: two more fit in the 3/min budget
    g.admit("m", k, chat(), capacity=0, max_model_len=1024).done(1)
    g.admit("m", k, chat(), capacity=0, max_model_len=1024)


def test_queue_retry_after_follows_the_drain_rate():
    g, clock = make(max_queued=0)
    for _ in range(20):  # 2 requests per second drain
        g.admit("m", None, chat(), capacity=1, max_model_len=None).done(3)
        clock.t += 0.5
    held = [g.admit("m", None, chat(), capacity=1, max_model_len=None)]
    with pytest.raises(Refused) as e:
        g.admit("m", None, chat(), capacity=1, max_model_len=None)
    assert e.value.headers["Retry-After"] == "1"  # 1 ahead at ~2/s
    held[0].done(None)


def test_pass_done_is_idempotent_and_dropping_an_unfinished_pass_frees_its_slot():
    g, _ = make(max_queued=1)
    p = g.admit("m", None, chat(), capacity=0, max_model_len=None)
    p.done(None)
    p.done(None)
    assert g.gates["m"].in_flight == 0
    g.admit("m", None, chat(), capacity=0, max_model_len=None)  # never finished, then dropped
    gc.collect()
    assert g.gates["m"].in_flight == 0


def test_prompt_chars_for_chat_and_completion():
    assert prompt_chars(chat("abcd")) == 4
    assert prompt_chars(CompletionRequest(model="m", prompt=["ab", "cde"])) == 5
    assert prompt_chars(CompletionRequest(model="m", prompt=[1, 2, 3])) == 12  # ids count as ~4 chars each


def test_embedding_requests_are_charged_for_their_inputs_only():
    from serving.protocol import EmbeddingRequest

    req = EmbeddingRequest(model="m", input=["abcd" * 10, "ab"])
    assert prompt_chars(req) == 42
    g, _ = make([key(tokens_per_minute=100)])
    k = g.check_key("/v1/embeddings", {"authorization": "Bearer sk-alice"})
    p = g.admit("m", k, req, capacity=1, max_model_len=256)  # ceil(42 / 4) = 11 tokens, no completion part
    assert p.headers["x-ratelimit-remaining-tokens"] == "89"


def test_without_max_tokens_the_charge_is_capped_and_failures_settle_by_status():
    g, _ = make([key(tokens_per_minute=10_000)])
    k = g.check_key("/v1/completions", {"authorization": "Bearer sk-alice"})
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x" * 40}])  # no max_tokens
    p = g.admit("m", k, req, capacity=1, max_model_len=32_768)  # 10 prompt + 1024, not the 32k context
    assert p.headers["x-ratelimit-remaining-tokens"] == str(10_000 - 10 - 1024)
    p.failed(400)  # refused by the replica: everything comes back
    p2 = g.admit("m", k, req, capacity=1, max_model_len=32_768)
    assert p2.headers["x-ratelimit-remaining-tokens"] == str(10_000 - 10 - 1024)
    p2.failed(504)  # cut short: the estimate stays charged
    p3 = g.admit("m", k, req, capacity=1, max_model_len=32_768)
    assert int(p3.headers["x-ratelimit-remaining-tokens"]) < 10_000 - 2 * (10 + 1024) + 5
