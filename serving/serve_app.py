"""Ray Serve application builder, so a Serve config file (`tide build`) deploys Tide without the `tide` CLI.

`serve run serve.yaml`, `serve deploy serve.yaml` and KubeRay's RayService import
`serving.serve_app:app_builder` and pass the Tide config (the same mapping as a Tide YAML file) as `args`.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from .app import build_app
from .config import parse_config


def app_builder(args: dict[str, Any]) -> Application:
    """Validate `args` as a Tide config (a bad field raises ConfigError naming it) and build the app."""
    return build_app(parse_config(args, source="serve config `args`"))
