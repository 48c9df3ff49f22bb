"""A fix to Ray Serve 2.60 that keeps a local Tide's replicas on loopback (serving/loopback.py decides where).

Serve 2.60 binds each replica's inter-deployment gRPC server to `[::]`, whatever the node address
(`ray.serve._private.replica.add_port_to_grpc_server`, called after the replica's constructor):
`bind_replica_grpc_to_node` wraps it so that on a loopback node the server binds the node address.
tests/integration/test_loopback.py checks every listening socket of every Ray process; drop this when a Ray
upgrade passes that test without it. (The other Ray setting for loopback, `ENABLE_RAY_CLUSTER`, is a constant
`serving.loopback.loopback_only` sets beside its environment variable.)
"""

from __future__ import annotations

from ..loopback import replica_grpc_address


def bind_replica_grpc_to_node() -> None:
    """Called in each Tide replica's constructor, before Serve starts that replica's gRPC server."""
    import ray
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "_tide_loopback", False):
        return
    node_ip = ray.util.get_node_ip_address()

    def add_port(server, address):  # type: ignore[no-untyped-def]
        return original(server, replica_grpc_address(address, node_ip))

    add_port._tide_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port
