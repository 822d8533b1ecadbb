"""Tests for metrics.backend: the client against the real testbed, and against a small misbehaving server."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from config.settings import SamplerSettings
from metrics.backend import (
    KEEPALIVE_SECONDS,
    LOGIN_BACKOFF_SECONDS,
    MAX_BODY_BYTES,
    BackendClient,
    BackendError,
    Credentials,
    RequestBudget,
    parse_cache_stats,
    parse_json_object,
    parse_retry_after,
)
from optimizer.clock import FakeClock
from testbed.harness import TestbedProcess, wait_until
from tests.harness import running_testbed

HOT = ("/api/cameras/active", "/api/areas/public")
USER_AGENT = "cctv-optimizer-test/1"
API_KEY = "k" * 40
HEX64 = re.compile(r"[0-9a-f]{64}")
TOKEN_EXPIRY_TIMEOUT_S = 10.0


# ----- testbeds ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedProcess]:
    """One ordinary testbed for the module, with limits well above what these tests spend."""
    with running_testbed(tmp_path_factory.mktemp("tb"), "--rate-limit-scale", "10", "--cameras", "2") as process:
        yield process


@pytest.fixture
def fresh(tb: TestbedProcess) -> TestbedProcess:
    """The module's testbed with limits, lockouts, sessions and cache counters reset."""
    tb.scenario("reset")
    return tb


@pytest.fixture(scope="module")
def tb_api_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedProcess]:
    """A testbed on which an API key exists, so every non-public path needs it."""
    with running_testbed(tmp_path_factory.mktemp("tb_key"), "--api-key", API_KEY) as process:
        yield process


@pytest.fixture(scope="module")
def tb_limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedProcess]:
    """A testbed with limits at 5 % (5 requests a minute on ordinary paths)."""
    with running_testbed(tmp_path_factory.mktemp("tb_limited"), "--rate-limit-scale", "0.05") as process:
        yield process


@pytest.fixture(scope="module")
def tb_legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedProcess]:
    """A testbed answering the older cache-stats shape."""
    with running_testbed(tmp_path_factory.mktemp("tb_legacy"), "--legacy-cache-shape") as process:
        yield process


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., BackendClient]]:
    """Build a client; it is closed, in the test's event loop, when the test ends."""
    clients: list[BackendClient] = []

    def factory(
        base_url: str,
        *,
        username: str | None = "admin",
        password: str | None = None,
        api_key: str | None = None,
        per_minute: int = 600,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> BackendClient:
        client = BackendClient(
            base_url,
            Credentials(username=username, password=password, api_key=api_key),
            user_agent=USER_AGENT,
            timeout_seconds=timeout,
            requests_per_minute=per_minute,
            clock=clock,
            keepalive_seconds=keepalive,
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


def for_testbed(make: Callable[..., BackendClient], tb: TestbedProcess, **kwargs: Any) -> BackendClient:
    """A client with the testbed's admin password (and API key when it has one)."""
    kwargs.setdefault("password", tb.admin_password)
    kwargs.setdefault("api_key", tb.api_key)
    return make(tb.url, **kwargs)


def login_attempts(tb: TestbedProcess) -> tuple[int, int]:
    """(successful, failed) login attempts recorded in the testbed's database (one username row per attempt)."""
    conn = sqlite3.connect(f"file:{tb.database}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT coalesce(sum(success), 0), coalesce(sum(1 - success), 0) FROM login_attempts"
            " WHERE identifier_type = 'username'"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1])


# ----- pure functions ------------------------------------------------------------------------------


def test_budget_spends_a_quarter_minute_burst_then_refills() -> None:
    """The bucket holds a quarter of the per-minute budget and refills at the per-minute rate."""
    clock = FakeClock()
    budget = RequestBudget(60, clock.monotonic)
    assert [budget.try_take() for _ in range(16)] == [True] * 15 + [False]
    assert budget.wait_seconds() == pytest.approx(1.0)
    clock.advance(0.5)
    assert budget.wait_seconds() == pytest.approx(0.5)
    assert budget.try_take() is False
    clock.advance(0.5)
    assert budget.try_take() is True


def test_sampling_leaves_the_action_reserve_in_the_bucket() -> None:
    """Takes with the reserve stop two requests early; those two are still there for an action."""
    budget = RequestBudget(60, FakeClock().monotonic)
    reserve = budget.action_reserve
    assert reserve == 2.0
    assert [budget.try_take(reserve) for _ in range(14)] == [True] * 13 + [False]
    assert (budget.try_take(), budget.try_take(), budget.try_take()) == (True, True, False)


def test_a_tiny_budget_keeps_no_reserve() -> None:
    """With room for one request only, sampling is not shut out by the reserve."""
    budget = RequestBudget(2, FakeClock().monotonic)
    assert budget.action_reserve == 0.0
    assert budget.try_take(budget.action_reserve) is True


def test_budget_never_holds_less_than_one_request() -> None:
    """A tiny per-minute budget still allows one request at a time."""
    clock = FakeClock()
    budget = RequestBudget(2, clock.monotonic)
    assert (budget.try_take(), budget.try_take()) == (True, False)
    clock.advance(30.0)
    assert budget.try_take() is True


def test_budget_pause_blocks_until_it_ends_and_never_shortens() -> None:
    """A Retry-After pause stops spending until it has passed; a shorter later pause does not cut it."""
    clock = FakeClock()
    budget = RequestBudget(60, clock.monotonic)
    budget.pause(10.0)
    budget.pause(3.0)
    assert budget.try_take() is False
    assert budget.paused_for() == pytest.approx(10.0)
    assert budget.wait_seconds() == pytest.approx(10.0)
    clock.advance(9.9)
    assert budget.try_take() is False
    clock.advance(0.1)
    assert budget.paused_for() == 0.0
    assert budget.try_take() is True


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, 60.0), ("7", 7.0), ("0", 1.0), ("-5", 1.0), ("99999", 3600.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0)],
)
def test_parse_retry_after(header: str | None, seconds: float) -> None:
    """Delta seconds are used within 1 s..1 h; a missing header or an HTTP date means a minute."""
    assert parse_retry_after(header) == seconds


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"<html>oops</html>", "not JSON"), (b"[1, 2]", "not an object"), (b"\xff\xfe", "not JSON"), (b"", "not JSON")],
)
def test_parse_json_object_rejects_other_things(body: bytes, message: str) -> None:
    """Anything but a JSON object is a BackendError naming the endpoint."""
    with pytest.raises(BackendError, match=f"/x answered .*{message}"):
        parse_json_object(body, "/x")


