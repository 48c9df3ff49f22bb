"""The shipped examples run as-is against a live Tide (the session cluster), and `tide status` reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_chat_http_example(tide_url):
    r = _run(["examples/chat_http.py", "--url", tide_url + "/v1", "--max-tokens", "8", "--ignore-eos"])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("models: tiny") and "\nreply (8 tokens, length): " in out and "\nstreamed: " in out
    whole = out.split("\nreply (8 tokens, length): ", 1)[1].split("\nstreamed: ", 1)[0]
    streamed = out.split("\nstreamed: ", 1)[1].removesuffix("\n")
    assert whole and whole == streamed  # greedy: the same text both ways (it may hold newlines)


def test_chat_http_example_unknown_model(tide_url):
    r = _run(["examples/chat_http.py", "--url", tide_url, "--model", "nope"])
    assert r.returncode == 2 and "error: The model `nope` does not exist." in r.stderr


def test_async_completion_example(tide_url):
    r = _run(["examples/complete_async_http.py", "--url", tide_url, "--n", "3", "--max-tokens", "8"])
    assert r.returncode == 0, r.stderr
    assert sum(line.startswith("stream ") for line in r.stdout.splitlines()) == 3
    assert "3 streams x 8 tokens in" in r.stdout


def test_handle_example_attaches_to_the_cluster(tide_url):
    import ray

    address = ray.get_runtime_context().gcs_address  # this session's cluster, not any other Ray on the machine
    r = _run(["examples/chat_stream_handle.py", "--address", address, "--max-tokens", "8"])
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.startswith("ModelHandle('tiny'): ") and "[finish: length]" in r.stdout
    assert "completion: " in r.stdout
    r = _run(["examples/chat_stream_handle.py", "--address", address, "--model", "nope"])
    assert r.returncode == 2 and "does not exist (served: " in r.stderr


def test_tide_status_table(tide_url, tide_config):
    r = subprocess.run([sys.executable, "-m", "serving.cli", "status", "--url", tide_url + "/v1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["MODEL", "STATE", "DESIRED", "RUNNING", "REPLICAS"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(m.name for m in tide_config.models)
