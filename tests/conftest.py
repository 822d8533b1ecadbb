"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.harness import TestbedProcess
from tests.harness import Mount, running_testbed


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[TestbedProcess]:
    """A fresh testbed process with its own data directory."""
    with running_testbed(tmp_path / "testbed") as tb:
        yield tb


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """Mounts small tmpfs file systems (needs root and CAP_SYS_ADMIN, else the test is skipped); unmounts them."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
            # Still busy (a connection not closed yet): detach it now, the kernel frees it on the last close.
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)


@pytest.fixture
def open_tmp_path() -> Iterator[Path]:
    """A temporary directory other users can enter (pytest's own are 0700 all the way down), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="cctv-optimizer-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
