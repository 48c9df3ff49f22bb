"""Simulator inputs and outputs: traces (built-in and CSV, with clear errors), profiles, histograms, the CLI."""

import json
import math

import numpy as np
import pytest

from autoscale.sim import cli
from autoscale.sim.profile import Profile, derive_gpu_profile, h100_llama3_8b, h100_llama3_70b_tp4, load_profile
from autoscale.sim.stats import Histogram
from autoscale.sim.traces import TraceConfig, TraceError, builtin_trace, load_trace, rate_curve, read_csv_trace

CFG = TraceConfig(duration_s=86_400, users=3600, requests_per_user_per_h=1, trough_fraction=0.25)  # peak 1 req/s


def test_builtin_rate_curves():
    t = np.array([0.0, 43_200.0])
    assert list(rate_curve("diurnal", CFG, t)) == pytest.approx([0.25, 1.0])
    fc = CFG.model_copy(update={"flash_at_s": 100, "flash_duration_s": 50, "flash_multiplier": 4})
    assert list(rate_curve("flash-crowd", fc, np.array([99.0, 100.0, 149.0, 150.0]))) == [0.25, 1, 1, 0.25]
    assert list(rate_curve("poisson", CFG, t)) == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown trace 'zipf'"):
        rate_curve("zipf", CFG, t)


def test_builtin_trace_is_poisson_with_the_right_total_and_seeded():
    tr = builtin_trace("diurnal", CFG, dt=10.0)
    expected = 86_400 * (0.25 + 0.75 / 2)  # mean of the curve
    assert len(tr.arrivals) == 8640 and tr.total == pytest.approx(expected, rel=0.02)
    assert np.array_equal(tr.arrivals, builtin_trace("diurnal", CFG, dt=10.0).arrivals)


def test_csv_trace_is_binned_into_ticks(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("timestamp,prompt_tokens,output_tokens\n100,10,20\n100.4,30,40\n\n101.2,5,6\n")
    tr = read_csv_trace(p, dt=0.5)
    assert list(tr.arrivals) == [2, 0, 1] and tr.prompt_tokens[0] == 20 and tr.output_tokens[2] == 6
    assert tr.prompt_tokens[1] == pytest.approx(15)  # empty tick: the overall mean


@pytest.mark.parametrize("body, msg", [
    ("time,prompt,output\n1,2,3\n", "line 1: header must be timestamp,prompt_tokens,output_tokens"),
    ("timestamp,prompt_tokens,output_tokens\n1,2,3\n2,x,3\n", "line 3, column prompt_tokens: not a number: 'x'"),
    ("timestamp,prompt_tokens,output_tokens\n1,2\n", "line 2: expected 3 columns, got 2"),
    ("timestamp,prompt_tokens,output_tokens\n1,2,0\n", "line 2, column output_tokens: must be a finite number >= 1"),
    ("timestamp,prompt_tokens,output_tokens\n-1,2,3\n", "line 2, column timestamp: must be a finite number >= 0"),
    ("timestamp,prompt_tokens,output_tokens\nnan,2,3\n", "line 2, column timestamp"),
    ("timestamp,prompt_tokens,output_tokens\n", "no requests"),
    ("", "line 1: header"),
])
def test_bad_csv_names_file_line_and_column(tmp_path, body, msg):
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(TraceError) as e:
        read_csv_trace(p, 1.0)
    assert str(p) in str(e.value) and msg in str(e.value)


def test_missing_file_and_unknown_name():
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace("/nonexistent/x.csv", CFG, 1.0)
    with pytest.raises(TraceError, match="unknown trace 'burst'"):
        load_trace("burst", CFG, 1.0)


def test_profiles_load_interpolate_and_explain_themselves(tmp_path):
    cpu = load_profile("cpu-tiny")
    assert cpu.max_num_seqs == 16 and cpu.assumptions and cpu.kv_cache_tokens > 0
    h = load_profile("h100-llama3-8b")
    assert h.tpot(1) == pytest.approx(0.004 + 16.06e9 / (3.35e12 * 0.7) + 1000 * 131072 / (3.35e12 * 0.7), rel=1e-6)
    assert h.tpot(256) > h.tpot(1) and h.kv_cache_tokens == pytest.approx((72e9 - 16.06e9) / 131072, rel=1e-3)
    assert json.loads((load_profile.__globals__["PROFILES_DIR"] / "h100-llama3-8b.json").read_text()) == \
        json.loads(json.dumps(h100_llama3_8b()))  # the file is what the derivation says
    p = Profile(name="p", batch=[1, 4], tpot_s=[0.01, 0.02], ttft_s=[0.1, 0.2], profile_prompt_tokens=10,
                prefill_tokens_per_s=100, max_num_seqs=4, max_num_batched_tokens=64, kv_cache_tokens=100,
                cold_start_s=5)
    assert p.tpot(2.5) == pytest.approx(0.015) and p.tpot(100) == 0.02
    assert p.ttft(1, 110) == pytest.approx(1.1)  # 100 prompt tokens beyond the profiled ones at 100 tok/s
    assert p.scaled(2).tpot(1) == pytest.approx(0.02)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"batch": [4, 1], "tpot_s": [1, 1], "ttft_s": [1, 1]}))
    with pytest.raises(ValueError, match="bad.json: invalid profile"):
        load_profile(bad)
    with pytest.raises(ValueError, match="profile 'a100' not found .*cpu-tiny"):
        load_profile("a100")
    assert derive_gpu_profile("x", 1e12, 1e9, 1e3, 1e15, 1e9, 1e10)["kv_cache_tokens"] == 8_000_000


