"""The simulator's policies: Serve's default rule against Ray's own code; Tide's is the production step()."""

import random
from types import SimpleNamespace

import pytest

from autoscale.policy import Load, PolicyConfig
from autoscale.controller import step
from autoscale.sim.policies import FleetView, ServeDefaultConfig, make_policy, serve_default


def test_serve_default_matches_ray_serve_on_a_fake_clock(monkeypatch):
    """Differential: Ray's wrapped default policy + bounds vs the pure re-implementation, 3,000 random ticks."""
    import ray.serve.autoscaling_policy as rsp
    from ray.serve.config import AutoscalingConfig

    clock = {"t": 1000.0}
    monkeypatch.setattr(rsp, "time", SimpleNamespace(time=lambda: clock["t"]))
    ray_policy = rsp._apply_autoscaling_config(rsp.replica_queue_length_autoscaling_policy)
    kw = dict(min_replicas=0, max_replicas=20, target_ongoing_requests=2, upscale_delay_s=3, downscale_delay_s=10,
              upscaling_factor=1.0, downscaling_factor=0.5)
    ray_cfg = AutoscalingConfig(**kw)
    ours = ServeDefaultConfig(**kw, look_back_period_s=1e-3)  # Serve averages before the policy: one sample here
    rng = random.Random(7)
    ray_state, our_state, target, running = {}, {}, 1, 1
    for _ in range(3000):
        clock["t"] += 0.5
        total = rng.choice([0.0, 0.0, rng.uniform(0, 5), rng.uniform(0, 60)])
        ctx = SimpleNamespace(current_num_replicas=running, total_num_requests=total, target_num_replicas=target,
                              config=ray_cfg, policy_state=dict(ray_state))
        want, ray_state = ray_policy(ctx)
        want = max(kw["min_replicas"], min(kw["max_replicas"], want))
        got, our_state = serve_default(FleetView(clock["t"], target, running, Load(), total), our_state, ours)
        assert got == want, (clock["t"], running, target, total)
        target = got
        running = target if rng.random() < 0.3 else running  # replicas come up some ticks later


def test_serve_default_averages_over_the_look_back_window():
    cfg = ServeDefaultConfig(max_replicas=50, upscale_delay_s=0, look_back_period_s=10)
    st = {}
    for t in range(10):
        n, st = serve_default(FleetView(float(t), 1, 1, Load(), 0.0), st, cfg)
    n, st = serve_default(FleetView(10.0, 1, 1, Load(), 40.0), st, cfg)
    assert n == 2  # one spike of 40 averaged with 9 zeros: 4 requests / 2 per replica


def test_tide_policy_in_the_sim_is_the_production_step():
    cfg = PolicyConfig(min_replicas=1, max_replicas=10, replica_capacity=8, upscale_delay_s=1)
    sim_policy = make_policy("tide", 1, 10, {"replica_capacity": 8, "upscale_delay_s": 1})
    rng = random.Random(3)
    a_state, b_state, target = {}, {}, 2
    for t in range(300):
        load = Load(demand=rng.uniform(0, 80), waiting=rng.uniform(0, 20), reporting=target, kv_sum=rng.random())
        view = FleetView(float(t), target, max(target - 1, 1), load, load.demand)
        n, a_state = sim_policy(view, a_state)
        d, b_state = step(cfg, b_state, float(t), target, max(target - 1, 1), load)
        assert n == d.replicas and a_state == b_state
        target = n


def test_fixed_and_unknown_policies():
    assert make_policy("fixed", 1, 7)(FleetView(0, 1, 1, Load(), 0), {})[0] == 7
    with pytest.raises(ValueError, match="unknown policy 'nope'.*tide"):
        make_policy("nope", 1, 2)
