"""The pure autoscaling policy on a fake clock: steady, ramp, burst, drain, zero, noise, dead replicas."""

import random

import pytest
from pydantic import ValidationError

from autoscale.policy import Action, PolicyConfig, ReplicaStats, decide, demand_of, replicas_for

CFG = PolicyConfig(min_replicas=1, max_replicas=8, replica_capacity=10, target_utilization=0.8,
                   target_waiting_per_replica=2, downscale_utilization=0.5, upscale_delay_s=2,
                   downscale_delay_s=30, smoothing=0.5, replica_start_s=10)


class Sim:
    """Feeds the policy per-replica stats every `step` seconds and applies its decisions at once."""

    def __init__(self, cfg=CFG, replicas=1, step=1.0):
        self.cfg, self.n, self.step, self.t, self.state = cfg, replicas, step, 0.0, None
        self.history = []

    def tick(self, demand: float, queued_outside: float = 0.0, stats=None):
        if stats is None:
            per = demand / self.n if self.n else 0.0
            cap = self.cfg.replica_capacity
            stats = [ReplicaStats(waiting=max(per - cap, 0), running=min(per, cap))] * self.n
        d = decide(self.t, self.n, stats, self.cfg, self.state, queued_outside)
        self.state, self.n = d.state, d.replicas
        self.history.append((self.t, d))
        self.t += self.step
        return d

    def run(self, demand: float, seconds: float):
        for _ in range(int(seconds / self.step)):
            self.tick(demand)
        return self.n

    def changes(self):
        return [d for _, d in self.history if d.action != Action.HOLD]


def test_steady_load_never_flaps():
    sim = Sim(replicas=3)
    sim.run(20, 600)  # 20 requests need ceil(20 / 8) = 3 replicas
    assert sim.n == 3 and sim.changes() == []


def test_steady_load_at_the_edges_of_the_dead_band_holds():
    # 3 replicas: scale up above 24 (3 x 10 x 0.8), down below 10 (2 x 10 x 0.5): anything between holds
    for demand in (10.5, 15, 24):
        sim = Sim(replicas=3)
        sim.run(demand, 300)
        assert sim.n == 3, demand


def test_burst_scales_up_after_upscale_delay_not_before():
    sim = Sim()
    sim.run(5, 10)
    assert sim.n == 1
    d = sim.tick(60)  # sudden burst: pressure starts
    assert d.action == Action.HOLD and "upscale_delay_s" in d.reason
    sim.tick(60)
    d = sim.tick(60)
    assert d.action == Action.UP and d.replicas == 5  # capped by max_step_up (4) from 1
    sim.run(60, 5)
    assert sim.n == 8  # 60 / 8 -> 8 replicas, reached in two steps


def test_ramp_is_anticipated_by_the_cold_start_projection():
    cfg = CFG.model_copy(update={"upscale_delay_s": 0})
    sim = Sim(cfg)
    ups = []
    for i in range(40):  # demand grows 1 request/s: a projection 10 s ahead asks for capacity earlier
        d = sim.tick(float(i))
        if d.action == Action.UP:
            ups.append((i, d.replicas))
    first_demand, first_n = ups[0]
    assert first_demand < 8  # one replica is enough until 8 requests; the projection scales before
    assert all(n * 8 >= demand for demand, n in ups)


def test_drain_scales_down_one_at_a_time_after_the_delay():
    sim = Sim(replicas=6)
    sim.run(0.5, 29)
    assert sim.n == 6  # not before downscale_delay_s
    sim.run(0.5, 2)
    assert sim.n == 5
    sim.run(0.5, 200)
    assert sim.n == 1  # min_replicas
    downs = [d for d in sim.changes()]
    assert all(d.action == Action.DOWN for d in downs)
    assert [d.replicas for d in downs] == [5, 4, 3, 2, 1]


