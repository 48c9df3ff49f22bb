"""The bounded per-model queue and its Retry-After, on a fake clock."""

import math

import pytest
from pydantic import ValidationError

from serving.errors import queue_full
from serving.gate.admission import Admit, AdmissionConfig, AdmissionGate, DrainRate, Reject, retry_after_s


def cfg(**kw) -> AdmissionConfig:
    return AdmissionConfig(**kw)


def gate_with_rate(rate_per_s: float, capacity: int, max_queued: int, **kw) -> AdmissionGate:
    """A full gate whose drain rate was observed as a steady `rate_per_s` over 60 s."""
    g = AdmissionGate(cfg(max_queued=max_queued, **kw), capacity)
    t, dt = 0.0, 1.0 / rate_per_s
    while t < 60.0:
        assert isinstance(g.try_admit(t), Admit)
        g.release(t)
        t += dt
    while isinstance(g.try_admit(60.0), Admit):
        pass
    return g


def test_config_defaults_bounds_and_descriptions():
    c = AdmissionConfig()
    assert (c.max_queued, c.fallback_retry_after_s, c.retry_after_max_s) == (256, 5, 60)
    assert all(f.description for f in AdmissionConfig.model_fields.values())
    with pytest.raises(ValidationError):
        AdmissionConfig(max_queued=-1)
    with pytest.raises(ValidationError):
        AdmissionConfig(maxqueued=1)
    with pytest.raises(ValidationError):
        AdmissionConfig(drain_window_s=0)
    with pytest.raises(ValidationError, match=r"fallback_retry_after_s \(90\) must be <= retry_after_max_s \(60\)"):
        AdmissionConfig(fallback_retry_after_s=90)


def test_admits_capacity_plus_queue_then_rejects():
    g = AdmissionGate(cfg(max_queued=3), capacity=4)
    assert [g.try_admit(0.0).in_flight for _ in range(7)] == list(range(1, 8))
    assert g.limit == 7 and g.queued == 3
    r = g.try_admit(0.0)
    assert isinstance(r, Reject) and (r.in_flight, r.limit) == (7, 7)
    assert g.in_flight == 7  # a rejection takes no slot
    g.release(1.0)
    assert isinstance(g.try_admit(1.0), Admit)


def test_no_replica_running_leaves_only_the_queue():
    g = AdmissionGate(cfg(max_queued=2), capacity=0)
    assert isinstance(g.try_admit(0.0), Admit) and isinstance(g.try_admit(0.0), Admit)
    assert isinstance(g.try_admit(0.0), Reject)
    g.set_capacity(8)  # a replica came up
    assert isinstance(g.try_admit(0.0), Admit) and g.queued == 0
    with pytest.raises(ValueError, match="capacity"):
        g.set_capacity(-1)


def test_zero_queue_rejects_at_capacity():
    g = AdmissionGate(cfg(max_queued=0), capacity=1)
    assert isinstance(g.try_admit(0.0), Admit) and isinstance(g.try_admit(0.0), Reject)


def test_release_without_admit_is_a_bug():
    g = AdmissionGate(cfg(), capacity=1)
    with pytest.raises(RuntimeError, match="release"):
        g.release(0.0)
    assert g.on_finish == g.release


def test_fallback_only_before_any_drain_is_seen():
    g = AdmissionGate(cfg(max_queued=0, fallback_retry_after_s=7), capacity=1)
    g.try_admit(0.0)
    r = g.try_admit(0.0)
    assert (r.retry_after_s, r.estimated) == (7, False)
    g.release(1.0)
    g.try_admit(1.0)
    r = g.try_admit(3.0)
    assert r.estimated and r.retry_after_s == math.ceil(1 / g.drain.rate(3.0)) == 3  # one release in 2 s


def test_retry_after_is_queue_over_drain_rate():
    g = gate_with_rate(2.0, capacity=4, max_queued=20)
    r = g.try_admit(60.0)
    assert r.estimated and r.in_flight == 24
    rate = g.drain.rate(60.0)
    assert rate == pytest.approx(2.0, rel=0.05)
    assert r.retry_after_s == math.ceil(21 / rate)  # 20 waiting + this one, at ~2/s


