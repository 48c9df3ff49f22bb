"""The fleet model on small fleets: conservation, capacity, queueing, cold starts, nodes, failures, drain."""

import numpy as np
import pytest

from autoscale.sim.fleet import FleetConfig, simulate
from autoscale.sim.policies import make_policy
from autoscale.sim.profile import Profile
from autoscale.sim.traces import Trace, closed_loop_trace

# A simple replica: 10 ms per decode step at any batch, 8 requests per batch, fast prefill, 20 s cold start.
PROF = Profile(name="toy", batch=[1, 8], tpot_s=[0.01, 0.01], ttft_s=[0.02, 0.02], profile_prompt_tokens=10,
               prefill_tokens_per_s=1e6, max_num_seqs=8, max_num_batched_tokens=4096, kv_cache_tokens=100_000,
               cold_start_s=20)
# One replica completes 8 / (100 tokens x 10 ms) = 8 requests/s.


def steady(rate, seconds, dt=0.5, output=100):
    n = int(seconds / dt)
    return Trace("steady", dt, np.full(n, rate * dt), np.full(n, 10.0), np.full(n, float(output)))


def run(trace, policy="fixed", replicas=1, **kw):
    cfg = FleetConfig(**{"replicas_min": 1, "replicas_max": replicas, "replicas_per_node": 8, "sample_s": 1.0, **kw})
    over = {"replica_capacity": 8, "upscale_delay_s": 0, "downscale_delay_s": 5} if policy == "tide" else None
    return simulate(trace, PROF, make_policy(policy, 1, replicas, over), policy, cfg)


def test_requests_are_conserved():
    r = run(steady(12, 120), replicas=1, queue_timeout_s=5)  # 1.5x overload: some shed
    assert r.shed > 0 and r.unfinished > 0
    assert r.arrived == pytest.approx(r.completed + r.shed + r.failed + r.unfinished, rel=1e-6)


def test_below_capacity_latency_is_the_profiles():
    r = run(steady(4, 120), replicas=1)  # half of one replica's 8 requests/s
    s = r.summary()
    assert s["shed"] == 0 and r.completed == pytest.approx(r.arrived, rel=0.02)
    assert s["ttft_p50_ms"] == pytest.approx(20, rel=0.05)  # no queue: the profile's TTFT
    assert s["tpot_p50_ms"] == pytest.approx(10, rel=0.05)
    assert s["ttft_slo_pct"] > 99


def test_overload_queues_then_sheds_after_the_timeout():
    # twice what one replica serves; max_ongoing 8 = the batch, so the excess waits before the engine
    r = run(steady(16, 60), replicas=1, queue_timeout_s=10, max_ongoing_requests=8)
    s = r.summary()
    assert s["ttft_p99_ms"] > 5000  # queued for seconds
    # FIFO: arrivals of the first 10 s are all served by t=20; from then on the head is always 10 s old, so
    # half of everything that arrived in [10, 60) gives up (the queue drains after the trace ends)
    assert r.shed == pytest.approx(8 * 50, rel=0.05) and r.unfinished < 1e-3
    assert r.summary()["ttft_slo_pct"] < 75


def test_cold_start_and_node_provisioning_delay_new_replicas():
    fast = run(steady(20, 100), policy="tide", replicas=4)
    slow = run(steady(20, 100), policy="tide", replicas=4, replicas_per_node=1, node_provision_s=30)

    def first_time_with(res, n):
        return next(t for t, k in zip(res.series.t, res.series.running) if k >= n)

    t_fast, t_slow = first_time_with(fast, 2), first_time_with(slow, 2)
    assert 19 <= t_fast <= 22  # decided at once, served after the 20 s cold start
    assert t_slow - t_fast == pytest.approx(30, abs=1.5)  # plus a new node
    assert slow.node_s > 0 and slow.summary()["ttft_p99_ms"] > fast.summary()["ttft_p99_ms"]


def test_scale_down_drains_and_stops_billing():
    trace = Trace("drop", 0.5, np.r_[np.full(200, 10.0), np.zeros(400)], np.full(600, 10.0), np.full(600, 100.0))
    r = run(trace, policy="tide", replicas=4)
    assert max(r.series.running) >= 3 and r.series.running[-1] == 1
    assert r.failed == 0  # drained replicas finished their requests
    assert r.replica_s < 4 * 300


def test_failures_lose_requests_and_replicas_come_back():
    r = run(steady(20, 600), replicas=4, mtbf_h=0.02)  # a failure every ~18 s across 4 replicas
    assert r.failed > 0
    assert min(r.series.running[60:]) < 4 and r.series.running[-1] >= 3


def test_kv_capacity_limits_the_batch():
    small_kv = PROF.model_copy(update={"kv_cache_tokens": 240})  # 240 / (10 + 100 / 2) = 4 requests at once
    cfg = FleetConfig(replicas_min=1, replicas_max=1, sample_s=1.0)
    full = simulate(steady(6, 60), PROF, make_policy("fixed", 1, 1), "fixed", cfg)
    limited = simulate(steady(6, 60), small_kv, make_policy("fixed", 1, 1), "fixed", cfg)
    assert full.summary()["ttft_p50_ms"] < 100 < limited.summary()["ttft_p50_ms"]  # 4/s capacity < 6/s offered


def test_closed_loop_never_exceeds_its_clients():
    trace = closed_loop_trace("c", [(10, 0), (30, 12), (30, 3), (10, 0)], 0.5, 10, 100)
    r = run(trace, replicas=1)
    assert max(r.series.load) <= 12 + 1e-6
    assert r.completed == pytest.approx(r.arrived, rel=0.01)
    assert 300 < r.arrived < 360  # 12 clients: 8/s for 30 s; 3 clients: ~3/s for 30 s


def test_prefix_router_raises_cache_hits_and_cuts_prefill():
    from autoscale.sim.prefix import PrefixWorkload

    slow_prefill = PROF.model_copy(update={"prefill_tokens_per_s": 20_000.0})
    trace = Trace("p", 0.5, np.full(240, 12.0), np.full(240, 400.0), np.full(240, 100.0))  # 24/s over 4 replicas
    cfg = FleetConfig(replicas_min=4, replicas_max=4, sample_s=1.0)
    runs = {}
    for router in ("least-loaded", "prefix"):
        wl = PrefixWorkload(router=router, tenants=100, prefix_tokens=384, cache_prefixes=8, samples_per_tick=16)
        runs[router] = simulate(trace, slow_prefill, make_policy("fixed", 4, 4), router, cfg, prefix=wl)
    ll, px = runs["least-loaded"], runs["prefix"]
    assert px.prefix_hit_rate > ll.prefix_hit_rate + 0.2  # 8 of 100 tenants per cache: routing decides hits
    assert px.summary()["ttft_p50_ms"] < ll.summary()["ttft_p50_ms"]  # less prefill per request


def test_prefix_caches_of_stopped_replicas_are_dropped():
    from autoscale.sim.prefix import PrefixModel, PrefixWorkload

    m = PrefixModel(PrefixWorkload(tenants=5, samples_per_tick=20))
    up = np.array([True, True, True])
    m.step(20, up, np.zeros(3))
    assert set(m.caches) <= {0, 1, 2} and m.caches
    before = len(m.router)
    m.step(0, np.array([False, True, True]), np.zeros(3))
    assert 0 not in m.caches and len(m.router) <= before
    assert m.step(5, np.zeros(3, bool), np.zeros(3)) == 0.0
