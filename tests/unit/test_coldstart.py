from serving.coldstart import HoldGate, retry_after_s, update_start_estimate


def test_gate_caps_and_releases():
    g = HoldGate(2)
    assert g.try_hold() and g.try_hold() and not g.try_hold()
    g.release()
    assert g.try_hold()
    g.release(), g.release(), g.release()
    assert g.held == 0  # never negative


def test_retry_after_is_the_rest_of_the_expected_start():
    assert retry_after_s(30, 0) == 30
    assert retry_after_s(30, 29.5) == 1
    assert retry_after_s(30, 12.2) == 18
    assert retry_after_s(40, 100) == 10  # overdue: a quarter of the expected start
    assert retry_after_s(0, 5) == 1


def test_start_estimate_follows_observations():
    assert update_start_estimate(None, 20) == 20
    assert update_start_estimate(20, 40) == 30
