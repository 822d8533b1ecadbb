"""Fixtures of the system tests: the project built once as a wheel, for staged installs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.staging import build_wheel, can_build_wheel


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel offline, with the build backend of the test environment."""
    reason = can_build_wheel()
    if reason is not None:
        print(reason)
        pytest.skip(reason)
    return build_wheel(tmp_path_factory.mktemp("wheel"))
