"""API keys: digests only, constant-time checks, open paths, OpenAI-shaped 401s, nothing secret in repr/logs."""

import hashlib
import logging
import pickle

import pytest
from pydantic import ValidationError

from serving.gate import auth
from serving.errors import unauthorized
from serving.gate.auth import AuthConfig, KeyEntry, KeyRing, authorize, hash_key, parse_env_keys, presented_key

RAW_A, RAW_B, RAW_C = "sk-alpha-0123456789abcdef", "sk-bravo-fedcba9876543210", "sk-charlie-55555555"


def entry(name: str, raw: str, **limits) -> KeyEntry:
    return KeyEntry(name=name, sha256=hash_key(raw), **limits)


def ring(*entries: KeyEntry, environ=None, **cfg) -> KeyRing:
    return KeyRing.from_config(AuthConfig(keys=list(entries), **cfg), environ or {})


def test_hash_key_is_sha256_hex():
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_key("ключ") == hashlib.sha256("ключ".encode()).hexdigest()


@pytest.mark.parametrize("bad", ["sk-raw-key", "ab" * 31, "zz" * 32, ""])
def test_key_entry_wants_a_digest_not_a_raw_key(bad):
    with pytest.raises(ValidationError, match="64 hex digits"):
        KeyEntry(name="a", sha256=bad)


def test_key_entry_normalizes_case_and_checks_name_and_limits():
    assert KeyEntry(name="a", sha256=hash_key("x").upper()).sha256 == hash_key("x")
    with pytest.raises(ValidationError, match="name"):
        KeyEntry(name="has space", sha256=hash_key("x"))
    with pytest.raises(ValidationError):
        KeyEntry(name="a", sha256=hash_key("x"), requests_per_minute=0)
    with pytest.raises(ValidationError):
        KeyEntry(name="a", sha256=hash_key("x"), extra=1)


@pytest.mark.parametrize("keys, match", [
    ([entry("a", RAW_A), entry("a", RAW_B)], "repeated: a"),
    ([entry("a", RAW_A), entry("b", RAW_A)], "same sha256"),
    ([entry("env-1", RAW_A)], "reserved"),
])
def test_config_rejects_ambiguous_keys(keys, match):
    with pytest.raises(ValidationError, match=match):
        AuthConfig(keys=keys)


def test_config_rejects_unknown_fields_and_every_field_is_described():
    with pytest.raises(ValidationError):
        AuthConfig(kyes=[])
    for model in (AuthConfig, KeyEntry):
        assert all(f.description for f in model.model_fields.values()), model


def test_parse_env_keys_ignores_blanks():
    assert parse_env_keys(" a, ,b ,,") == ["a", "b"]
    assert parse_env_keys(None) == [] and parse_env_keys("") == []


def test_no_key_means_auth_off_and_everything_open():
    r = ring()
    assert not r.enabled
    assert r.is_open("/v1/chat/completions") and r.is_open("/metrics")
    assert authorize(r, "/v1/completions", None) is None


def test_env_keys_are_hashed_named_and_given_the_env_limits():
    r = ring(entry("ops", RAW_A, requests_per_minute=5),
             environ={"TIDE_API_KEYS": f"{RAW_B}, {RAW_C}"}, env_tokens_per_minute=1000)
    assert [e.name for e in r.entries] == ["ops", "env-1", "env-2"]
    assert r.entries[1].sha256 == hash_key(RAW_B) and r.entries[1].tokens_per_minute == 1000
    assert r.entries[1].requests_per_minute is None
    assert r.check(f"Bearer {RAW_C}").name == "env-2"


def test_env_key_that_is_also_in_the_config_keeps_the_config_entry():
    r = ring(entry("ops", RAW_A, requests_per_minute=5), environ={"TIDE_API_KEYS": RAW_A})
    assert [e.name for e in r.entries] == ["ops"]
    assert r.check(f"Bearer {RAW_A}").requests_per_minute == 5


def test_env_variable_name_is_configurable_or_off():
    env = {"MY_KEYS": RAW_A, "TIDE_API_KEYS": RAW_B}
    assert ring(environ=env, keys_env="MY_KEYS").check(f"Bearer {RAW_A}").name == "env-1"
    assert ring(environ=env, keys_env="MY_KEYS").check(f"Bearer {RAW_B}") is None
    assert not ring(environ=env, keys_env=None).enabled


def test_from_config_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("TIDE_API_KEYS", RAW_A)
    assert KeyRing.from_config(AuthConfig()).check(f"Bearer {RAW_A}") is not None


