"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.harness import TestbedProcess
from tests.harness import running_testbed


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[TestbedProcess]:
    """A fresh testbed process with its own data directory."""
    with running_testbed(tmp_path / "testbed") as tb:
        yield tb
