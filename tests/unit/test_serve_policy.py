"""The Serve glue around the pure policy, on Ray Serve's own AutoscalingContext (no Ray running): a field Serve
renames or retypes fails here, not in a cluster."""

from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingContext

from autoscale.controller import FINISH, KV, RUNNING, STATE_KEY, WAITING, stats_from_metrics
from autoscale.serve_policy import TidePolicy

DEPLOYMENT = DeploymentID(name="model-x", app_name="tide")


def rid(name: str) -> ReplicaID:
    return ReplicaID(unique_id=name, deployment_id=DEPLOYMENT)


def ctx(n, metrics, total=0.0, state=None, now=100.0, target=None) -> AutoscalingContext:
    """Serve's context for `n` running replicas r0..r{n-1}; `metrics` {name: {"r0": value}} as Serve aggregates
    them (keyed by ReplicaID)."""
    return AutoscalingContext(
        deployment_id=DEPLOYMENT, deployment_name=DEPLOYMENT.name, app_name=DEPLOYMENT.app_name,
        current_num_replicas=n, target_num_replicas=n if target is None else target,
        running_replicas=[rid(f"r{i}") for i in range(n)], total_num_requests=total, total_queued_requests=None,
        aggregated_metrics={k: {rid(r): v for r, v in per.items()} for k, per in metrics.items()},
        raw_metrics=None, capacity_adjusted_min_replicas=0, capacity_adjusted_max_replicas=n + 8,
        policy_state=state or {}, last_scale_up_time=None, last_scale_down_time=None, current_time=now,
        config=None)


def test_stats_from_metrics_marks_silent_replicas():
    c = ctx(2, {WAITING: {"r0": 3.0}, RUNNING: {"r0": 5.0}, KV: {"r0": 0.5}, FINISH: {"r0": 2.5}})
    s = stats_from_metrics(c.aggregated_metrics, list(c.running_replicas))
    assert s[0].waiting == 3 and s[0].running == 5 and s[0].kv_cache_usage == 0.5 and s[1] is None
    assert s[0].finish_rate == 2.5
    assert stats_from_metrics(None, [rid("r0")]) == [None]


def test_policy_scales_up_on_engine_queue_and_keeps_state_under_its_key():
    p = TidePolicy(min_replicas=1, max_replicas=4, replica_capacity=4, upscale_delay_s=0)
    m = {WAITING: {"r0": 10.0}, RUNNING: {"r0": 4.0}}
    n, state = p(ctx(1, m, total=14))
    assert n == 4 and STATE_KEY in state
    n2, _ = p(ctx(4, {WAITING: {}, RUNNING: {}}, state=state, now=101))
    assert n2 == 4  # silent new replicas: hold, no flapping


def test_requests_queued_before_any_engine_wake_a_model_at_zero():
    p = TidePolicy(min_replicas=0, max_replicas=2, replica_capacity=4)
    n, _ = p(ctx(0, {}, total=3))
    assert n == 1


def test_replicas_still_starting_are_not_undone():
    """Regression: deciding against running replicas (1) while the target is 2 made Serve flap 2 -> 1 -> 2."""
    p = TidePolicy(min_replicas=1, max_replicas=2, replica_capacity=4, upscale_delay_s=0.5)
    m = {WAITING: {"r0": 12.0}, RUNNING: {"r0": 4.0}}
    state = {}
    targets = []
    target = 1
    for i in range(20):
        target, state = p(ctx(1, m, total=16, state=state, now=100 + i * 0.5, target=target))
        targets.append(target)
    assert targets[0] == 1 and targets[-1] == 2
    assert targets == sorted(targets)  # never back down while the new replica starts


def test_policy_measures_replica_start_and_keeps_it_in_state():
    from autoscale.controller import START_KEY

    p = TidePolicy(min_replicas=1, max_replicas=2, replica_capacity=4, upscale_delay_s=0)
    busy = {WAITING: {"r0": 12.0}, RUNNING: {"r0": 4.0}}
    n, state = p(ctx(1, busy, total=16, now=100))
    assert n == 2
    _, state = p(ctx(1, busy, total=16, state=state, now=101, target=2))  # second replica starting
    both = {WAITING: {"r0": 6.0, "r1": 6.0}, RUNNING: {"r0": 4.0, "r1": 4.0}}
    _, state = p(ctx(2, both, total=20, state=state, now=145, target=2))
    assert state[START_KEY]["ewma"] == 45 and state[START_KEY]["samples"] == 1
    assert STATE_KEY in state
