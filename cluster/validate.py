"""Check a `ray up` cluster YAML offline with Ray's own validator, and say what is wrong with file and field.

Runs Ray's `prepare_config` (defaults, node types) then `validate_config` (Ray's JSON schema, which rejects
unknown keys). Needs no cloud credentials, so CI catches a typo before a user's launch does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ClusterConfigError(ValueError):
    """The cluster YAML is unreadable or Ray rejects it; the message names the file and the field."""


def field_path(path: Any) -> str:
    """A jsonschema error path as a dotted field name (`available_node_types.gpu.node_config`)."""
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(top level)"


def schema_message(source: str, err: Any) -> str:
    """Ray's schema message, prefixed with file and field; for unknown keys also where they may go."""
    where = field_path(err.absolute_path)
    msg = err.message
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        if allowed:
            msg += f" (allowed here: {', '.join(allowed)})"
    return f"{source}: invalid cluster config\n  {where}: {msg}"


def load_cluster_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ClusterConfigError(f"{p}: cannot read cluster config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ClusterConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ClusterConfigError(f"{p}: the top level must be a mapping (got {type(data).__name__})")
    return data


def validate_cluster_config(data: dict[str, Any], source: str = "<cluster>") -> dict[str, Any]:
    """Ray's own checks on a loaded YAML; returns the prepared config (with Ray's defaults filled in)."""
    import logging

    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # Ray's INFO notes on filled-in defaults

    provider = data.get("provider")
    if not isinstance(provider, dict) or "type" not in provider:
        raise ClusterConfigError(f"{source}: invalid cluster config\n  provider.type: is required")
    try:
        prepared = prepare_config(data)
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        raise ClusterConfigError(schema_message(source, e)) from None
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ClusterConfigError(f"{source}: invalid cluster config\n  {type(e).__name__}: {e}") from None
    except (Exception, SystemExit) as e:  # Ray's cli_logger.abort raises click's exception: still one message
        msg = getattr(e, "message", None) or str(e)
        raise ClusterConfigError(f"{source}: invalid cluster config\n  {msg}") from None
    return prepared


def validate_cluster_file(path: str | Path) -> dict[str, Any]:
    return validate_cluster_config(load_cluster_yaml(path), str(path))