def test_measured_gpu_profile_loads_and_matches_its_raw_numbers(tmp_path):
    """h100-llama3-8b-measured.json (benchmarks/gpu_profile.py on an H100) is valid and rebuilds from its raw data."""
    import importlib.util

    root = load_profile.__globals__["PROFILES_DIR"].parents[1]
    spec = importlib.util.spec_from_file_location("gpu_profile", root / "benchmarks" / "gpu_profile.py")
    gp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gp)
    m = load_profile("h100-llama3-8b-measured")
    assert m.batch == load_profile("h100-llama3-8b").batch and m.max_num_seqs == 256
    assert all(a < b for a, b in zip(m.tpot_s, m.tpot_s[1:]))  # decode slows as the batch grows
    assert all(f > t for f, t in zip(m.ttft_s, m.tpot_s)) and "not vLLM" in m.description
    raw = json.loads((root / "autoscale" / "profiles" / "h100-llama3-8b-measured.json").read_text())
    rebuilt = gp.build_profile(raw["measured"], "2026-11-25", 512, 0.9, 90.0)
    assert json.loads(json.dumps(rebuilt)) == raw  # the file is what the script writes from its measurements


def test_histogram_percentiles_are_within_bin_resolution():
    rng = np.random.default_rng(0)
    v = rng.lognormal(-3, 1, 100_000)
    h = Histogram()
    h.add(v[:50_000], 1.0)
    h.add(v[50_000:], np.ones(50_000))
    for q in (50, 90, 99):
        assert h.percentile(q) == pytest.approx(np.percentile(v, q), rel=0.02)
    assert h.share_at_most(float(np.median(v))) == pytest.approx(50_000, rel=0.02)
    assert Histogram().percentile(50) is None
    h.add(1e9, 5)  # past the last edge: clamped, not lost
    assert h.total == pytest.approx(100_005)


