"""The replica start-time tracker on a fake clock: samples, cancelled starts, several levels, EWMA."""

from autoscale.startup import measured_start_s, track_start


def feed(obs, state=None, alpha=0.5):
    for now, target, running in obs:
        state = track_start(state, now, target, running, alpha)
    return state


def test_no_sample_until_a_replica_starts():
    st = feed([(0, 1, 1), (1, 2, 1), (5, 2, 1)])
    assert measured_start_s(st) is None and st["pending"] == [[2, 2, 1.0]]


def test_one_start_is_timed_from_target_rise_to_running():
    st = feed([(0, 1, 1), (10, 2, 1), (20, 2, 1), (42, 2, 2)])
    assert measured_start_s(st) == 32 and st["samples"] == 1 and st["pending"] == []


def test_several_levels_each_timed_from_their_own_rise():
    st = feed([(0, 2, 1), (10, 4, 1), (30, 4, 3), (50, 4, 4)])
    # level 2: 30 s, level 3: 20 s (rose at 10), then level 4: 40 s; EWMA(0.5): 30 -> 25 -> 32.5
    assert st["samples"] == 3 and measured_start_s(st) == 32.5


def test_a_cancelled_start_is_not_a_sample():
    st = feed([(0, 1, 1), (1, 3, 1), (5, 1, 1), (100, 1, 1)])
    assert measured_start_s(st) is None and st["pending"] == []
    st = feed([(200, 2, 1), (230, 2, 2)], st)
    assert measured_start_s(st) == 30  # the new rise restarts the clock; the old one is gone


def test_ewma_smooths_successive_starts_and_scale_down_adds_nothing():
    st = feed([(0, 2, 1), (40, 2, 2), (100, 1, 2), (101, 1, 1), (200, 2, 1), (220, 2, 2)])
    assert st["samples"] == 2 and measured_start_s(st) == 30  # 0.5 * 20 + 0.5 * 40


def test_state_survives_a_round_trip_through_plain_data():
    import json

    st = feed([(0, 3, 1)])
    st = json.loads(json.dumps(st))
    assert measured_start_s(feed([(12, 3, 3)], st)) == 12


def test_a_thousand_replicas_started_together_are_one_run_and_count_once_each():
    st = feed([(0, 1, 1), (5, 1001, 1)])
    assert st["pending"] == [[2, 1001, 5.0]]
    st = feed([(35, 1001, 501)], st)  # half of them up after 30 s
    assert st["samples"] == 500 and measured_start_s(st) == 30 and st["pending"] == [[502, 1001, 5.0]]
    st = feed([(65, 1001, 1001)], st)  # the rest after 60 s: the EWMA moves all the way to 60 (500 samples)
    assert st["samples"] == 1000 and abs(measured_start_s(st) - 60) < 1e-9 and st["pending"] == []


def test_a_replica_that_dies_is_timed_again_from_its_death():
    st = feed([(0, 3, 3), (10, 3, 2)])  # one of three died: level 3 pending from t=10
    assert st["pending"] == [[3, 3, 10.0]]
    assert measured_start_s(feed([(40, 3, 3)], st)) == 30
