"""Login, refresh, tokens, lockout, CSRF double-submit and the API-key rule of the stand-in backend."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import sqlite3
from collections.abc import Iterator

import pytest

from testbed.harness import TestbedFactory, TestbedProcess, wait_until


@pytest.fixture(scope="module")
def tb(make_testbed: TestbedFactory) -> TestbedProcess:
    """One testbed for the module, with limits high enough for the number of logins made here."""
    return make_testbed("--rate-limit-scale", "10", "--cameras", "2", "--login-delay-scale", "0")


@pytest.fixture(autouse=True)
def clean(tb: TestbedProcess) -> Iterator[None]:
    """Each test starts without lockouts or counted requests."""
    tb.scenario("reset")
    yield


def jwt_parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    """Header and payload of a JWT (unverified)."""

    def decode(part: str) -> dict[str, object]:
        value: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return value

    header, payload, _ = token.split(".")
    return decode(header), decode(payload)


def test_login_returns_tokens_user_and_cookies(tb: TestbedProcess) -> None:
    """A good login answers the documented body and sets the token and refreshToken cookies."""
    answer = tb.request("POST", "/api/auth/login", json_body={"username": "admin", "password": tb.admin_password})
    assert answer.status == 200
    body = answer.json()
    assert body["success"] is True
    data = body["data"]
    assert data["user"] == {"id": 1, "username": "admin", "role": "admin"}
    assert answer.cookies["token"] == data["token"]
    assert answer.cookies["refreshToken"] == data["refreshToken"]
    header, payload = jwt_parts(data["token"])
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert payload["exp"] - payload["iat"] == 3600  # type: ignore[operator]
    _, refresh_payload = jwt_parts(data["refreshToken"])
    assert refresh_payload["exp"] - refresh_payload["iat"] == 7 * 24 * 3600  # type: ignore[operator]


def test_bad_credentials_are_401(tb: TestbedProcess) -> None:
    """A wrong password answers 401 with the backend's message."""
    answer = tb.request("POST", "/api/auth/login", json_body={"username": "admin", "password": "wrong"})
    assert answer.status == 401
    assert answer.json() == {"success": False, "message": "Invalid credentials"}


def test_missing_fields_are_400(tb: TestbedProcess) -> None:
    """A login without a password is Fastify's schema 400 (no ``success`` key), not a counted failure."""
    answer = tb.request("POST", "/api/auth/login", json_body={"username": "admin"})
    assert answer.status == 400
    assert answer.json() == {
        "statusCode": 400,
        "code": "FST_ERR_VALIDATION",
        "error": "Bad Request",
        "message": "body must have required property 'password'",
    }


def login_attempt_rows(tb: TestbedProcess) -> list[tuple[str, str, str, int]]:
    """login_attempts as the backend keeps them: (identifier, identifier_type, attempt_time, success)."""
    with contextlib.closing(sqlite3.connect(tb.database)) as conn:
        rows = conn.execute("SELECT identifier, identifier_type, attempt_time, success FROM login_attempts").fetchall()
    return [(str(a), str(b), str(c), int(d)) for a, b, c, d in rows]


def test_five_failures_lock_the_user_out(tb: TestbedProcess) -> None:
    """After 5 failures even the right password gets the same 401 as a wrong one, with no Retry-After."""
    before = len(login_attempt_rows(tb))
    for _ in range(5):
        assert tb.request("POST", "/api/auth/login", json_body={"username": "admin", "password": "x"}).status == 401
    locked = tb.request("POST", "/api/auth/login", json_body={"username": "admin", "password": tb.admin_password})
    assert (locked.status, locked.json()) == (401, {"success": False, "message": "Invalid credentials"})
    assert locked.header("Retry-After") is None
    # two rows per failure (username and address), ISO UTC; the refused login is not counted again
    rows = login_attempt_rows(tb)[before:]
    assert len(rows) == 10
    assert {row[1] for row in rows} == {"username", "ip"}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row[2]) for row in rows)


def test_ten_failures_lock_the_ip_out(tb: TestbedProcess) -> None:
    """Ten failures from one IP across usernames lock that IP out for everyone."""
    for index in range(10):
        answer = tb.request("POST", "/api/auth/login", json_body={"username": f"u{index % 4}", "password": "x"})
        assert answer.status == 401
    locked = tb.request("POST", "/api/auth/login", json_body={"username": "admin", "password": tb.admin_password})
    assert (locked.status, locked.json()["message"]) == (401, "Invalid credentials")


def test_protected_endpoint_needs_a_valid_bearer(tb: TestbedProcess) -> None:
    """No token, a forged token and a refresh token are 401; the access token passes."""
    session = tb.login()
    missing = tb.request("GET", "/api/cache/stats")
    assert (missing.status, missing.json()["message"]) == (401, "Unauthorized - No token provided")
    forged = tb.request("GET", "/api/cache/stats", cookies={"token": "a.b.c"})
    assert (forged.status, forged.json()["message"]) == (401, "Unauthorized - Invalid or expired token")
    assert tb.request("GET", "/api/cache/stats", token="a.b.c").status == 401
    assert tb.request("GET", "/api/cache/stats", token=session.refresh_token).status == 401
    assert tb.request("GET", "/api/cache/stats", token=session.token).status == 200
    assert tb.request("GET", "/api/cache/stats", cookies={"token": session.token}).status == 200