def test_parse_cache_stats_current_shape() -> None:
    """The current shape (percent string, deletes and invalidations) normalises to ratios and counts."""
    sample = parse_cache_stats(
        {
            "success": True,
            "data": {
                "hits": 1,
                "misses": 4,
                "sets": 4,
                "deletes": 2,
                "invalidations": 1,
                "hitRate": "20.00%",
                "size": 4,
            },
        }
    )
    assert (sample.hits, sample.misses, sample.sets, sample.size) == (1, 4, 4, 4)
    assert sample.evictions == 3
    assert sample.max_size is None
    assert sample.hit_rate == pytest.approx(0.2)


def test_parse_cache_stats_legacy_shape() -> None:
    """The older shape (numeric hitRate, evictions, maxSize) normalises the same way."""
    sample = parse_cache_stats(
        {"hits": 3, "misses": 1, "sets": 1, "evictions": 5, "size": 9, "maxSize": 1000, "hitRate": 75.0}
    )
    assert (sample.evictions, sample.size, sample.max_size) == (5, 9, 1000)
    assert sample.hit_rate == pytest.approx(0.75)


@pytest.mark.parametrize(("rate", "expected"), [("42.5%", 0.425), (42.5, 0.425), (0.3, 0.3), ("junk", 0.0)])
def test_parse_cache_stats_hit_rate_without_counts(rate: object, expected: float) -> None:
    """Without hit and miss counts the reported rate is used, as a percent or a ratio."""
    assert parse_cache_stats({"data": {"size": 0, "hitRate": rate}}).hit_rate == pytest.approx(expected)


def test_parse_cache_stats_ignores_wrong_types_and_needs_size() -> None:
    """Booleans and strings in counters count as zero; stats without a size are an error."""
    sample = parse_cache_stats({"data": {"size": 2, "hits": True, "misses": "7", "maxSize": False}})
    assert (sample.hits, sample.misses, sample.max_size) == (0, 0, None)
    with pytest.raises(BackendError, match="no size"):
        parse_cache_stats({"data": {"hits": 1}})
    with pytest.raises(BackendError, match="no size"):
        parse_cache_stats({"data": [1, 2]})


# ----- against the testbed -------------------------------------------------------------------------


