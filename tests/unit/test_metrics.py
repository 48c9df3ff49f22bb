"""Engine counters, the status summary and the Prometheus text (vLLM's names), without Ray or vLLM."""

from prometheus_client.parser import text_string_to_metric_families

from serving.observability.metrics import EngineCounters, Histogram, model_state, model_status, percentile
from serving.observability.prometheus import render_prometheus
from serving.observability.status import fleet_status, metrics_text


def test_histogram_buckets_are_inclusive_and_counted_once():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.counts == [2, 1, 1] and h.count == 4 and abs(h.sum - 3.65) < 1e-9


def test_counters_track_steps_window_and_clip_to_unfinished():
    c = EngineCounters(window_s=10)
    c.on_scheduler(waiting=3, running=5, kv_cache_usage=0.4)
    c.on_iteration(100.0, 30, 5, 1, [0.2, 0.4], [0.01], [("stop", 1.5, 0.1)])
    c.on_iteration(100.5, 0, 7, 0, [], [0.02, 0.03], [("length", 2.0, 0.0)])
    s = c.snapshot(101.0, unfinished=8)
    assert (s["waiting"], s["running"], s["kv_cache_usage"]) == (3, 5, 0.4)
    assert (s["prompt_tokens"], s["generation_tokens"], s["preemptions"]) == (30, 12, 1)
    assert s["success"] == {"stop": 1, "length": 1}
    assert s["window_tokens"] == 12 and s["window_ttfts"] == [0.2, 0.4]
    assert abs(s["ttft"]["sum"] - 0.6) < 1e-9
    # all finished since the last scheduler report: no phantom queue, no KV usage
    idle = c.snapshot(101.0, unfinished=0)
    assert (idle["waiting"], idle["running"], idle["kv_cache_usage"]) == (0, 0, 0.0)
    # admitted by the frontend but not yet seen by the scheduler: counted as waiting
    assert c.snapshot(101.0, unfinished=12)["waiting"] == 7
    # the window forgets old steps; totals do not
    late = c.snapshot(200.0, unfinished=0)
    assert late["window_tokens"] == 0 and late["window_ttfts"] == [] and late["generation_tokens"] == 12


def test_aborts_are_counted():
    c = EngineCounters()
    c.on_abort()
    c.on_abort()
    assert c.snapshot(0.0)["aborted"] == 2


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99


def _snap(t, waiting, running, tokens, ttfts):
    c = EngineCounters(window_s=10)
    c.on_scheduler(waiting, running, 0.5)
    c.on_iteration(t, 10, tokens, 0, ttfts, [], [])
    return c.snapshot(t, unfinished=waiting + running)


def test_model_status_sums_queues_and_rates_over_replicas():
    a, b = _snap(50.0, 2, 4, 100, [0.1, 0.3]), _snap(50.0, 1, 0, 50, [0.2])
    s = model_status([a, b])
    assert s["waiting"] == 3 and s["engine_running"] == 4
    assert s["tokens_per_s"] == 15.0  # 150 tokens over a 10 s window
    assert s["ttft_p50_ms"] == 200.0 and s["kv_cache_usage"] == 0.5
    assert model_status([]) == {"waiting": None, "engine_running": None, "kv_cache_usage": None,
                                "tokens_per_s": None, "ttft_p50_ms": None}


def test_model_state_words():
    assert model_state(0, 0) == "scaled_to_zero"
    assert model_state(0, 1) == "starting"
    assert model_state(2, 3) == "ready"


def test_fleet_status_uses_autoscaler_decision_when_there_is_one():
    hub = {"replicas": {("a", "r1"): _snap(5.0, 4, 2, 10, [])},
           "decisions": {"model-a": {"desired": 3, "running": 1, "action": "scale_up", "reason": "queue",
                                     "time": 1.0}}}
    st = fleet_status(["a", "b"], {"a": (1, 2), "b": (0, 0)}, hub, {"b": 1}, {"a": 20.0, "b": 30.0}, now=9.0)
    a, b = st["models"]["a"], st["models"]["b"]
    assert (a["state"], a["desired"], a["running"], a["replicas"], a["waiting"]) == ("ready", 3, 1, 2, 4)
    assert a["last_decision"]["action"] == "scale_up"
    assert (b["state"], b["desired"], b["held"], b["waiting"], b["expected_start_s"]) == ("scaled_to_zero", 0, 1,
                                                                                          None, 30.0)


