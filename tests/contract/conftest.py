"""Contract checks run only against a real backend; without one every check is skipped with the reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.contract.real import BadSetup, NotConfigured, RealBackend


@pytest.fixture
def real() -> Iterator[RealBackend]:
    """The real backend named by the environment; after the check, its log must show no SQLITE_BUSY, no 429 to
    the daemon and no refused login."""
    try:
        backend = RealBackend.from_environ()
    except NotConfigured as exc:
        pytest.skip(f"no real backend: {exc}")
    except BadSetup as exc:
        pytest.fail(str(exc))
    mark = backend.log_mark()
    yield backend
    problems = backend.log_problems(mark)
    assert problems == [], f"the backend logged: {problems[:5]}"
