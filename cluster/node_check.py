"""Is this node's Python already a Tide install of the synced source? (run by setup-node.sh, before Tide is
importable, so it uses the standard library and, where present, `packaging`).

`ray up` runs the setup commands on every launch, and the install is ~4 GB: a node that already has the same
Tide (same version, same source files, its dependencies at the versions pyproject.toml asks, the engine's vLLM
build among them) skips it.
Exit 0 and one line saying why when nothing needs installing; exit 1 and the reason otherwise.
Usage: python node_check.py SRC ENGINE   (ENGINE: cpu or gpu, the pyproject extra)
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import re
import sys
from pathlib import Path

PACKAGES = ("serving", "autoscale", "cluster")  # what the wheel ships (pyproject.toml)


def tree_digest(root: Path) -> str:
    """A digest of the shipped source files under `root` (paths and bytes; bytecode caches left out)."""
    h = hashlib.sha256()
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def unmet(requirements: list[str], version_of=None) -> list[str]:
    """The requirements this Python does not satisfy: missing, or at a version outside the specifier."""
    version_of = version_of or _installed_version
    out = []
    for req in requirements:
        try:
            from packaging.requirements import Requirement
            r = Requirement(req)
            name, spec = r.name, r.specifier
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                continue
        except ImportError:  # no packaging here: check that it is installed at all
            name, spec = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0], None
        have = version_of(name)
        if have is None:
            out.append(f"{name} (not installed)")
        elif spec is not None and not spec.contains(have, prereleases=True):
            out.append(f"{name}{spec} (has {have})")
    return out


def _installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def wanted_requirements(pyproject: dict, engine: str) -> list[str]:
    """The requirements an install of `SRC[engine]` asks for: the base list plus the engine's extra."""
    project = pyproject.get("project", {})
    return list(project.get("dependencies", [])) + list(project.get("optional-dependencies", {}).get(engine, []))


def problem(src: Path, engine: str) -> str | None:
    """Why `src` must be (re)installed here, or None when this Python already has exactly it."""
    import tomllib

    pyproject = tomllib.loads((src / "pyproject.toml").read_text())
    want = pyproject["project"]["version"]
    try:
        have = md.version("tide-serve")
    except md.PackageNotFoundError:
        return "tide-serve is not installed"
    if have != want:
        return f"tide-serve {have} is installed, the synced source is {want}"
    spec = importlib.util.find_spec("serving")
    if spec is None or not spec.submodule_search_locations:
        return "the serving package is not importable"
    installed = Path(next(iter(spec.submodule_search_locations))).parent
    if installed.resolve() != src.resolve() and tree_digest(installed) != tree_digest(src):
        return f"the installed source ({installed}) differs from {src}"
    missing = unmet(wanted_requirements(pyproject, engine))
    if missing:
        return f"not installed as {src / 'pyproject.toml'} asks: {', '.join(missing)}"
    return None


def main(argv: list[str]) -> int:
    src, engine = Path(argv[0]).expanduser(), argv[1]
    why = problem(src, engine)
    if why:
        print(f"setup-node: installing tide-serve[{engine}] from {src}: {why}")
        return 1
    print(f"setup-node: tide-serve {md.version('tide-serve')} [{engine}] and its dependencies are installed and match "
          f"{src}: nothing to install (TIDE_REINSTALL=1 installs anyway)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