async def test_probe_times_health_and_hot_endpoints(fresh: TestbedProcess, make_client: Any) -> None:
    """The probe GETs /health and the hot endpoints; the response time is the mean of the hot ones."""
    client = for_testbed(make_client, fresh)
    sample = await client.probe(HOT)
    assert sample.available is True
    assert (sample.requests, sample.errors) == (3, 0)
    assert set(sample.endpoint_seconds) == {"/health", *HOT}
    hot = [sample.endpoint_seconds[e] for e in HOT]
    assert sample.response_time_seconds == pytest.approx(sum(hot) / len(hot))
    expected = sum(len(fresh.request("GET", path).body) for path in HOT)
    assert sample.bytes_received > expected


async def test_probe_of_a_backend_that_is_down(make_client: Any, unused_port: int) -> None:
    """Nothing listening: not available, one failed request, no response time."""
    sample = await make_client(f"http://127.0.0.1:{unused_port}").probe(HOT)
    assert (sample.available, sample.requests, sample.errors) == (False, 1, 1)
    assert sample.response_time_seconds is None
    assert dict(sample.endpoint_seconds) == {}


async def test_login_once_and_reuse_the_token(fresh: TestbedProcess, make_client: Any) -> None:
    """The first admin call logs in; later calls reuse the token without logging in again."""
    before = login_attempts(fresh)
    client = for_testbed(make_client, fresh)
    verify = await client.admin("GET", "/api/auth/verify")
    assert verify["data"]["user"]["username"] == "admin"
    stats = await client.cache_stats()
    assert stats.size >= 0
    assert login_attempts(fresh) == (before[0] + 1, before[1])


async def test_posts_carry_the_csrf_double_submit(fresh: TestbedProcess, make_client: Any) -> None:
    """POSTs pass the backend's CSRF check (which a bare POST fails) and do what they say."""
    session = fresh.login()
    bare = fresh.request("POST", "/api/cache/clear", token=session.token)
    assert (bare.status, bare.json()["message"]) == (403, "CSRF validation failed")
    fresh.request("GET", "/api/cameras/active")
    fresh.request("GET", "/api/areas/public")
    client = for_testbed(make_client, fresh)
    invalidated = await client.admin("POST", "/api/cache/invalidate", {"pattern": "/api/cameras"})
    assert (invalidated["success"], invalidated["count"]) == (True, 1)
    cleared = await client.admin("POST", "/api/cache/clear")
    assert cleared["message"] == "Cache cleared"
    assert (await client.cache_stats()).size == 0


async def test_admin_error_carries_status_and_message(fresh: TestbedProcess, make_client: Any) -> None:
    """A refused admin call raises BackendError with the status and the backend's message."""
    client = for_testbed(make_client, fresh)
    with pytest.raises(BackendError, match="answered 400: Pattern is required") as caught:
        await client.admin("POST", "/api/cache/invalidate", {})
    assert caught.value.status == 400


async def test_cache_stats_current_shape_from_the_testbed(fresh: TestbedProcess, make_client: Any) -> None:
    """A route miss (and the camera service's miss behind it) and a route hit read back as hits 1, misses 2."""
    assert fresh.request("GET", "/api/cameras/active").header("X-Cache") == "MISS"
    assert fresh.request("GET", "/api/cameras/active").header("X-Cache") == "HIT"
    stats = await for_testbed(make_client, fresh).cache_stats()
    assert (stats.hits, stats.misses, stats.sets, stats.size) == (1, 2, 2, 2)
    assert stats.hit_rate == pytest.approx(1 / 3)
    assert stats.max_size is None


async def test_cache_stats_legacy_shape_from_the_testbed(tb_legacy: TestbedProcess, make_client: Any) -> None:
    """The older shape gives the same counts, plus the cache's maximum size."""
    tb_legacy.scenario("reset")
    tb_legacy.request("GET", "/api/areas/public")
    tb_legacy.request("GET", "/api/areas/public")
    tb_legacy.request("GET", "/api/areas/public")
    stats = await for_testbed(make_client, tb_legacy).cache_stats()
    assert (stats.hits, stats.misses, stats.size) == (2, 2, 2)
    assert stats.hit_rate == pytest.approx(1 / 2)
    assert stats.max_size == 1000


async def test_api_key_is_sent_when_configured(tb_api_key: TestbedProcess, make_client: Any) -> None:
    """With the API key the admin calls work; without it the login passes (public) but the call gets 403."""
    tb_api_key.scenario("reset")
    assert tb_api_key.api_key == API_KEY
    stats = await for_testbed(make_client, tb_api_key).cache_stats()
    assert stats.hit_rate == 0.0
    keyless = make_client(tb_api_key.url, password=tb_api_key.admin_password)
    with pytest.raises(BackendError) as caught:
        await keyless.cache_stats()
    assert caught.value.status == 403


