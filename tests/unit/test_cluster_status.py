"""`tide status` table formatting (pure)."""

import pytest

from cluster.status import StatusError, cell, format_status, status_rows, status_url

FULL = {"time": 1.0, "models": {
    "tiny": {"state": "running", "desired": 2, "running": 1, "replicas": 2, "held": 0, "expected_start_s": 20.0,
             "waiting": 3, "engine_running": 12, "kv_cache_usage": 0.256, "tokens_per_s": 1834.57,
             "ttft_p50_ms": 18.25},
    "big": {"state": "scaled_to_zero", "desired": 0, "running": 0, "replicas": 0, "held": 2,
            "expected_start_s": 95.4, "waiting": None, "engine_running": None, "kv_cache_usage": None,
            "tokens_per_s": None, "ttft_p50_ms": None}}}


def test_full_status_table():
    lines = format_status(FULL).splitlines()
    assert lines[0].split() == ["MODEL", "STATE", "DESIRED", "RUNNING", "REPLICAS", "QUEUED", "ACTIVE", "HELD",
                                "KV%", "TOK/S", "TTFT50ms", "START_S"]
    assert lines[1].split() == ["big", "scaled_to_zero", "0", "0", "0", "-", "-", "2", "-", "-", "-", "95.4"]
    assert lines[2].split() == ["tiny", "running", "2", "1", "2", "3", "12", "0", "26%", "1835", "18.2", "20"]


def test_todays_status_without_the_new_fields_prints_dashes():
    data = {"models": {"tiny": {"running": 1, "replicas": 1, "held": 0, "expected_start_s": 30.0}}}
    row = status_rows(data)[0]
    assert row == ["tiny", "-", "-", "1", "1", "-", "-", "0", "-", "-", "-", "30"]


def test_columns_align():
    lines = format_status(FULL).splitlines()
    # numbers are right-aligned, so every line ends at the same column; names and states left-aligned
    assert len({len(line) for line in lines}) == 1
    assert lines[1].index("scaled_to_zero") == lines[0].index("STATE") == lines[2].index("running")


def test_empty_and_bad_payloads():
    assert format_status({"models": {}}).endswith("(no models)")
    with pytest.raises(StatusError, match="no `models`"):
        format_status({"status": "ok"})


@pytest.mark.parametrize("key,value,text", [("kv_cache_usage", 1.0, "100%"), ("x", 3.0, "3"), ("x", 0.25, "0.2"),
                                            ("x", 250.4, "250"), ("x", True, "yes"), ("x", None, "-"),
                                            ("state", "starting", "starting")])
def test_cells(key, value, text):
    assert cell(key, value) == text


def test_status_url_accepts_v1():
    assert status_url("http://h:8000/v1/") == status_url("http://h:8000") == "http://h:8000/tide/status"
