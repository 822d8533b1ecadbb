"""Which request lines the health checks' reserve beyond the connection cap lets through."""

from __future__ import annotations

import pytest

from optimizer.connections import is_health_check


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"GET /health HTTP/1.1", True),
        (b"HEAD /health HTTP/1.1", True),
        (b"GET /health?verbose=1 HTTP/1.0", True),
        (b"GET /healthz HTTP/1.1", False),
        (b"GET /health/../optimizations HTTP/1.1", False),
        (b"POST /health HTTP/1.1", False),
        (b"GET /optimizations?limit=1000 HTTP/1.1", False),
        (b"get /health HTTP/1.1", False),
        (b"", False),
    ],
)
def test_only_get_or_head_health_passes(line: bytes, expected: bool) -> None:
    """GET or HEAD of /health, with or without a query; nothing else."""
    assert is_health_check(line) is expected