def test_retry_after_grows_with_the_queue():
    got = [gate_with_rate(2.0, capacity=4, max_queued=q).try_admit(60.0).retry_after_s for q in (0, 5, 20, 60, 200)]
    assert got == sorted(got) and got[0] < got[2] < got[3]
    assert got[-1] == 60  # clamped


def test_retry_after_shrinks_with_a_faster_drain():
    got = [gate_with_rate(r, capacity=4, max_queued=40).try_admit(60.0).retry_after_s for r in (0.5, 1, 4, 16, 64)]
    assert got == sorted(got, reverse=True) and got[0] > got[2] > got[-1]


def test_retry_after_is_never_zero_and_never_past_the_max():
    fast = gate_with_rate(500.0, capacity=1, max_queued=0)
    assert fast.try_admit(60.0).retry_after_s == 1
    slow = gate_with_rate(0.1, capacity=1, max_queued=100, retry_after_max_s=30)
    assert slow.try_admit(60.0).retry_after_s == 30
    for ahead in (0, 1, 10, 10**6):
        for rate in (None, 0.0, 1e-9, 0.3, 1.0, 1e9):
            s, _ = retry_after_s(ahead, rate, cfg())
            assert 1 <= s <= 60


def test_a_stuck_engine_drives_retry_after_up():
    g = gate_with_rate(4.0, capacity=4, max_queued=8)
    before = g.try_admit(60.0).retry_after_s
    later = g.try_admit(60.0 + 120.0).retry_after_s  # nothing finished for two minutes
    assert before < later == 60


def test_drain_rate_estimates():
    d = DrainRate(window_s=10.0)
    assert d.rate(0.0) is None
    d.observe(5.0)
    assert d.rate(5.0) is None  # one instant is not a rate yet
    assert d.rate(6.0) == pytest.approx(1.0, rel=0.1)  # one release in the last second
    d2 = DrainRate(window_s=10.0)
    for i in range(3):  # 3 per second for one second: not read as 0.3/s despite the 10 s window
        d2.observe(i / 3)
    assert d2.rate(1.0) == pytest.approx(3.0, rel=0.2)
    d3 = DrainRate(window_s=10.0)
    for i in range(100):
        d3.observe(0.0 + i * 0.0)  # a batch finishing at once still counts every release
    assert d3.rate(1.0) == pytest.approx(100.0, rel=0.1)
    with pytest.raises(ValueError, match="window_s"):
        DrainRate(0)


def test_drain_rate_follows_a_change():
    d = DrainRate(window_s=5.0)
    t = 0.0
    while t < 60:
        d.observe(t)
        t += 1.0  # 1/s
    while t < 120:
        d.observe(t)
        t += 0.1  # then 10/s
    assert d.rate(t) == pytest.approx(10.0, rel=0.1)


def test_queue_full_error():
    reject = Reject(retry_after_s=4, in_flight=12, limit=12, estimated=True)
    err = queue_full("tiny", reject.in_flight, reject.limit, reject.retry_after_s)
    body = err.body()["error"]
    assert err.status == 429 and body["code"] == "model_overloaded" and body["type"] == "rate_limit_error"
    assert "tiny" in body["message"] and "4s" in body["message"]


def test_capacity_drop_rejects_until_the_backlog_drains():
    g = gate_with_rate(2.0, capacity=8, max_queued=2)  # 10 in flight
    g.set_capacity(4)  # one of two replicas died: 6 now wait
    r = g.try_admit(60.0)
    assert isinstance(r, Reject) and g.queued == 6
    assert r.retry_after_s == math.ceil(7 / g.drain.rate(60.0))
    for i in range(4):  # 9, 8, 7, 6 in flight: still at or past the new limit of 6
        g.release(60.0 + i)
        assert isinstance(g.try_admit(60.0 + i), Reject)
    g.release(65.0)
    assert isinstance(g.try_admit(65.0), Admit) and g.in_flight == 6