async def test_refused_login_is_not_retried(fresh: TestbedProcess, make_client: Any) -> None:
    """A wrong password is tried once; the client then refuses to try again until its backoff passes."""
    ok, failed = login_attempts(fresh)
    clock = FakeClock()
    client = for_testbed(make_client, fresh, password="wrong-password", clock=clock.monotonic)
    with pytest.raises(BackendError, match=r"admin login refused \(401\)"):
        await client.cache_stats()
    for _ in range(3):
        with pytest.raises(BackendError, match="not retrying"):
            await client.cache_stats()
    assert login_attempts(fresh) == (ok, failed + 1)
    clock.advance(LOGIN_BACKOFF_SECONDS + 1)
    with pytest.raises(BackendError, match="admin login refused"):
        await client.cache_stats()
    assert login_attempts(fresh) == (ok, failed + 2)
    # the second refusal doubles the wait
    clock.advance(LOGIN_BACKOFF_SECONDS + 1)
    with pytest.raises(BackendError, match="not retrying"):
        await client.cache_stats()
    assert login_attempts(fresh) == (ok, failed + 2)


async def test_no_credentials_no_login(fresh: TestbedProcess, make_client: Any) -> None:
    """Without a password the client says so and sends nothing."""
    before = login_attempts(fresh)
    client = make_client(fresh.url, password=None)
    assert client.has_credentials is False
    with pytest.raises(BackendError, match="no admin credentials"):
        await client.admin("GET", "/api/cache/stats")
    assert login_attempts(fresh) == before


@pytest.fixture(scope="module")
def tb_short_access(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedProcess]:
    """A testbed whose access tokens last one second (refresh tokens as usual)."""
    with running_testbed(tmp_path_factory.mktemp("tb_short"), "--access-token-ttl", "1") as process:
        yield process


@pytest.fixture(scope="module")
def tb_short_both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedProcess]:
    """A testbed whose access and refresh tokens both last one second."""
    args = ("--access-token-ttl", "1", "--refresh-token-ttl", "1")
    with running_testbed(tmp_path_factory.mktemp("tb_short_both"), *args) as process:
        yield process


def wait_for_expiry(tb: TestbedProcess) -> None:
    """Log in from the harness and wait until that token (and any earlier one) has expired."""
    token = tb.login().token
    wait_until(
        lambda: tb.request("GET", "/api/auth/verify", token=token).status == 401,
        timeout=TOKEN_EXPIRY_TIMEOUT_S,
    )


async def test_expired_token_is_refreshed_once(tb_short_access: TestbedProcess, make_client: Any) -> None:
    """A 401 on an expired token leads to one refresh and the call succeeds, with no new password login."""
    tb_short_access.scenario("reset")
    client = for_testbed(make_client, tb_short_access)
    await client.cache_stats()
    wait_for_expiry(tb_short_access)
    logins = login_attempts(tb_short_access)
    stats = await client.cache_stats()
    assert stats.size >= 0
    assert login_attempts(tb_short_access) == logins


async def test_expired_tokens_lead_to_one_new_login(tb_short_both: TestbedProcess, make_client: Any) -> None:
    """When the refresh token has expired too, the client logs in again once and the call succeeds."""
    tb_short_both.scenario("reset")
    client = for_testbed(make_client, tb_short_both)
    await client.cache_stats()
    wait_for_expiry(tb_short_both)
    ok, failed = login_attempts(tb_short_both)
    await client.cache_stats()
    assert login_attempts(tb_short_both) == (ok + 1, failed)


async def test_429_retry_after_pauses_every_call(tb_limited: TestbedProcess, make_client: Any) -> None:
    """After a 429 the client sends nothing budgeted until Retry-After has passed; /health still goes."""
    tb_limited.scenario("reset")
    clock = FakeClock()
    client = make_client(tb_limited.url, password=tb_limited.admin_password, clock=clock.monotonic)
    statuses = [(await client.get_public("/api/cameras/active")).status for _ in range(5)]
    assert statuses == [200] * 5
    with pytest.raises(BackendError, match="rate limited") as caught:
        await client.get_public("/api/cameras/active")
    assert caught.value.status == 429
    paused = client.budget.paused_for()
    assert 1.0 <= paused <= 60.0
    # the backend forgets its limit, but the client keeps its word until Retry-After has passed
    tb_limited.scenario("reset")
    with pytest.raises(BackendError, match="budget spent") as caught:
        await client.get_public("/api/cameras/active")
    assert caught.value.status == 429
    probe = await client.probe(HOT)
    assert (probe.available, probe.requests, probe.errors) == (True, 1, 0)
    clock.advance(paused)
    assert (await client.get_public("/api/cameras/active")).status == 200