def test_refresh_by_body_and_by_cookie(tb: TestbedProcess) -> None:
    """Refresh works with the body or the cookie and gives a working token; junk is 401."""
    session = tb.login()
    by_body = tb.request("POST", "/api/auth/refresh", json_body={"refreshToken": session.refresh_token})
    assert by_body.status == 200
    new_token = by_body.json()["data"]["token"]
    assert tb.request("GET", "/api/viewer/stats", token=new_token).status == 200
    # rotation: the refresh token just used is blacklisted
    assert tb.request("POST", "/api/auth/refresh", json_body={"refreshToken": session.refresh_token}).status == 401
    second = by_body.json()["data"]["refreshToken"]
    by_cookie = tb.request("POST", "/api/auth/refresh", cookies={"refreshToken": second})
    assert by_cookie.status == 200
    assert by_cookie.cookies["token"] == by_cookie.json()["data"]["token"]
    assert tb.request("POST", "/api/auth/refresh", json_body={"refreshToken": session.token}).status == 401
    assert tb.request("POST", "/api/auth/refresh").status == 401


def test_logout_revokes_the_token(tb: TestbedProcess) -> None:
    """After logout the same access token is refused."""
    session = tb.login()
    assert tb.request("POST", "/api/auth/logout", token=session.token, csrf=session.csrf).status == 200
    assert tb.request("GET", "/api/cache/stats", token=session.token).status == 401


def test_csrf_double_submit(tb: TestbedProcess) -> None:
    """Writes need cookie csrf_token equal to X-CSRF-Token (64 hex); login, refresh and viewer routes do not."""
    session = tb.login()
    forbidden = {"success": False, "message": "CSRF validation failed", "error": "Forbidden"}
    no_csrf = tb.request("POST", "/api/cache/clear", token=session.token)
    assert (no_csrf.status, no_csrf.json()) == (403, forbidden)
    mismatch = tb.request(
        "POST",
        "/api/cache/clear",
        token=session.token,
        cookies={"csrf_token": secrets.token_hex(32)},
        headers={"X-CSRF-Token": secrets.token_hex(32)},
    )
    assert mismatch.status == 403
    short = "abc123"
    assert tb.request("POST", "/api/cache/clear", token=session.token, csrf=short).status == 403
    good = tb.request("POST", "/api/cache/clear", token=session.token, csrf=session.csrf)
    assert (good.status, good.json()) == (200, {"success": True, "message": "Cache cleared"})
    assert tb.request("POST", "/api/viewer/start", json_body={"cameraId": 1}).status == 200
    # /api/cache/* checks the token after CSRF, /api/admin/* before it
    assert tb.request("POST", "/api/cache/clear").status == 403
    assert tb.request("POST", "/api/admin/cache/clear").status == 401


def test_server_issued_csrf_value_works(tb: TestbedProcess) -> None:
    """GET /api/auth/csrf sets a cookie whose value passes the double-submit check."""
    session = tb.login()
    issued = tb.request("GET", "/api/auth/csrf")
    value = issued.json()["data"]["token"]
    assert issued.cookies["csrf_token"] == value
    assert tb.request("POST", "/api/cache/clear", token=session.token, csrf=value).status == 200


def test_expired_access_token_is_401(make_testbed: TestbedFactory) -> None:
    """With a 1 s access lifetime the token stops working, and a refresh gives a working one."""
    short = make_testbed("--access-token-ttl", "1")
    session = short.login()
    assert short.request("GET", "/api/cache/stats", token=session.token).status == 200
    wait_until(lambda: short.request("GET", "/api/cache/stats", token=session.token).status == 401, timeout=30)
    refreshed = short.request("POST", "/api/auth/refresh", json_body={"refreshToken": session.refresh_token})
    assert short.request("GET", "/api/cache/stats", token=refreshed.json()["data"]["token"]).status == 200


def test_api_key_rule(make_testbed: TestbedFactory) -> None:
    """With --api-key, non-public paths need X-API-Key (403 "Access denied" without or wrong); public ones do not."""
    key = secrets.token_hex(32)
    keyed = make_testbed("--api-key", key, "--login-delay-scale", "0")
    session = keyed.login()
    without = keyed.request("GET", "/api/cache/stats", token=session.token)
    assert (without.status, without.json()) == (403, {"success": False, "message": "Access denied"})
    wrong = keyed.request("GET", "/api/cache/stats", token=session.token, headers={"X-API-Key": secrets.token_hex(32)})
    assert (wrong.status, wrong.json()["message"]) == (403, "Access denied")
    right = keyed.request("GET", "/api/cache/stats", token=session.token, headers={"X-API-Key": key})
    assert right.status == 200
    for path in ("/health", "/api/cameras/active", "/api/areas/public", "/api/stream/1"):
        assert keyed.request("GET", path).status == 200, path
    # the token refresh and the CSRF route are not public
    refresh = keyed.request("POST", "/api/auth/refresh", json_body={"refreshToken": session.refresh_token})
    assert refresh.status == 403
    assert keyed.request("GET", "/api/auth/csrf").status == 403
    start = keyed.request("POST", "/api/viewer/start", json_body={"cameraId": 1})
    assert start.status == 200
    login = keyed.request("POST", "/api/auth/login", json_body={"username": "admin", "password": "bad"})
    assert login.status == 401
    assert login.json()["message"] == "Invalid credentials"
