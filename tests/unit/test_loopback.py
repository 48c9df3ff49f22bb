"""Which addresses count as loopback, and how Serve's replica gRPC address is kept on a loopback node."""

import pytest

from serving.loopback import is_loopback, replica_grpc_address


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "[::1]", "localhost"])
def test_loopback_addresses(ip):
    assert is_loopback(ip)


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2", "10.0.0.1", "", "example.com"])
def test_other_addresses(ip):
    assert not is_loopback(ip)


def test_serves_wildcard_becomes_the_loopback_node_address():
    assert replica_grpc_address("[::]:0", "127.0.0.1") == "127.0.0.1:0"
    assert replica_grpc_address("[::]:4321", "::1") == "[::1]:4321"


def test_routable_nodes_and_explicit_addresses_are_left_alone():
    assert replica_grpc_address("[::]:0", "192.0.2.2") == "[::]:0"  # a real cluster: other nodes must reach it
    assert replica_grpc_address("10.0.0.5:0", "127.0.0.1") == "10.0.0.5:0"


def test_joining_a_loopback_cluster_keeps_ray_on_loopback(monkeypatch):
    from ray._private import ray_constants

    from serving.loopback import joining

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")  # undone after the test, as is what joining sets
    joining("10.1.2.3:6379")
    joining("ray://127.0.0.1:10001")
    assert ray_constants.ENABLE_RAY_CLUSTER is True  # a remote cluster or Ray Client: nothing changes
    joining("127.0.0.1:6379")
    assert ray_constants.ENABLE_RAY_CLUSTER is False
    import os

    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