def test_a_new_spike_resets_the_downscale_timer():
    sim = Sim(replicas=4)
    sim.run(1, 25)
    sim.tick(30)  # spike
    sim.run(1, 25)
    assert sim.n == 4


def test_scale_to_zero_after_idle_and_wake_on_demand():
    cfg = CFG.model_copy(update={"min_replicas": 0, "scale_to_zero_idle_s": 60})
    sim = Sim(cfg)
    sim.run(3, 5)
    sim.run(0, 59)
    assert sim.n == 1
    sim.run(0, 2)
    assert sim.n == 0 and sim.changes()[-1].action == Action.ZERO
    d = sim.tick(0, stats=[])
    assert d.replicas == 0 and d.action == Action.HOLD
    d = sim.tick(0, queued_outside=3, stats=[])  # requests wait at the handle: wake at once, no delay
    assert d.action == Action.WAKE and d.replicas == 1
    d = decide(sim.t, 0, [], cfg, sim.state, queued_outside=25)
    assert d.replicas == 4  # 25 / 8


def test_no_scale_to_zero_when_min_is_one():
    sim = Sim()
    sim.run(0, 10_000)
    assert sim.n == 1 and sim.changes() == []


def test_noisy_metrics_do_not_flap():
    rng = random.Random(0)
    sim = Sim(replicas=3)
    for _ in range(900):
        sim.tick(max(0.0, rng.gauss(16, 4)))  # mean needs 2-3 replicas; noise crosses neither threshold long
    assert len(sim.changes()) <= 1


def test_dead_replica_reports_nothing_and_adds_no_load():
    stats = [ReplicaStats(waiting=0, running=5), None]
    assert demand_of(stats, 0) == (5, 0, 1)
    d = decide(0, 2, stats, CFG, None)
    assert d.replicas == 2 and d.action == Action.HOLD


def test_all_replicas_silent_holds():
    d = decide(0, 3, [None, None, None], CFG, None)
    assert d.replicas == 3


def test_queue_pressure_scales_even_below_capacity_math():
    cfg = CFG.model_copy(update={"upscale_delay_s": 0, "replica_capacity": 100})
    # one replica with a queue of 10 (engine saturated, e.g. KV cache full) and 5 running
    d = decide(0, 1, [ReplicaStats(waiting=10, running=5)], cfg, None)
    assert d.replicas == 1  # 15 requests fit capacity 100: queue alone does not invent replicas
    cfg2 = CFG.model_copy(update={"upscale_delay_s": 0})
    d2 = decide(0, 1, [ReplicaStats(waiting=10, running=10)], cfg2, None)
    assert d2.action == Action.UP and d2.replicas == 3


def test_requests_not_yet_in_an_engine_count_as_demand():
    assert demand_of([ReplicaStats(waiting=0, running=2)], 8)[0] == 10


def test_bounds_are_enforced():
    assert decide(0, 0, [], CFG, None).replicas == 1  # below min
    assert decide(0, 12, [ReplicaStats()] * 12, CFG, None).replicas == 8  # above max
    cfg = CFG.model_copy(update={"upscale_delay_s": 0})
    assert decide(0, 8, [ReplicaStats(waiting=100, running=10)] * 8, cfg, None).replicas == 8


def test_replicas_for():
    assert replicas_for(0, CFG) == 0
    assert replicas_for(8, CFG) == 1
    assert replicas_for(8.01, CFG) == 2


def test_decisions_carry_reasons():
    d = decide(0, 1, [ReplicaStats(running=3)], CFG, None)
    assert d.reason and d.action == Action.HOLD


@pytest.mark.parametrize(
    "kw, msg",
    [({"min_replicas": 3, "max_replicas": 2}, "max_replicas (2) must be >= min_replicas (3)"),
     ({"downscale_utilization": 0.9}, "would flap"),
     ({"replica_capacity": 0}, "greater than 0")],
)
def test_config_checks(kw, msg):
    with pytest.raises(ValidationError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        PolicyConfig(**kw)
