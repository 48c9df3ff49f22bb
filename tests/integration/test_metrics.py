"""`/metrics` (vLLM's names, per model and replica) and `/tide/status` move when requests are served."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def _scrape(url: str) -> dict[str, list]:
    r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def _value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_counters_move_with_traffic(tide_url, client, model_name):
    before = _scrape(tide_url)
    gen0 = _value(before.get("vllm:generation_tokens", []), "vllm:generation_tokens_total", model_name=model_name)
    ok0 = _value(before.get("vllm:request_success", []), "vllm:request_success_total", model_name=model_name)
    for _ in range(3):
        client.completions.create(model=model_name, prompt="count", max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    deadline = time.time() + 15
    while True:  # replicas push their numbers every second
        after = _scrape(tide_url)
        gen = _value(after["vllm:generation_tokens"], "vllm:generation_tokens_total", model_name=model_name)
        if gen >= gen0 + 36 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert gen >= gen0 + 36
    assert _value(after["vllm:request_success"], "vllm:request_success_total", model_name=model_name) >= ok0 + 3
    ttft_count = _value(after["vllm:time_to_first_token_seconds"], "vllm:time_to_first_token_seconds_count",
                        model_name=model_name)
    assert ttft_count >= 3
    labels = [s.labels for s in after["vllm:num_requests_running"] if s.labels["model_name"] == model_name]
    assert labels and all(lb["replica"] and lb["engine"] == "0" for lb in labels)
    assert _value(after["tide_replicas_running"], "tide_replicas_running", model_name=model_name) >= 1


def test_status_reports_engine_numbers(tide_url, client, model_name):
    client.completions.create(model=model_name, prompt="hello", max_tokens=16, temperature=0,
                              extra_body={"ignore_eos": True})
    deadline = time.time() + 15
    while True:
        m = httpx.get(f"{tide_url}/tide/status", timeout=10).json()["models"][model_name]
        if (m["tokens_per_s"] or 0) > 0 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert m["state"] == "ready" and m["running"] >= 1 and m["desired"] >= 1
    assert m["tokens_per_s"] > 0 and m["ttft_p50_ms"] > 0
    assert isinstance(m["waiting"], int) and isinstance(m["engine_running"], int)
    assert 0.0 <= m["kv_cache_usage"] <= 1.0
