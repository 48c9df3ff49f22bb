"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis), on the running ingress.

Every operation in the ingress's `/openapi.json` gets schema-valid (positive) and schema-violating (negative)
cases, at most MAX_EXAMPLES of each, sent over loopback to the real Ray + Serve + vLLM cluster. Properties:
no response has status >= 500; every 4xx body is exactly an OpenAI error object; a 2xx stream's error events
are OpenAI error objects too. Problems are collected and reported together (no shrinking: a real server makes
shrinking slow), each with a curl command that reproduces it.

Adjustments to the generated data, stated here so that nothing is excluded silently:
- `model`: the schema says "any string", so random names would all be unknown models (404) and never reach the
  engine. The loaded schema narrows it to `enum: [the served default model]`: positive cases reach the engine,
  and negative cases still send other names (and other types) there, which must give 404/400.
- Engine load on 2 cores: `max_tokens` / `max_completion_tokens` between 9 and 4096 are clipped to 8, and
  when both are absent `max_tokens: 8` is added (the default would be the whole remaining context); `n` between
  3 and 16 becomes 2. Values outside those ranges (0, negative, huge, wrong types) are sent as generated.
"""

from __future__ import annotations

import collections
import copy
import json
import time
import urllib.request
from typing import Any

import pytest
import schemathesis  # the `test` extra pins it (schemathesis==4.32.5); it brings hypothesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core import NotSet

MAX_EXAMPLES = 40  # per operation and generation mode
TIME_BUDGET_S = 80.0  # the whole file stops generating new cases after this
BODY_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
EMBED_MODEL = "minilm"  # the session config's embedding model
ERROR_KEYS = {"message", "type", "param", "code"}


def _raw_schema(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=30) as r:
        return json.loads(r.read())


def _all_ready(url: str, limit_s: float = 300) -> None:
    """Wait until /health is 200: a model an earlier test woke from zero may still be starting (503 then)."""
    end = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=30) as r:
                if r.status == 200:
                    return
        except OSError:  # HTTPError (503) included
            pass
        assert time.monotonic() < end, "some model did not become ready"
        time.sleep(1)


@pytest.fixture(scope="module")
def raw_schema(tide_url) -> dict[str, Any]:
    _all_ready(tide_url)
    return _raw_schema(tide_url)


@pytest.fixture(scope="module")
def api_schema(raw_schema, tide_url, model_name):
    raw = copy.deepcopy(raw_schema)
    schemas = raw.get("components", {}).get("schemas", {})
    for name, model in (("ChatCompletionRequest", model_name), ("CompletionRequest", model_name),
                        ("EmbeddingRequest", EMBED_MODEL), ("TokenizeRequest", model_name),
                        ("DetokenizeRequest", model_name), ("ResponsesRequest", model_name)):
        if name in schemas:
            schemas[name]["properties"]["model"] = {"type": "string", "enum": [model]}
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=tide_url)
    return schema


def test_openapi_declares_the_request_bodies(raw_schema):
    """Without these the fuzzer could only send empty bodies to the routes that matter most."""
    for path, field in zip(BODY_ROUTES, ("messages", "prompt", "input")):
        op = raw_schema["paths"][path]["post"]
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        assert "$ref" in body, f"POST {path} declares no JSON request body in /openapi.json"
        name = body["$ref"].rsplit("/", 1)[-1]
        assert field in raw_schema["components"]["schemas"][name]["properties"], (path, name)
        assert field in raw_schema["components"]["schemas"][name]["required"], (path, name)


def _limit_load(body: Any, path: str = "") -> Any:
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if path == "/v1/embeddings":  # keep the 2 cores responsive: a few inputs per generated request
        if isinstance(body.get("input"), list) and len(body["input"]) > 4:
            body["input"] = body["input"][:4]
        return body
    if path == "/v1/responses":  # vLLM's default would be the whole remaining context
        v = body.get("max_output_tokens")
        body["max_output_tokens"] = v if type(v) is not int or not 8 < v <= 4096 else 8
        if "max_output_tokens" not in body or body["max_output_tokens"] is None:
            body["max_output_tokens"] = 8
        return body
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if type(v) is int and 8 < v <= 4096:
            body[key] = 8
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = 8
    if type(body.get("n")) is int and 2 < body["n"] <= 16:
        body["n"] = 2
    return body


def _is_openai_error(obj: Any) -> bool:
    if not isinstance(obj, dict) or set(obj) != {"error"} or not isinstance(obj["error"], dict):
        return False
    e = obj["error"]
    return (set(e) == ERROR_KEYS and isinstance(e["message"], str) and bool(e["message"])
            and isinstance(e["type"], str) and (e["param"] is None or isinstance(e["param"], str))
            and (e["code"] is None or isinstance(e["code"], (str, int))))


def problem_with(status: int, content_type: str, text: str) -> str | None:
    """What is wrong with one response, or None."""
    if status >= 500:
        return f"status {status}"
    if 400 <= status < 500:
        try:
            body = json.loads(text)
        except ValueError:
            return f"status {status} with a non-JSON body"
        return None if _is_openai_error(body) else f"status {status} with a body that is not an OpenAI error"
    if content_type.startswith("text/event-stream"):
        for line in text.splitlines():
            if line.startswith("data:") and line != "data: [DONE]":
                event = json.loads(line[5:])
                if "error" in event and not _is_openai_error(event):
                    return "a stream error event that is not an OpenAI error"
    return None


def test_problem_with_catches_what_it_should():
    ok = json.dumps({"error": {"message": "m", "type": "t", "param": None, "code": None}})
    assert problem_with(400, "application/json", ok) is None
    assert problem_with(500, "application/json", ok) == "status 500"
    assert problem_with(422, "application/json", '{"detail": "x"}').endswith("not an OpenAI error")
    assert problem_with(404, "text/plain", "Not Found").endswith("non-JSON body")
    bad_event = 'data: {"error": {"message": "x"}}\n\ndata: [DONE]\n'
    assert problem_with(200, "text/event-stream", bad_event) is not None
    assert problem_with(200, "text/event-stream", f"data: {ok}\n\ndata: [DONE]\n") is None


# Every operation Tide promises, with the modes that apply: operations without inputs have no invalid input.
GET_ROUTES = ["GET /health", "GET /v1/models", "GET /tide/status", "GET /metrics"]
VLLM_ROUTES = ("/tokenize", "/detokenize", "/v1/responses")  # answered by vLLM's own layer in the replica
# stored responses, by the id in the path (any string is a valid id: no negative cases)
STORED = ["GET /v1/responses/{response_id}", "POST /v1/responses/{response_id}/cancel"]
CASES = [(op, GenerationMode.POSITIVE) for op in GET_ROUTES + STORED] + [
    (f"POST {p}", mode) for p in BODY_ROUTES + VLLM_ROUTES
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]


def test_schema_has_no_operation_the_fuzzer_skips(raw_schema):
    served = {f"{m.upper()} {p}" for p, ops in raw_schema["paths"].items() for m in ops}
    fuzzed = {op for op, _ in CASES}
    pages = {"GET /", "GET /status"} | {o for o in served if o.startswith("GET /static")}  # HTML, not API
    assert served - fuzzed <= pages, f"operations the fuzzer does not cover yet: {sorted(served - fuzzed - pages)}"


@pytest.fixture(scope="module")
def deadline(tide_url) -> float:
    """The whole file's time budget starts when the cluster is up, not at collection."""
    return time.monotonic() + TIME_BUDGET_S


