"""`tide status`: one table row per model from the ingress's `GET /tide/status` JSON.

`format_status` is pure (tested on fixed dicts); `fetch_status` is the only I/O. Fields the server does not
send (older servers) or sends as null print as "-".
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

COLUMNS: list[tuple[str, str]] = [
    ("model", "MODEL"), ("state", "STATE"), ("desired", "DESIRED"), ("running", "RUNNING"),
    ("replicas", "REPLICAS"), ("waiting", "QUEUED"), ("engine_running", "ACTIVE"), ("held", "HELD"),
    ("kv_cache_usage", "KV%"), ("tokens_per_s", "TOK/S"), ("ttft_p50_ms", "TTFT50ms"),
    ("expected_start_s", "START_S"),
]


class StatusError(RuntimeError):
    """The endpoint could not be reached or did not answer with Tide's status JSON."""


def cell(key: str, value: Any) -> str:
    """One value as table text: '-' when missing, percentages for the KV cache, no needless decimals."""
    if value is None:
        return "-"
    if key == "kv_cache_usage" and isinstance(value, (int, float)):
        return f"{100 * value:.0f}%"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.1f}"
    return str(value)


def status_rows(data: dict[str, Any]) -> list[list[str]]:
    models = data.get("models")
    if not isinstance(models, dict):
        raise StatusError("the status response has no `models` mapping")
    rows = []
    for name in sorted(models):
        info = models[name] if isinstance(models[name], dict) else {}
        rows.append([name] + [cell(key, info.get(key)) for key, _ in COLUMNS[1:]])
    return rows


def format_status(data: dict[str, Any]) -> str:
    """The whole table, columns padded to their widest cell; numbers right-aligned."""
    rows = status_rows(data)
    header = [title for _, title in COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    if not rows:
        lines.append("(no models)")
    return "\n".join(lines)


def status_url(url: str) -> str:
    """`tide status` accepts the endpoint as `tide serve` prints it (with /v1) or bare."""
    return url.rstrip("/").removesuffix("/v1") + "/tide/status"


def fetch_status(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    target = status_url(url)
    try:
        with urllib.request.urlopen(target, timeout=timeout_s) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise StatusError(f"{target} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise StatusError(f"cannot reach Tide at {target}: {reason}") from None
    except ValueError:
        raise StatusError(f"{target} did not answer with JSON (is this a Tide endpoint?)") from None