def test_cli_prints_a_table_and_writes_the_plot(tmp_path, capsys):
    png = tmp_path / "sim.png"
    rc = cli.main(["flash-crowd", "--replicas-max", "8", "--users", "400", "--duration-s", "900",
                   "--set", "upscale_delay_s=1", "--png", str(png), "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "| tide | flash-crowd |" in out and "| serve-default | flash-crowd |" in out
    assert png.stat().st_size > 10_000
    rows = json.loads((tmp_path / "s.json").read_text())
    assert {r["policy"] for r in rows} == {"tide", "serve-default"} and all(r["requests"] > 0 for r in rows)


@pytest.mark.parametrize("args, msg", [
    (["{csv}"], "line 2, column output_tokens: not a number"),
    (["poisson", "--set", "smoothing=7"], "smoothing"),
    (["poisson", "--set", "nokey"], "expected KEY=VALUE"),
    (["poisson", "--profile", "tpu"], "profile 'tpu' not found"),
    (["poisson", "--profile", "h100-llama3-70b-tp4", "--gpus-per-node", "2"],
     "a replica of 4 GPUs does not fit a node of 2 (gpus_per_node)"),
])
def test_cli_bad_input_is_one_clear_message(tmp_path, capsys, args, msg):
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp,prompt_tokens,output_tokens\n0,1,many\n")
    rc = cli.main([a.format(csv=csv) for a in args] + ["--png", ""])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and msg in err and "Traceback" not in err


def test_cli_registers_simulate_on_a_parent_parser():
    import argparse

    p = argparse.ArgumentParser()
    cli.add_parser(p.add_subparsers(dest="cmd"))
    a = p.parse_args(["simulate", "diurnal", "--policy", "tide", "--replicas-max", "3"])
    assert a.fn is cli.run and a.policy == ["tide"] and a.replicas_max == 3 and math.isclose(a.dt, 1.0)


def test_tensor_parallel_profile_is_its_derivation_and_a_replica_is_its_group():
    big = load_profile("h100-llama3-70b-tp4")
    assert json.loads((load_profile.__globals__["PROFILES_DIR"] / "h100-llama3-70b-tp4.json").read_text()) == \
        json.loads(json.dumps(h100_llama3_70b_tp4()))
    assert big.gpus_per_replica == 4 and load_profile("h100-llama3-8b").gpus_per_replica == 1
    # 4 GPUs' bandwidth over 141 GB of weights, plus the all-reduces: slower per token than the 8B on one GPU
    assert big.tpot(1) == pytest.approx(0.004 + 0.0024 + (141.1e9 + 1000 * 327680) / (4 * 3.35e12 * 0.7), rel=1e-6)
    assert big.tpot(1) > load_profile("h100-llama3-8b").tpot(1)
    assert big.kv_cache_tokens == pytest.approx((0.9 * 320e9 - 141.1e9) / 327680, rel=1e-3)
    assert any("all-reduce" in a for a in big.assumptions)


def test_fleet_placement_counts_gpus_per_replica_per_node_and_price():
    from autoscale.sim.fleet import FleetConfig, placement

    big, small = load_profile("h100-llama3-70b-tp4"), load_profile("h100-llama3-8b")
    assert placement(FleetConfig(gpus_per_node=8, price_per_gpu_h=2.5), big) == (4, 2, 10.0)
    assert placement(FleetConfig(gpus_per_node=8, price_per_gpu_h=2.5), small) == (1, 8, 2.5)
    assert placement(FleetConfig(), small) == (1, 8, 2.5)  # the old fields, unchanged
    assert placement(FleetConfig(gpus_per_replica=2, replicas_per_node=3), small) == (2, 3, 2.5)
    with pytest.raises(ValueError, match="does not fit a node of 2"):
        placement(FleetConfig(gpus_per_node=2), big)


def test_cli_reports_gpu_hours_of_a_tensor_parallel_fleet(tmp_path, capsys):
    rc = cli.main(["poisson", "--profile", "h100-llama3-70b-tp4", "--policy", "tide", "--replicas-max", "4",
                   "--users", "200", "--duration-s", "600", "--gpus-per-node", "8", "--price-per-gpu-h", "2",
                   "--png", "", "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "of 4 GPU(s), 2 per node" in out and "| GPU-h |" in out
    row = json.loads((tmp_path / "s.json").read_text())[0]
    assert row["gpu_h"] == pytest.approx(4 * row["replica_h"]) and row["cost_usd"] == pytest.approx(2 * row["gpu_h"])