@pytest.mark.parametrize("operation, mode", CASES, ids=[f"{op} {m.value}" for op, m in CASES])
def test_fuzz(raw_schema, api_schema, deadline, operation, mode):
    method, path = operation.split(" ", 1)
    if method.lower() not in raw_schema["paths"].get(path, {}):
        pytest.fail(f"{operation} is not in /openapi.json")
    op = api_schema[path][method]
    problems: list[str] = []
    counts = {"sent": 0, "cut": 0}
    statuses: collections.Counter[int] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        if time.monotonic() > deadline:
            counts["cut"] += 1
            return
        if not isinstance(case.body, NotSet):
            case.body = _limit_load(case.body, path)
        response = case.call(timeout=60)
        counts["sent"] += 1
        statuses[response.status_code] += 1
        if 400 <= response.status_code < 500:
            try:
                err = response.json()["error"]
                reasons[f"{response.status_code} {err.get('param') or err.get('code') or err['type']}"] += 1
            except (ValueError, KeyError, TypeError):
                pass  # problem_with reports it
        ctype = response.headers.get("content-type") or [""]  # schemathesis keeps every value of a header
        problem = problem_with(response.status_code, ctype[0] if isinstance(ctype, list) else ctype, response.text)
        if problem:
            problems.append(f"{problem}: {case.as_curl_command()}\n    -> {response.text[:300]}")

    run()
    print(f"{operation} {mode.value}: {counts['sent']} sent, statuses {dict(sorted(statuses.items()))}, "
          f"4xx by param/code {dict(reasons.most_common(6))}")
    assert not problems, (f"{len(problems)} of {counts['sent']} responses broke the API's promises:\n"
                          + "\n".join(problems))
    if counts["cut"]:
        pytest.skip(f"time budget ({TIME_BUDGET_S:.0f}s) spent: {counts['cut']} generated cases not sent "
                    f"({counts['sent']} sent, all fine)")
    assert counts["sent"] > 0
    if method == "POST" and mode == GenerationMode.POSITIVE and "{" not in path:  # (random ids are 404s)
        # schema-valid bodies must reach the engine; some are still refused by rules the schema cannot state
        # (an empty prompt, token ids outside the vocabulary, lone surrogates that no tokenizer takes)
        assert statuses[200] >= 1, f"no schema-valid case was answered: {dict(statuses)} {dict(reasons)}"