async def test_cache_stats_fall_back_to_a_recent_reading_while_paused(
    tb_limited: TestbedProcess, make_client: Any
) -> None:
    """While rate limited, the last cache reading stands in if it is recent enough, else the 429 shows."""
    tb_limited.scenario("reset")
    clock = FakeClock()
    client = make_client(tb_limited.url, password=tb_limited.admin_password, clock=clock.monotonic)
    first = await client.cache_stats()
    client.budget.pause(30.0)
    standing_in = await client.cache_stats()
    assert (standing_in.size, standing_in.hits, standing_in.misses) == (first.size, first.hits, first.misses)
    # the stand-in says it is an earlier reading, so it is not pushed to the signal windows as a new one
    assert first.age_seconds == 0.0 and standing_in.age_seconds > 0.0
    clock.advance(10.0)
    with pytest.raises(BackendError) as caught:
        await client.cache_stats(max_age=5.0)
    assert caught.value.status == 429


async def test_own_budget_stops_calls_before_the_backend_does(fresh: TestbedProcess, make_client: Any) -> None:
    """With the budget spent the client refuses at once (no request sent); /health is never budgeted."""
    clock = FakeClock()
    client = make_client(fresh.url, per_minute=4, clock=clock.monotonic)
    assert (await client.get_public("/api/areas/public")).status == 200
    with pytest.raises(BackendError, match="budget spent") as caught:
        await client.get_public("/api/areas/public")
    assert caught.value.status == 429
    assert (await client.get_public("/health")).status == 200
    clock.advance(15.0)
    assert (await client.get_public("/api/areas/public")).status == 200


# ----- against a misbehaving server ----------------------------------------------------------------


@dataclass
class Seen:
    """What the small server received."""

    method: str
    path: str
    headers: dict[str, str]
    cookies: dict[str, str]
    body: bytes


@dataclass
class OddServer:
    """A small server that answers what a test tells it to, and records every request."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def paths(self) -> list[str]:
        """Paths requested, in order."""
        return [s.path for s in self.seen]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer."""
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json", headers=headers)


async def good_login(_request: web.Request) -> web.Response:
    """A login that always succeeds."""
    return json_response({"success": True, "data": {"token": "t0k3n", "refreshToken": "r3fr3sh"}})


