"""Per-client rate limits: fixed windows, 429 with Retry-After, classes, CF-Connecting-IP, the whitelist."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from testbed.harness import TestbedFactory, TestbedProcess

# --rate-limit-scale 0.05: default 5/min, admin 3/min, auth 2/min (round(30 * 0.05) = 2).
DEFAULT_LIMIT, ADMIN_LIMIT, AUTH_LIMIT = 5, 3, 2


@pytest.fixture(scope="module")
def tb(make_testbed: TestbedFactory) -> TestbedProcess:
    """A testbed with tiny limits."""
    return make_testbed("--rate-limit-scale", "0.05", "--login-delay-scale", "0")


@pytest.fixture(autouse=True)
def clean(tb: TestbedProcess) -> Iterator[None]:
    """Each test starts with empty request windows."""
    tb.scenario("reset")
    yield


def test_default_limit_answers_429_with_retry_after(tb: TestbedProcess) -> None:
    """The request after the limit gets 429, a Retry-After in seconds and a JSON body."""
    for expected_remaining in range(DEFAULT_LIMIT - 1, -1, -1):
        answer = tb.request("GET", "/api/areas/public")
        assert answer.status == 200
        assert answer.header("x-ratelimit-limit") == str(DEFAULT_LIMIT)
        assert answer.header("x-ratelimit-remaining") == str(expected_remaining)
    refused = tb.request("GET", "/api/areas/public")
    assert refused.status == 429
    retry_after = int(refused.header("Retry-After") or 0)
    assert 1 <= retry_after <= 60
    assert refused.json() == {
        "success": False,
        "message": "Too many requests. Please try again later.",
        "retryAfter": retry_after,
    }
    # X-RateLimit-Reset is the window's end in Unix seconds
    assert abs(int(refused.header("x-ratelimit-reset") or 0) - time.time() - retry_after) <= 2
    # The default class is shared: other default paths are refused too.
    assert tb.request("GET", "/api/cameras/active").status == 429
    # the window is keyed by CF-Connecting-IP when a proxy sends it
    assert tb.request("GET", "/api/cameras/active", headers={"CF-Connecting-IP": "203.0.113.5"}).status == 200


def test_health_and_control_routes_are_never_limited(tb: TestbedProcess) -> None:
    """Twenty calls to /health, heartbeats and /_testbed/state all succeed under a limit of five."""
    for _ in range(20):
        assert tb.request("GET", "/health").status == 200
        assert tb.request("GET", "/_testbed/state").status == 200
        assert tb.request("POST", "/api/viewer/heartbeat", json_body={"sessionId": "gone"}).status == 200


def test_auth_and_admin_classes_have_their_own_limits(tb: TestbedProcess) -> None:
    """/api/auth/* stops after 2, /api/admin/* after 3, independent of the default class."""
    session = tb.login()
    assert tb.request("POST", "/api/auth/refresh", json_body={"refreshToken": session.refresh_token}).status == 200
    refused = tb.request("POST", "/api/auth/refresh", json_body={"refreshToken": session.refresh_token})
    assert refused.status == 429
    assert refused.header("Retry-After") is not None
    for _ in range(ADMIN_LIMIT):
        assert tb.request("GET", "/api/admin/stats", token=session.token).status == 200
    assert tb.request("GET", "/api/admin/stats", token=session.token).status == 429
    assert tb.request("GET", "/api/cache/stats", token=session.token).status == 200


def test_rate_limited_login_is_not_a_lockout(tb: TestbedProcess) -> None:
    """A login refused by the auth limit carries Retry-After but does not count as a failed login."""
    for _ in range(AUTH_LIMIT):
        tb.request("POST", "/api/auth/login", json_body={"username": "admin", "password": "x"})
    limited = tb.request("POST", "/api/auth/login", json_body={"username": "admin", "password": "x"})
    assert limited.status == 429
    assert limited.json()["message"] == "Too many requests. Please try again later."
