"""What the Makefile's targets install: ``make demo`` only the daemon and the stand-in backend, ``make test`` more."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def dry_run(target: str, venv: Path) -> str:
    """The commands ``make -n TARGET`` would run for a fresh virtualenv at ``venv``."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        [make, "-n", "-C", str(ROOT), target, f"VENV={venv}"], capture_output=True, text=True, timeout=60, check=True
    )
    return proc.stdout


def test_demo_installs_no_test_or_lint_tools(tmp_path: Path) -> None:
    """A fresh `make demo` installs the package alone (no pytest, schemathesis, ruff or mypy), then runs the demo."""
    commands = dry_run("demo", tmp_path / "venv")
    installs = [line for line in commands.splitlines() if " install " in line]
    assert any(line.rstrip().endswith("install --quiet -e .") for line in installs), installs
    assert not any("[" in line for line in installs), installs  # no extras: .[test,lint] is what `make test` adds
    assert "-m testbed.demo" in commands


def test_test_still_installs_the_test_extras(tmp_path: Path) -> None:
    """`make test` installs the test and lint extras before running pytest."""
    commands = dry_run("test", tmp_path / "venv")
    assert "install --quiet -e '.[test,lint]'" in commands
    assert "-m pytest" in commands
