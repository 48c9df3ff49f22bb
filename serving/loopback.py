"""Keep a local Tide on the loopback interface: Ray's servers and Serve's replica-to-replica gRPC included.

Why: Ray on Linux swaps a 127.0.0.1 node address for the host's routable one, and its gRPC servers then listen
on every interface; Serve 2.60 also binds each replica's inter-deployment gRPC server to `[::]`, whatever the
node address. A single-machine `tide serve` should expose nothing but the port the user asked for. The decisions
live here; the wrap of Serve's gRPC bind is in serving/patches/ray_loopback.py.
"""

from __future__ import annotations

import ipaddress
import os
import socket

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.0.0.1)."""
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return ip == "localhost"
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def loopback_only() -> None:
    """Before starting a local Ray: tell it no other node will join, so 127.0.0.1 stays the node address.
    Ray reads the variable at import, so the already-imported constant is set too; the raylet, the agents
    and every worker inherit the variable."""
    from ray._private import ray_constants

    os.environ.update(LOOPBACK_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import; the one Ray internal set outside patches/


def joining(address: str | None) -> None:
    """Before a driver joins the cluster at `address` ("auto": the one Ray finds): if that cluster lives on
    this host's loopback, Ray must not swap 127.0.0.1 for the routable address here either, or it dials a
    port that nothing listens on."""
    from ray._private.services import get_ray_address_from_environment, parse_address

    if address and "://" in address:
        return  # Ray Client: not a GCS address
    try:
        found = get_ray_address_from_environment("auto", None) if address in (None, "auto") else address
        parsed = parse_address(found) if found and found != "local" else None
    except Exception:
        return  # no cluster to find: ray.init says so itself
    if parsed and is_loopback(parsed[0]):
        loopback_only()


def replica_grpc_address(requested: str, node_ip: str) -> str:
    """Serve asks for `[::]:0`; on a loopback node, ask for the node address instead (clients dial
    node_ip:port, so they still connect). Elsewhere Serve's choice stands."""
    if requested.startswith("[::]:") and is_loopback(node_ip):
        host = f"[{node_ip}]" if ":" in node_ip else node_ip
        return f"{host}:{requested.rsplit(':', 1)[1]}"
    return requested


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