@pytest.mark.parametrize("header, x_api_key, expected", [
    (f"Bearer {RAW_B}", None, "b"),
    (f"bearer   {RAW_B}  ", None, "b"),
    (f"BEARER {RAW_A}", None, "a"),
    (f"Bearer {RAW_A}x", None, None),
    (f"Bearer {RAW_A[:-1]}", None, None),
    ("Bearer ", None, None),
    ("Bearer", None, None),
    (f"Basic {RAW_A}", None, None),
    (RAW_A, None, None),
    (None, RAW_C, "c"),
    ("", f" {RAW_C} ", "c"),
    ("Bearer nope", RAW_A, None),  # the Authorization header wins when it carries a Bearer key
    (None, None, None),
])
def test_check(header, x_api_key, expected):
    r = ring(entry("a", RAW_A), entry("b", RAW_B), entry("c", RAW_C))
    got = r.check(header, x_api_key)
    assert (got.name if got else None) == expected


def test_x_api_key_can_be_refused():
    r = ring(entry("a", RAW_A), accept_x_api_key=False)
    assert r.check(None, RAW_A) is None
    assert r.check(f"Bearer {RAW_A}", None).name == "a"
    assert presented_key(None, RAW_A, accept_x_api_key=False) is None


@pytest.mark.parametrize("raw, position", [(RAW_A, 0), (RAW_B, 1), (RAW_C, 2), ("sk-unknown", None)])
def test_check_compares_against_every_entry_whichever_matches(monkeypatch, raw, position):
    r = ring(entry("a", RAW_A), entry("b", RAW_B), entry("c", RAW_C))
    calls = []
    real = auth.hmac.compare_digest

    def counting(x, y):
        calls.append(y)
        return real(x, y)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    got = r.check(f"Bearer {raw}")
    assert len(calls) == 3  # no early exit: the work does not reveal which key matched
    assert all(isinstance(c, bytes) and len(c) == 32 for c in calls)
    assert (r.entries.index(got) if got else None) == position


@pytest.mark.parametrize("path, open_", [
    ("/health", True), ("/", True), ("/status", True), ("/static/app.js", True), ("/static/css/a.css", True),
    ("/healthz", False), ("/health/x", False), ("/v1/models", False), ("/v1/chat/completions", False),
    ("/tide/status", False), ("/statusx", False), ("/metrics", False), ("/metrics/x", False),
])
def test_open_paths(path, open_):
    assert ring(entry("a", RAW_A)).is_open(path) is open_


def test_metrics_can_be_public_and_open_paths_configured():
    assert ring(entry("a", RAW_A), metrics_public=True).is_open("/metrics")
    r = ring(entry("a", RAW_A), open_paths=["/health"])
    assert r.is_open("/health") and not r.is_open("/") and not r.is_open("/static/x")


def test_authorize_decisions():
    r = ring(entry("a", RAW_A))
    assert authorize(r, "/health", None) is None
    assert authorize(r, "/v1/models", f"Bearer {RAW_A}").name == "a"
    missing = authorize(r, "/v1/models", None)
    wrong = authorize(r, "/v1/models", "Bearer sk-wrong-key-123")
    assert (missing.status, missing.code) == (401, None) and "didn't provide an API key" in missing.message
    assert (wrong.status, wrong.code) == (401, "invalid_api_key")
    assert wrong.message.startswith("Incorrect API key provided")
    assert "sk-wrong-key-123" not in str(wrong.body())


def test_unauthorized_bodies_are_openai_shaped():
    for given in (True, False):
        body = unauthorized(given).body()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] is None
    assert auth.UNAUTHORIZED_HEADERS == {"WWW-Authenticate": "Bearer"}


def test_nothing_secret_in_repr_pickle_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    cfg = AuthConfig(keys=[entry("ops", RAW_A)])
    r = KeyRing.from_config(cfg, {"TIDE_API_KEYS": RAW_B})
    r.check(f"Bearer {RAW_C}")
    r.check(f"Bearer {RAW_B}")
    authorize(r, "/v1/models", f"Bearer {RAW_C}")
    shown = " ".join([repr(r), str(r), repr(cfg), str(cfg), repr(r.entries), caplog.text])
    stored = pickle.dumps(r)
    for raw in (RAW_A, RAW_B, RAW_C):
        assert raw not in shown and raw.encode() not in stored
    for digest in (hash_key(RAW_A), hash_key(RAW_B)):
        assert digest not in shown  # not even the digests are printed
    assert "ops" in repr(r) and "env-1" in repr(r)


def test_resolve_env_ships_only_digests_and_round_trips():
    cfg = AuthConfig(keys=[entry("ops", RAW_A)], env_requests_per_minute=7)
    resolved = auth.resolve_env(cfg, {"TIDE_API_KEYS": RAW_B})
    wire = resolved.model_dump_json()  # what would travel to the ingress replica
    assert RAW_B not in wire and hash_key(RAW_B) in wire and resolved.keys_env is None
    again = AuthConfig.model_validate_json(wire)  # env-N names are fine once keys_env is off
    r = KeyRing.from_config(again, {"TIDE_API_KEYS": RAW_C})  # the replica's environment is not read
    assert r.check(f"Bearer {RAW_B}").name == "env-1" and r.check(f"Bearer {RAW_B}").requests_per_minute == 7
    assert r.check(f"Bearer {RAW_C}") is None