def _families(text: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def test_prometheus_text_uses_vllm_names_and_parses():
    snap = _snap(5.0, 1, 2, 40, [0.05])
    text = render_prometheus([("tiny", "r1", snap)], {"tiny": {"desired": 2, "running": 1, "held": 0}},
                             {"tiny": {"scale_up": 1}}, {("tiny", "too_many_held"): 3})
    fams = _families(text)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:time_to_first_token_seconds",
                 "vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds", "tide_replicas_desired",
                 "tide_autoscaler_decisions", "tide_requests_rejected", "tide_requests_aborted"):
        assert name in fams, name
    (gen,) = [s for s in fams["vllm:generation_tokens"].samples if s.name.endswith("_total")]
    assert gen.value == 40 and gen.labels == {"model_name": "tiny", "engine": "0", "replica": "r1"}
    ttft = {s.labels.get("le"): s.value for s in fams["vllm:time_to_first_token_seconds"].samples
            if s.name.endswith("_bucket")}
    assert ttft["0.04"] == 0 and ttft["0.06"] == 1 and ttft["+Inf"] == 1  # cumulative buckets
    rej = fams["tide_requests_rejected"].samples[0]
    assert rej.value == 3 and rej.labels == {"model_name": "tiny", "reason": "too_many_held"}


def test_metrics_text_skips_replicas_of_unknown_models():
    st = fleet_status(["a"], {"a": (1, 1)}, {}, {}, {}, now=0.0)
    hub = {"replicas": {("gone", "r9"): _snap(1.0, 0, 0, 1, [])}}
    fams = _families(metrics_text(st, hub))
    assert not fams["vllm:num_requests_running"].samples
    assert fams["tide_replicas_running"].samples[0].value == 1


def test_fleet_status_shows_the_bounded_queue_fill_only_where_the_ingress_knows_it():
    st = fleet_status(["a", "b"], {"a": (1, 1), "b": (1, 1)}, {}, {}, {}, now=0.0, admitted={"a": (3, 66)})
    assert st["models"]["a"]["in_flight"] == 3 and st["models"]["a"]["admit_limit"] == 66
    assert "in_flight" not in st["models"]["b"]


def test_fleet_status_counts_a_parallel_replica_as_its_group():
    st = fleet_status(["big", "small"], {"big": (2, 3), "small": (1, 1)}, {}, {}, {}, now=0.0,
                      shapes={"big": (4, 4.0), "small": (1, 0.0)})
    big = st["models"]["big"]
    assert (big["workers_per_replica"], big["gpus_per_replica"], big["gpus"]) == (4, 4.0, 8.0)  # running x group
    assert st["models"]["small"]["gpus"] == 0.0
    assert "gpus" not in fleet_status(["a"], {"a": (1, 1)}, {}, {}, {}, now=0.0)["models"]["a"]


def test_finish_rate_is_over_the_last_ten_seconds_or_since_the_first_step():
    from autoscale.policy import FINISH_RATE_WINDOW_S

    c = EngineCounters(window_s=2)  # a shorter stats window does not shorten the finish-rate window
    assert c.finish_rate(100.0) == 0.0
    c.on_iteration(100.0, 0, 1, 0, [], [], [])  # first step, nothing finished
    c.on_iteration(101.2, 0, 1, 0, [], [], [("stop", 1.0, 0.0)] * 3)
    c.on_iteration(102.7, 0, 1, 0, [], [], [("length", 1.0, 0.0)])
    assert c.finish_rate(104.0) == 4 / 4.0  # 4 finished since the first step, 4 s ago
    assert c.snapshot(104.0)["finish_rate"] == 1.0
    later = 100.0 + FINISH_RATE_WINDOW_S + 2.0  # 112: the window [102, 112] holds the one at 102.7
    c.on_iteration(later, 0, 1, 0, [], [], [])
    assert c.finish_rate(later) == 1 / FINISH_RATE_WINDOW_S
    assert c.finish_rate(later + 20) == 0.0
    fresh = EngineCounters()
    fresh.on_iteration(50.0, 0, 1, 0, [], [], [("stop", 1.0, 0.0)] * 2)
    assert fresh.finish_rate(50.3) == 2.0  # under a second since the first step: per one second, not per 0.3
