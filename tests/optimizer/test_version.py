"""One version: optimizer/__init__.py holds it; the package metadata, the command line and the daemon report it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from hatchling.metadata.core import ProjectMetadata
from hatchling.plugin.manager import PluginManager

from optimizer import __version__
from optimizer.app import VERSION

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_takes_its_version_from_the_package() -> None:
    """pyproject.toml writes no version of its own; the build reads optimizer/__init__.py."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "optimizer/__init__.py"
    assert ProjectMetadata(str(ROOT), PluginManager()).version == __version__


def test_the_command_line_prints_the_version() -> None:
    """``cctv-optimizer --version`` and ``cctv-optimizer version`` print it, as the installed command too."""
    script = Path(sys.executable).parent / "cctv-optimizer"
    commands = [[sys.executable, "-m", "optimizer.cli"]] + ([[str(script)]] if script.exists() else [])
    for command in commands:
        for args in (["--version"], ["version"]):
            done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, check=False)
            assert (done.returncode, done.stdout.strip()) == (0, __version__), done.stderr


def test_the_daemon_and_the_api_description_state_the_same_version() -> None:
    """The daemon's own version (logged at start, in build_info) and contrib/openapi.yaml's agree with it."""
    assert __version__ == VERSION
    spec = yaml.safe_load((ROOT / "contrib" / "openapi.yaml").read_text(encoding="utf-8"))
    assert str(spec["info"]["version"]) == __version__
