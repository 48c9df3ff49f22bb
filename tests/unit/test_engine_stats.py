from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")
from serving.observability.engine_stats import EngineStats  # noqa: E402


def test_snapshot_follows_scheduler_and_clips_to_unfinished():
    s = EngineStats()
    s.record(SimpleNamespace(num_waiting_reqs=5, num_running_reqs=8, kv_cache_usage=0.7), None)
    assert s.snapshot(13) == {"tide_waiting": 5.0, "tide_running": 8.0, "tide_kv_cache_usage": 0.7,
                              "tide_finish_rate": 0.0}
    # everything finished after the last report: no phantom queue
    assert s.snapshot(0) == {"tide_waiting": 0.0, "tide_running": 0.0, "tide_kv_cache_usage": 0.0,
                             "tide_finish_rate": 0.0}
    # new requests admitted by the frontend but not yet scheduled count as waiting
    assert s.snapshot(20)["tide_waiting"] == 12.0
    s.record(None, None)  # steps without scheduler stats keep the last values
    assert s.snapshot(13)["tide_running"] == 8.0
