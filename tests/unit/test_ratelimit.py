"""Per-key token buckets on a fake clock: requests/min, tokens/min, reconciliation, bounded memory."""

import pytest

from serving.errors import rate_limited
from serving.gate.ratelimit import Allowed, Limited, Limits, RateLimiter, ratelimit_headers

RPM3 = Limits(requests_per_minute=3)
TPM100 = Limits(tokens_per_minute=100)


def test_limits_validate():
    with pytest.raises(ValueError, match="requests_per_minute"):
        Limits(requests_per_minute=0)
    with pytest.raises(ValueError, match="tokens_per_minute"):
        Limits(tokens_per_minute=-1)
    with pytest.raises(ValueError, match="max_keys"):
        RateLimiter(max_keys=0)
    with pytest.raises(ValueError, match="tokens"):
        RateLimiter().charge("k", TPM100, 0.0, -1)


def test_unlimited_key_is_always_allowed_and_keeps_no_state():
    rl = RateLimiter()
    for t in range(1000):
        assert isinstance(rl.charge("k", Limits(), float(t) / 100, 10**6), Allowed)
    assert len(rl) == 0


def test_requests_per_minute_burst_then_refill():
    rl = RateLimiter()
    assert [rl.charge("k", RPM3, 0.0, 0).remaining_requests for _ in range(3)] == [2, 1, 0]
    d = rl.charge("k", RPM3, 0.0, 0)
    assert isinstance(d, Limited) and d.limit == "requests" and d.limit_value == 3
    assert d.retry_after_s == pytest.approx(20.0) and d.retry_after_header == "20"
    assert isinstance(rl.charge("k", RPM3, 19.9, 0), Limited)
    assert rl.charge("k", RPM3, 20.0, 0).remaining_requests == 0


def test_tokens_per_minute_and_retry_after_from_the_missing_amount():
    rl = RateLimiter()
    assert rl.charge("k", TPM100, 0.0, 60).remaining_tokens == 40
    d = rl.charge("k", TPM100, 0.0, 60)
    assert d.limit == "tokens" and d.requested == 60
    assert d.retry_after_s == pytest.approx(12.0)  # 20 tokens missing at 100/60 per second
    assert isinstance(rl.charge("k", TPM100, 12.0, 60), Allowed)


def test_a_request_larger_than_the_whole_minute_can_never_pass():
    rl = RateLimiter()
    d = rl.charge("k", TPM100, 0.0, 101)
    assert isinstance(d, Limited) and d.retry_after_s is None and d.retry_after_header is None
    err = rate_limited("ops", d.limit, d.limit_value, d.requested, d.retry_after_s)
    assert err.status == 429 and err.code == "rate_limit_exceeded" and "Request too large" in err.message
    assert err.param == "max_tokens"
    assert isinstance(rl.charge("k", TPM100, 0.0, 100), Allowed)  # nothing was taken by the refusal


def test_charge_is_all_or_nothing_and_reports_the_binding_limit():
    rl, both = RateLimiter(), Limits(requests_per_minute=10, tokens_per_minute=100)
    assert isinstance(rl.charge("k", both, 0.0, 90), Allowed)
    d = rl.charge("k", both, 0.0, 50)
    assert d.limit == "tokens" and d.retry_after_s == pytest.approx(24.0)
    ok = rl.charge("k", both, 0.0, 10)
    assert ok.remaining_requests == 8 and ok.remaining_tokens == 0  # the refused call took no request
    # requests run out first: the longer of the two waits is reported
    rl2, tight = RateLimiter(), Limits(requests_per_minute=1, tokens_per_minute=6000)
    rl2.charge("k", tight, 0.0, 1)
    d = rl2.charge("k", tight, 0.0, 5900)
    assert d.limit == "requests" and d.retry_after_s == pytest.approx(60.0)


@pytest.mark.parametrize("seconds, header", [(0.01, "1"), (0.99, "1"), (1.0, "1"), (12.0, "12"), (12.01, "13")])
def test_retry_after_header_is_whole_seconds_at_least_one(seconds, header):
    assert Limited("requests", 1, 1, seconds).retry_after_header == header


def test_keys_are_independent():
    rl = RateLimiter()
    for _ in range(3):
        rl.charge("a", RPM3, 0.0, 0)
    assert isinstance(rl.charge("a", RPM3, 0.0, 0), Limited)
    assert isinstance(rl.charge("b", RPM3, 0.0, 0), Allowed)


def test_refund_gives_back_but_never_above_capacity():
    rl = RateLimiter()
    both = Limits(requests_per_minute=3, tokens_per_minute=100)
    rl.charge("k", both, 0.0, 80)
    rl.refund("k", both, 0.0, tokens=80)
    ok = rl.charge("k", both, 0.0, 100)
    assert ok.remaining_tokens == 0 and ok.remaining_requests == 2
    rl.refund("k", both, 0.0, tokens=10**6, requests=50)
    assert rl.charge("k", both, 0.0, 0).remaining_requests == 2 and rl.charge("k", both, 0.0, 100).tokens == 100
    rl.refund("gone", both, 0.0, tokens=5)  # unknown key: nothing to give back, no state made
    assert "gone" not in rl._keys


