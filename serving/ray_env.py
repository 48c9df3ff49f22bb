"""The environment every Ray process of a Tide node starts with (a module of its own, so that the YAML and
manifest writers in cluster/ get it without importing the deploy path and the engine behind it)."""

from __future__ import annotations

from .config import TideConfig


def serve_env(cfg: TideConfig) -> dict[str, str]:
    """Environment for every Ray process of a Tide node (read by Serve at import, so set before Ray starts).

    Throughput-optimized Serve: user code and the router on the replica's main loop, gRPC between
    deployments, buffered request logs; with `direct_ingress` the ingress replica itself listens on the
    public port (a one-port range), so requests skip the Serve proxy hop.
    """
    env = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # Fresh queue depth for the autoscaler (Serve's default pushes every 10 s).
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
        # A replica that failed its health check (dead or stuck engine) is stopped at once: draining it would
        # wait graceful_shutdown_timeout_s for requests that will never finish. The ingress retries them.
        "RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS": "1",
    }
    if cfg.server.direct_ingress:
        low, high = cfg.server.ingress_port_range()
        env.update({
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(low),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(high),
        })
        if cfg.server.front == "haproxy":  # HAProxy on the public port; replicas serve HTTP themselves
            env["TIDE_FRONT"] = "haproxy"
            # Serve holds a stopping direct-ingress replica open 30 s for an outside load balancer to notice;
            # Tide's fronts learn of the new ingress from the hub within about a second, and a refused
            # connection after this window is retried on the new one.
            env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "5"
    else:
        env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
    return env