# ---- byte-level mutations of schema-valid bodies -------------------------------------------------------------
# The schema cannot express what breaks parsers and encoders below it: escaped lone surrogates (valid JSON, not
# valid Unicode), nesting deeper than a recursive parser's stack, NaN/Infinity literals, integer literals past
# Python's digit limit, bytes that are not UTF-8, bodies cut short. Each mutation is applied to a body the schema
# accepts; every answer must still be < 500 and, when 4xx, an OpenAI error object.
MUTATIONS = ("surrogate", "surrogate_key", "nan", "infinity", "deep", "bigint", "not_utf8", "truncate")


def _strings(obj: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(obj, str):
        return [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _strings(v, path + (k,))]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _strings(v, path + (i,))]
    return []


def _set(obj: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def mutate(body: dict[str, Any], kind: str, pick: int) -> bytes:
    """`body` as bytes with one mutation of kind `kind`; `pick` chooses where and how much."""
    if kind == "bigint":
        return _bigint_body(body, pick)
    body = copy.deepcopy(body)
    strings = [p for p in _strings(body) if p != ("model",)]
    if kind == "surrogate" and strings:
        path = strings[pick % len(strings)]
        obj = body
        for k in path:
            obj = obj[k]
        _set(body, path, obj + chr(0xD800 + pick % 0x800))  # json.dumps escapes it as \udXXX
    elif kind == "surrogate_key":
        body[chr(0xDC00 + pick % 0x400)] = "x"
    elif kind in ("nan", "infinity"):
        body["temperature" if pick % 2 else "top_p"] = float("nan") if kind == "nan" else float("-inf")
    text = json.dumps(body, allow_nan=True)
    if kind == "deep":
        depth = (500, 1_000, 5_000, 100_000)[pick % 4]
        text = "[" * depth + text + "]" * depth
    if kind == "truncate":
        text = text[: max(1, pick % len(text))]
    data = text.encode("utf-8")
    if kind == "not_utf8":
        data = data.replace(b'"', b'"\xff\xfe', 2)
    return data


def _bigint_body(body: dict[str, Any], pick: int) -> bytes:
    key = "max_tokens" if pick % 2 else "n"
    text = json.dumps({**body, key: 0})
    return text.replace(f'"{key}": 0', f'"{key}": 1{"0" * (4300 + pick % 100)}').encode()


def test_mutate_makes_what_it_says():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert b"\\ud8" in mutate(body, "surrogate", 0)
    assert mutate(body, "deep", 3).startswith(b"[" * 100_000)
    assert b"NaN" in mutate(body, "nan", 1) and b"-Infinity" in mutate(body, "infinity", 1)
    assert len(mutate(body, "bigint", 0)) > 4300 and b"\xff" in mutate(body, "not_utf8", 0)


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_fuzz_mutated_bodies(api_schema, tide_url, path):
    import httpx
    from hypothesis import strategies as st

    stop = time.monotonic() + 30  # each route's own budget
    op = api_schema[path]["POST"]
    problems: list[str] = []
    statuses: collections.Counter[int] = collections.Counter()

    @settings(max_examples=len(MUTATIONS) * 4, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=GenerationMode.POSITIVE), kind=st.sampled_from(MUTATIONS),
           pick=st.integers(0, 10_000))
    def run(case, kind, pick):
        if time.monotonic() > stop or not isinstance(case.body, dict):
            return
        body = _limit_load(case.body, path)
        data = mutate(body, kind, pick)
        r = httpx.post(tide_url + path, content=data,
                       headers={"content-type": "application/json"}, timeout=60)
        statuses[r.status_code] += 1
        problem = problem_with(r.status_code, r.headers.get("content-type", ""), r.text)
        if problem:
            problems.append(f"{kind}: {problem}: {data[:200]!r} -> {r.text[:200]}")

    run()
    print(f"POST {path} mutated: statuses {dict(sorted(statuses.items()))}")
    assert not problems, "\n".join(problems[:10])
    assert sum(statuses.values()) > 0 and statuses[400] > 0  # the mutations did reach the parser