def test_settle_refunds_unused_and_charges_debt():
    rl = RateLimiter()
    rl.charge("k", TPM100, 0.0, 100)  # estimate: prompt + max_tokens
    rl.settle("k", TPM100, 0.0, charged=100, used=30)
    assert rl.charge("k", TPM100, 0.0, 70).remaining_tokens == 0
    rl.settle("k", TPM100, 0.0, charged=70, used=120)  # the estimate was short by 50: debt
    d = rl.charge("k", TPM100, 0.0, 1)
    assert d.retry_after_s == pytest.approx(51 * 0.6)
    with pytest.raises(ValueError, match="used"):
        rl.settle("k", TPM100, 0.0, charged=1, used=-1)


def test_settle_after_the_bucket_was_pruned():
    rl = RateLimiter()
    rl.charge("k", TPM100, 0.0, 50)
    assert rl.prune(120.0) == 1 and len(rl) == 0
    rl.settle("k", TPM100, 120.0, charged=50, used=10)  # refund onto a full bucket: nothing to record
    assert len(rl) == 0
    rl.settle("k", TPM100, 120.0, charged=50, used=150)  # debt must not be lost: 100 more than charged
    d = rl.charge("k", TPM100, 120.0, 1)
    assert isinstance(d, Limited) and d.retry_after_s == pytest.approx(0.6)


def test_limit_change_resizes_the_bucket():
    rl = RateLimiter()
    rl.charge("k", Limits(tokens_per_minute=1000), 0.0, 100)
    d = rl.charge("k", Limits(tokens_per_minute=50), 0.0, 10)
    assert d.remaining_tokens == 40
    rl.settle("k", Limits(tokens_per_minute=50), 0.0, charged=10, used=0)
    assert rl.charge("k", Limits(tokens_per_minute=50), 0.0, 50).remaining_tokens == 0


def test_memory_is_bounded_full_buckets_go_first_then_least_recently_used():
    rl = RateLimiter(max_keys=3)
    rl.charge("debtor", TPM100, 0.0, 100)
    rl.settle("debtor", TPM100, 0.0, charged=100, used=200)  # in debt: still not full at t=60
    rl.charge("idle", TPM100, 0.0, 1)
    rl.charge("busy", TPM100, 59.0, 100)
    rl.charge("new", TPM100, 60.0, 1)  # at t=60 "idle" has refilled: it is dropped, nobody else
    assert set(rl._keys) == {"debtor", "busy", "new"}
    rl.charge("newer", TPM100, 60.0, 100)  # nothing full: the least recently used goes
    assert set(rl._keys) == {"busy", "new", "newer"}
    for i in range(1000):
        rl.charge(f"k{i}", RPM3, 60.0 + i / 1000, 0)
        assert len(rl) <= 3


def test_long_run_never_exceeds_burst_plus_refill():
    rl, lim = RateLimiter(), Limits(requests_per_minute=30)
    allowed = sum(isinstance(rl.charge("k", lim, t * 0.1, 0), Allowed) for t in range(6000))  # 600 s, 10/s
    assert allowed <= 30 + 30 * 600 / 60 + 1
    assert allowed >= 30 * 600 / 60  # and the limiter does let the full rate through


def test_headers_and_429_body():
    both = Limits(requests_per_minute=3, tokens_per_minute=100)
    ok = RateLimiter().charge("k", both, 0.0, 10)
    assert ratelimit_headers(both, ok) == {
        "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "90"}
    assert ratelimit_headers(RPM3, RateLimiter().charge("k", RPM3, 0.0, 10)) == {
        "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "2"}
    err = rate_limited("ops", "requests", 3, 1, 19.5)
    body = err.body()["error"]
    assert err.status == 429 and body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
    assert "'ops'" in body["message"] and "19.5s" in body["message"] and "RPM" in body["message"]


@pytest.mark.parametrize("chars, max_tokens, context, n, expected", [
    (0, 16, 1024, 1, 16), (4, 16, 1024, 1, 17), (5, 16, 1024, 1, 18), (400, 10, None, 3, 130),
    (400, None, 1024, 1, 1024), (400, None, 1024, 2, 100 + 2 * 924), (8000, None, 1024, 1, 2000),
    (40, None, None, 1, 10), (-5, 4, 1024, 0, 4),
])
def test_estimate_tokens(chars, max_tokens, context, n, expected):
    from serving.gate.ratelimit import estimate_tokens

    assert estimate_tokens(chars, max_tokens, context, n) == expected