@pytest.fixture
async def odd() -> AsyncIterator[OddServer]:
    """The small server on 127.0.0.1, a free port; stopped at the end (hanging handlers released first)."""
    server = OddServer()
    server.routes["/api/auth/login"] = good_login

    async def dispatch(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        server.seen.append(Seen(request.method, request.path, dict(request.headers), dict(request.cookies), body))
        handler = server.routes.get(request.path)
        if handler is None:
            return json_response({"success": False, "message": "not found"}, status=404)
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


@pytest.fixture
def unused_port() -> int:
    """A loopback port with nothing listening (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_headers_on_admin_calls(odd: OddServer, make_client: Any) -> None:
    """Every call has the fixed User-Agent; admin calls the Bearer token; POSTs a matching CSRF pair; the key."""

    async def ok(_request: web.Request) -> web.Response:
        return json_response({"success": True})

    odd.routes["/api/cache/clear"] = ok
    client = make_client(odd.url, password="pw", api_key="the-key")
    await client.admin("POST", "/api/cache/clear")
    await client.admin("POST", "/api/cache/clear")
    login, first, second = odd.seen
    assert json.loads(login.body) == {"username": "admin", "password": "pw"}
    for seen in odd.seen:
        assert seen.headers["User-Agent"] == USER_AGENT
        assert seen.headers["X-API-Key"] == "the-key"
        assert HEX64.fullmatch(seen.headers["X-CSRF-Token"])
        assert seen.cookies["csrf_token"] == seen.headers["X-CSRF-Token"]
    for seen in (first, second):
        assert seen.headers["Authorization"] == "Bearer t0k3n"
    assert "Authorization" not in login.headers


async def test_persistent_401_is_retried_once_only(odd: OddServer, make_client: Any) -> None:
    """A 401 leads to one fresh login and one retry; a second 401 is an error, not a loop."""

    async def unauthorised(_request: web.Request) -> web.Response:
        return json_response({"success": False, "message": "Invalid or expired token"}, status=401)

    odd.routes["/api/cache/stats"] = unauthorised
    odd.routes["/api/auth/refresh"] = unauthorised
    client = make_client(odd.url, password="pw")
    with pytest.raises(BackendError, match="answered 401: Invalid or expired token") as caught:
        await client.cache_stats()
    assert caught.value.status == 401
    assert odd.paths() == [
        "/api/auth/login",
        "/api/cache/stats",
        "/api/auth/refresh",
        "/api/auth/login",
        "/api/cache/stats",
    ]


async def test_cache_stats_fall_back_to_the_admin_duplicate(odd: OddServer, make_client: Any) -> None:
    """When /api/cache/stats is missing (404), /api/admin/cache/stats is read instead."""

    async def stats(_request: web.Request) -> web.Response:
        return json_response({"success": True, "data": {"hits": 3, "misses": 1, "size": 7}})

    odd.routes["/api/admin/cache/stats"] = stats
    sample = await make_client(odd.url, password="pw").cache_stats()
    assert (sample.size, sample.hit_rate) == (7, 0.75)
    assert odd.paths()[-2:] == ["/api/cache/stats", "/api/admin/cache/stats"]


async def test_login_answer_without_token_is_a_refusal(odd: OddServer, make_client: Any) -> None:
    """A 200 login without a token in it counts as refused, and is not retried."""

    async def odd_login(_request: web.Request) -> web.Response:
        return json_response({"success": True, "data": {"user": "admin"}})

    odd.routes["/api/auth/login"] = odd_login
    client = make_client(odd.url, password="pw")
    with pytest.raises(BackendError, match=r"refused \(200\)"):
        await client.admin("GET", "/api/cache/stats")
    with pytest.raises(BackendError, match="not retrying"):
        await client.admin("GET", "/api/cache/stats")
    assert odd.paths() == ["/api/auth/login"]


async def test_garbage_body_is_a_backend_error(odd: OddServer, make_client: Any) -> None:
    """HTML where JSON was expected raises BackendError naming the path."""

    async def html(_request: web.Request) -> web.Response:
        return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")

    odd.routes["/api/cache/stats"] = html
    with pytest.raises(BackendError, match="/api/cache/stats answered something that is not JSON"):
        await make_client(odd.url, password="pw").cache_stats()


async def test_json_array_is_a_backend_error(odd: OddServer, make_client: Any) -> None:
    """A JSON value that is not an object raises BackendError."""

    async def array(_request: web.Request) -> web.Response:
        return json_response([1, 2, 3])

    odd.routes["/api/cache/stats"] = array
    with pytest.raises(BackendError, match="not an object"):
        await make_client(odd.url, password="pw").cache_stats()


async def test_huge_body_is_refused(odd: OddServer, make_client: Any) -> None:
    """A body over the cap (announced by Content-Length) raises BackendError."""

    async def huge(_request: web.Request) -> web.Response:
        return web.Response(body=b"{" + b" " * (MAX_BODY_BYTES + 10) + b"}", content_type="application/json")

    odd.routes["/huge"] = huge
    with pytest.raises(BackendError, match="more than") as caught:
        await make_client(odd.url).get_public("/huge")
    assert caught.value.status == 200


async def test_huge_streamed_body_is_refused(odd: OddServer, make_client: Any) -> None:
    """A chunked body with no length that grows past the cap raises BackendError."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b" " * 65536
        for _ in range(MAX_BODY_BYTES // len(chunk) + 4):
            await response.write(chunk)
        await response.write_eof()
        return response

    odd.routes["/stream"] = stream
    with pytest.raises(BackendError, match="more than"):
        await make_client(odd.url).get_public("/stream")


async def test_large_body_under_the_cap_is_read_whole(odd: OddServer, make_client: Any) -> None:
    """A body of several hundred kilobytes (under the cap) is read to its end, not cut at the first chunk."""
    payload = {"success": True, "data": {"size": 3, "blob": "x" * 600_000}}

    async def large(_request: web.Request) -> web.Response:
        return json_response(payload)

    odd.routes["/api/cache/stats"] = large
    odd.routes["/large"] = large
    client = make_client(odd.url, password="pw")
    response = await client.get_public("/large")
    assert json.loads(response.body) == payload
    assert (await client.cache_stats()).size == 3


async def test_server_error_is_a_backend_error_with_status(odd: OddServer, make_client: Any) -> None:
    """A 500 raises BackendError with the status and the server's message."""

    async def broken(_request: web.Request) -> web.Response:
        return json_response({"success": False, "message": "Internal server error"}, status=500)

    odd.routes["/api/cache/stats"] = broken
    with pytest.raises(BackendError, match="answered 500: Internal server error") as caught:
        await make_client(odd.url, password="pw").cache_stats()
    assert caught.value.status == 500


async def test_hanging_server_times_out(odd: OddServer, make_client: Any) -> None:
    """A server that never answers gives BackendError after the client's timeout, not a hang."""

    async def hang(_request: web.Request) -> web.Response:
        await odd.release.wait()
        return json_response({})

    odd.routes["/hang"] = hang
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"did not answer within 0\.3 s"):
        await make_client(odd.url, timeout=0.3).get_public("/hang")
    assert time.monotonic() - started < 3.0


async def test_probe_counts_server_errors_on_hot_endpoints(odd: OddServer, make_client: Any) -> None:
    """A hot endpoint answering 500 is an error and has no time; the other endpoint still counts."""

    async def health(_request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def broken(_request: web.Request) -> web.Response:
        return json_response({}, status=502)

    odd.routes["/health"] = health
    odd.routes["/api/areas/public"] = health
    odd.routes["/api/cameras/active"] = broken
    sample = await make_client(odd.url).probe(HOT)
    assert (sample.available, sample.requests, sample.errors) == (True, 3, 1)
    assert set(sample.endpoint_seconds) == {"/health", "/api/areas/public"}
    assert sample.response_time_seconds == sample.endpoint_seconds["/api/areas/public"]


async def test_probe_skips_hot_endpoints_when_health_fails(odd: OddServer, make_client: Any) -> None:
    """A /health that is not 200 makes the backend unavailable; the hot endpoints are not tried."""

    async def unhealthy(_request: web.Request) -> web.Response:
        return json_response({"status": "starting"}, status=503)

    odd.routes["/health"] = unhealthy
    sample = await make_client(odd.url).probe(HOT)
    assert (sample.available, sample.requests, sample.errors) == (False, 1, 1)
    assert odd.paths() == ["/health"]
    assert sample.response_time_seconds == sample.endpoint_seconds["/health"]


async def test_429_with_retry_after_sets_the_pause(odd: OddServer, make_client: Any) -> None:
    """The Retry-After of a 429 becomes the client's pause, exactly."""

    async def limited(_request: web.Request) -> web.Response:
        return json_response({"success": False}, status=429, headers={"Retry-After": "7"})

    odd.routes["/api/areas/public"] = limited
    clock = FakeClock()
    client = make_client(odd.url, clock=clock.monotonic)
    with pytest.raises(BackendError, match="rate limited"):
        await client.get_public("/api/areas/public")
    assert client.budget.paused_for() == 7.0
    clock.advance(7.0)
    with pytest.raises(BackendError, match="rate limited"):
        await client.get_public("/api/areas/public")
    assert odd.paths() == ["/api/areas/public", "/api/areas/public"]


async def test_cookies_from_the_server_are_not_kept(odd: OddServer, make_client: Any) -> None:
    """Set-Cookie answers do not leak into later requests: only the client's own cookies are sent."""

    async def cookie(_request: web.Request) -> web.Response:
        response = json_response({"ok": True})
        response.set_cookie("tracker", "abc")
        return response

    odd.routes["/api/areas/public"] = cookie
    client = make_client(odd.url)
    await client.get_public("/api/areas/public")
    await client.get_public("/api/areas/public")
    assert set(odd.seen[-1].cookies) == {"csrf_token"}


async def test_close_is_idempotent(odd: OddServer, make_client: Any) -> None:
    """close() can be called twice, and the client opens a new pool if used again."""

    async def health(_request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    odd.routes["/health"] = health
    client = make_client(odd.url)
    await client.get_public("/health")
    await client.close()
    await client.close()
    assert (await client.get_public("/health")).status == 200


async def test_an_action_gets_through_when_sampling_has_spent_its_share(odd: OddServer, make_client: Any) -> None:
    """Public GETs of the sampler stop at the reserve with 429; the action's warm GET then still goes out."""

    async def hot(_request: web.Request) -> web.Response:
        return json_response({"success": True, "data": []})

    odd.routes["/api/hot"] = hot
    client = make_client(odd.url, per_minute=12)  # a bucket of 3: one for sampling, two kept for actions
    assert (await client.get_public("/api/hot")).status == 200
    with pytest.raises(BackendError, match="request budget spent") as spent:
        await client.get_public("/api/hot")
    assert spent.value.status == 429
    assert (await client.get_public("/api/hot", wait=True)).status == 200
    assert (await client.get_public("/api/hot", wait=True)).status == 200
    assert odd.paths().count("/api/hot") == 3


async def test_hot_endpoints_keep_their_share_of_the_budget_at_1_s_sampling(odd: OddServer, make_client: Any) -> None:
    """A minute of 1 s samples at 30 requests a minute: the cache stats take no more than their share.

    The probe and the cache stats go out together every sample; the cache stats used to win the race for every
    token (28 reads and 1 hot GET in a minute), so the response time silently became the /health time. Now the
    cache stats are read once per ``cache_interval`` (the last reading stands in, marked with its age), most of
    the budget times the hot endpoints, and a round that could time none reports no response time.
    """

    async def ok(_request: web.Request) -> web.Response:
        return json_response({"success": True, "data": []})

    async def stats(_request: web.Request) -> web.Response:
        return json_response({"success": True, "data": {"hits": 3, "misses": 1, "size": 2, "hitRate": "75.00%"}})

    for path in ("/health", *HOT):
        odd.routes[path] = ok
    odd.routes["/api/cache/stats"] = stats
    clock = FakeClock()
    client = make_client(odd.url, password="pw", per_minute=30, clock=clock.monotonic)
    rounds = []
    for _ in range(60):
        probe, cache = await asyncio.gather(client.probe(HOT), client.sampled_cache_stats(len(HOT)))
        rounds.append((probe, cache))
        clock.advance(1.0)
    paths = odd.paths()
    stats_reads = paths.count("/api/cache/stats")
    hot_gets = sum(paths.count(p) for p in HOT)
    assert stats_reads <= 60.0 / client.cache_interval + 1
    assert hot_gets >= 2 * stats_reads
    # both hot endpoints are timed in turn, not only the first one
    assert min(paths.count(p) for p in HOT) >= hot_gets // 3
    fresh_cache = [c for _, c in rounds if c.age_seconds == 0.0]
    assert len(fresh_cache) == stats_reads
    print(f"a minute at 1 s, 30 requests a minute: {stats_reads} cache-stats reads, {hot_gets} hot GETs")
    for probe, _ in rounds:
        timed = [probe.endpoint_seconds[e] for e in HOT if e in probe.endpoint_seconds]
        if timed:
            assert probe.response_time_seconds == pytest.approx(sum(timed) / len(timed))
            assert probe.stale_reason is None
        else:
            # never the /health time in disguise: unknown, and marked so
            assert probe.response_time_seconds is None
            assert probe.stale_reason is not None and "budget" in probe.stale_reason


async def test_cache_stats_are_read_every_sample_while_the_budget_has_room(odd: OddServer, make_client: Any) -> None:
    """With a budget well above what sampling asks for, every sample reads the cache stats afresh."""

    async def stats(_request: web.Request) -> web.Response:
        return json_response({"success": True, "data": {"hits": 3, "misses": 1, "size": 2}})

    odd.routes["/api/cache/stats"] = stats
    clock = FakeClock()
    client = make_client(odd.url, password="pw", per_minute=600, clock=clock.monotonic)
    ages = []
    for _ in range(10):
        ages.append((await client.sampled_cache_stats(len(HOT))).age_seconds)
        clock.advance(1.0)
    assert ages == [0.0] * 10
    assert odd.paths().count("/api/cache/stats") == 10


# ----- kept-alive connections -----------------------------------------------------------------------------


def test_the_keep_alive_outlasts_a_calm_interval_and_ends_before_the_backends() -> None:
    """A calm daemon samples every ``sampler.max_interval_ms`` (30 s by default): the connection it probed with is
    still open for the next sample; the real backend (Fastify, keepAliveTimeout 72 s) keeps it longer still, so the
    daemon is the one that closes it."""
    calm_seconds = SamplerSettings().max_interval_ms / 1000
    assert calm_seconds < KEEPALIVE_SECONDS < 72.0


@pytest.mark.parametrize(("keepalive", "same"), [(KEEPALIVE_SECONDS, True), (0.5, False)], ids=["default", "short"])
async def test_probes_a_pause_apart_share_one_connection(
    odd: OddServer, make_client: Any, keepalive: float, same: bool
) -> None:
    """Two probes 1.5 s apart come over one connection with the default keep-alive (the second probe opens none),
    and over two when the keep-alive is shorter than the pause: the check can tell them apart."""
    peers: list[Any] = []

    async def health(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return json_response({"status": "ok"})

    odd.routes["/health"] = health
    client = make_client(odd.url, keepalive=keepalive)
    await client.get_public("/health")
    await asyncio.sleep(1.5)
    await client.get_public("/health")
    assert len(peers) == 2
    assert (peers[0] == peers[1]) is same
