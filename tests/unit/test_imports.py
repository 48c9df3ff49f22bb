"""The one-way import rule (../shared/ARCHITECTURE.md), read off the source: every `import` statement, lazy ones
inside functions included, since a lazy import is still an arrow (it only hides a circle until run time)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serving", "autoscale", "cluster")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The names an import statement brings in, absolute (a `from X import name` may name a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".")
        if MODULES[module].name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [f"{prefix}.{a.name}" for a in node.names] + [prefix]


def _owner(name: str) -> str | None:
    """The project module `name` is or lies in (None for third-party names)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def imports(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(project modules, third-party top-level packages) that `module` imports anywhere in its source."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in _targets(module, node):
                owner = _owner(name)
                if owner is None:
                    theirs.add(name.partition(".")[0])
                elif owner != module:
                    ours.add(owner)
    ours.discard(module)
    return frozenset(ours), frozenset(theirs)


def reach(module: str) -> set[str]:
    """Every project module `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for dep in imports(todo.pop())[0]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def third_party(module: str) -> set[str]:
    """Third-party packages `module` imports, directly or through project modules."""
    return set().union(*(imports(m)[1] for m in {module} | reach(module)))


def _in(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_the_walk_sees_lazy_imports_and_submodules():
    # a lazy import inside a function and a `from . import name` of a submodule both count as arrows
    assert "serving.replica.http_server" in imports("serving.replica.base")[0]
    assert "serving.replica.embeddings" in imports("serving.deployments")[0]
    assert "vllm" in imports("serving.replica.base")[1] and "ray" in imports("serving.replica.base")[1]


def test_no_circles():
    circles = sorted(m for m in MODULES if m in reach(m))
    assert not circles, {m: sorted(d for d in imports(m)[0] if m in reach(d)) for m in circles}


def test_autoscale_imports_serving_only_in_its_serve_hook():
    allowed = {"autoscale.serve_policy"}  # the adapter between Serve's policy hook and the pure policy
    bad = {m: sorted(d for d in imports(m)[0] if _in(d, "serving"))
           for m in MODULES if _in(m, "autoscale") and m not in allowed}
    assert not {m: d for m, d in bad.items() if d}


def test_the_simulator_never_imports_ray():
    bad = {m: sorted(third_party(m) & {"ray"}) for m in MODULES if _in(m, "autoscale.sim")}
    assert not {m: d for m, d in bad.items() if d}


@pytest.mark.parametrize("room,never", [("serving.front", "serving.replica"), ("serving.replica", "serving.front")])
def test_the_front_and_the_replica_never_import_each_other(room, never):
    bad = {m: sorted(d for d in imports(m)[0] if _in(d, never)) for m in MODULES if _in(m, room)}
    assert not {m: d for m, d in bad.items() if d}


@pytest.mark.parametrize("module", ["serving.sdk", "serving.sdk.http", "serving.sdk.wire", "serving.sdk.errors",
                                    "cluster.build"])
def test_clients_and_yaml_writers_never_reach_the_engine(module):
    reached = reach(module)
    assert not any(_in(m, "serving.replica") for m in reached), sorted(reached)


@pytest.mark.parametrize("module", ["autoscale.policy", "autoscale.load", "autoscale.routing", "autoscale.startup",
                                    "autoscale.controller", "serving.gate.admission", "serving.gate.auth",
                                    "serving.gate.ratelimit", "serving.gate.guard", "serving.errors", "serving.faults",
                                    "serving.coldstart", "serving.protocol", "serving.placement", "serving.rollout",
                                    "serving.validation", "serving.vllm_errors", "serving.observability.metrics",
                                    "serving.observability.prometheus"])
def test_pure_decisions_import_no_ray_vllm_or_web_framework(module):
    assert not third_party(module) & {"ray", "vllm", "fastapi", "starlette", "uvicorn", "torch"}, third_party(module)
