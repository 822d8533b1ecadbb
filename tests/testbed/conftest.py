"""Fixtures for the testbed's own tests: start testbed processes and tidy up after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.harness import TestbedFactory, TestbedProcess


@pytest.fixture(scope="module")
def make_testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedFactory]:
    """Start testbeds with given extra arguments; all are stopped when the module is done."""
    started: list[TestbedProcess] = []

    def factory(*args: str) -> TestbedProcess:
        process = TestbedProcess(tmp_path_factory.mktemp("testbed"), *args)
        started.append(process)
        return process

    yield factory
    for process in started:
        process.close()
