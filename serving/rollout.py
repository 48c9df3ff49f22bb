"""How a `tide deploy` onto a running app rolls: only what changed restarts, and new replicas start before old
ones stop.

Serve's imperative API (`serve.run`) gives every deployment a random code version on each call, so a redeploy
restarts every engine, changed or not. Tide names each deployment's version itself: a digest of what the replica
is built from (its init arguments and Tide's own source), so an unchanged model keeps its replicas and a changed
one rolls with Serve's surge (`max_surge_percent`: the replacement starts first, the old one drains).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

ROOTS = ("serving", "autoscale")  # Tide's code that runs in replicas


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 over Tide's installed source (an upgraded Tide rolls every replica)."""
    h = hashlib.sha256()
    base = Path(__file__).resolve().parent.parent
    for root in ROOTS:
        for path in sorted((base / root).rglob("*.py")):
            h.update(str(path.relative_to(base)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def code_version(*parts: Any) -> str:
    """A deployment's version: equal exactly when its init arguments and Tide's source are equal."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(source_digest().encode() + blob).hexdigest()[:16]


def versioned(deployment: Any, *parts: Any) -> Any:
    """`deployment` with the version `code_version(*parts)`. Serve removed `version` from the public
    `Deployment.options()` (2.x), but still honours it when passed with `_internal=True`; that flag also skips
    recording user-set option names, which only declarative overrides read, so options are set before this."""
    return deployment.options(version=code_version(*parts), _internal=True)
