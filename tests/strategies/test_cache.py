"""Tests for strategies.cache: windowed hit rate from counter deltas, clear detection, plans, apply over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web

from config.settings import CacheOptions, DetectionSettings
from metrics.backend import BackendClient, Credentials
from metrics.snapshot import CacheStatsSample, ProbeSample, Snapshot
from metrics.window import Windows
from optimizer.clock import FakeClock
from optimizer.detection import Detector
from strategies.base import Direction, Plan, StrategyContext, StrategyError
from strategies.cache import (
    CLEARED,
    JUNK_SHARE,
    RECENT_HIT_RATE,
    CacheStrategy,
    Cause,
    CleanCache,
    CounterPoint,
    WarmCache,
    activity,
    counter_points,
)

HOT = ("/api/cameras/active", "/api/areas/public")


def cause_of(plan: Plan) -> Cause:
    """The cause of a plan's one action, a cache cleanup."""
    [action] = plan.actions
    assert isinstance(action, CleanCache)
    return action.cause


DETECTION = DetectionSettings(samples_required=2, window_samples=3)


@dataclass
class FakeBackend:
    """The backend's cache admin API and hot endpoints, with failures injected per route."""

    entries: list[str] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    legacy: bool = False
    failures: dict[tuple[str, str], tuple[int, dict[str, str]]] = field(default_factory=dict)
    failing_patterns: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self.record])
        app.router.add_post("/api/auth/login", self.login)
        app.router.add_get("/api/cache/stats", self.stats)
        app.router.add_post("/api/cache/invalidate", self.invalidate)
        app.router.add_post("/api/cache/clear", self.clear)
        for path in HOT:
            app.router.add_get(path, self.hot)
        return app

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Log every request, and answer an injected failure instead of the route."""
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body))
        failure = self.failures.get((request.method, request.path))
        if failure is not None:
            status, headers = failure
            return web.json_response({"success": False, "message": "injected"}, status=status, headers=headers)
        response: web.StreamResponse = await handler(request)
        return response

    def calls(self, method: str, path: str) -> int:
        """How many requests reached a route."""
        return sum(1 for m, p, _ in self.requests if (m, p) == (method, path))

    async def login(self, request: web.Request) -> web.Response:
        """Any credentials are fine."""
        return web.json_response({"success": True, "data": {"token": "t", "refreshToken": "r"}})

    async def stats(self, request: web.Request) -> web.Response:
        """Counters in the current shape (or the older one)."""
        lookups = self.hits + self.misses
        if self.legacy:
            data: dict[str, Any] = {
                "hits": self.hits,
                "misses": self.misses,
                "sets": 0,
                "evictions": 0,
                "size": len(self.entries),
                "maxSize": 1000,
                "hitRate": round(100 * self.hits / lookups, 2) if lookups else 0,
            }
        else:
            rate = f"{100 * self.hits / lookups:.2f}%" if lookups else "0.00%"
            data = {"hits": self.hits, "misses": self.misses, "size": len(self.entries), "hitRate": rate}
        return web.json_response({"success": True, "data": data})

    async def invalidate(self, request: web.Request) -> web.Response:
        """Drop entries whose path starts with the pattern."""
        pattern = (await request.json())["pattern"]
        if pattern in self.failing_patterns:
            return web.json_response({"success": False, "message": "boom"}, status=503)
        doomed = [e for e in self.entries if e.split("?", 1)[0].startswith(pattern)]
        self.entries = [e for e in self.entries if e not in doomed]
        return web.json_response({"success": True, "count": len(doomed)})

    async def clear(self, request: web.Request) -> web.Response:
        """Drop everything."""
        self.entries = []
        return web.json_response({"success": True, "message": "Cache cleared"})

    async def hot(self, request: web.Request) -> web.Response:
        """A cached public endpoint."""
        key = str(request.rel_url)
        hit = key in self.entries
        if hit:
            self.hits += 1
        else:
            self.misses += 1
            self.entries.append(key)
        return web.json_response({"success": True, "data": []}, headers={"X-Cache": "HIT" if hit else "MISS"})


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeBackend, BackendClient]]:
    """A fake backend on 127.0.0.1 (any port) and a real BackendClient pointed at it."""
    backend = FakeBackend()
    runner = web.AppRunner(backend.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = BackendClient(
        f"http://127.0.0.1:{port}",
        Credentials(username="admin", password="secret", api_key=None),
        user_agent="cctv-optimizer-test",
        timeout_seconds=2.0,
        requests_per_minute=90,
    )
    try:
        yield backend, client
    finally:
        await client.close()
        await runner.cleanup()


def make(
    client: BackendClient | None = None,
    *,
    windows: Windows | None = None,
    clock: Callable[[], float] | None = None,
    hot: tuple[str, ...] = HOT,
    **options: Any,
) -> CacheStrategy:
    """A cache strategy with small test windows (M=3)."""
    if client is None:
        # never called: planning and findings do not touch the backend
        client = BackendClient(
            "http://127.0.0.1:9",
            Credentials(username=None, password=None, api_key=None),
            user_agent="t",
            timeout_seconds=1.0,
            requests_per_minute=60,
        )
    return CacheStrategy(
        client,
        CacheOptions(**options),
        hot_endpoints=hot,
        windows=windows if windows is not None else Windows(120),
        window_samples=DETECTION.window_samples,
        exit_ratio=0.9,
        clock=clock or FakeClock().monotonic,
    )


def push(windows: Windows, at: float, *, hits: int, lookups: int, entries: int, removals: int | None = None) -> None:
    """One sampled reading of the lifetime counters, as the engine pushes it."""
    rate = hits / lookups if lookups else 0.0
    signals = {"cache_hit_rate": rate, "cache_lookups": float(lookups), "cache_entries": float(entries)}
    if removals is not None:
        signals["cache_removals"] = float(removals)
    windows.push(at, signals)


def cache_stats(
    size: int, *, hits: int = 0, misses: int = 0, max_size: int | None = None, evictions: int = 0
) -> CacheStatsSample:
    """A cache-stats sample."""
    lookups = hits + misses
    return CacheStatsSample(
        hits=hits,
        misses=misses,
        sets=misses,
        evictions=evictions,
        size=size,
        max_size=max_size,
        hit_rate=hits / lookups if lookups else 0.0,
    )


def snapshot(cache: CacheStatsSample | None, probe: ProbeSample | None = None) -> Snapshot:
    """A snapshot holding only the parts the cache strategy reads."""
    return Snapshot(
        seq=1,
        monotonic=2000.0,
        wall_time=1_700_000_000.0,
        duration_seconds=0.01,
        host=None,
        backend=None,
        tcp=None,
        probe=probe,
        cache=cache,
        database=None,
        hls=None,
        mediamtx=None,
        sessions=None,
        own=None,
        sources=MappingProxyType({}),
    )


def ctx(snap: Snapshot, windows: Windows, *armed: str, manual: bool = False) -> StrategyContext:
    """A planning context."""
    return StrategyContext(snapshot=snap, windows=windows, armed=armed, manual=manual, now=2000.0)


def busy_history(windows: Windows) -> None:
    """A long healthy past: 10 000 lookups at 95 % hits, then three quiet samples."""
    push(windows, 1.0, hits=9500, lookups=10_000, entries=40)
    push(windows, 2.0, hits=9519, lookups=10_020, entries=40)
    push(windows, 3.0, hits=9538, lookups=10_040, entries=40)


# ----- derived signals -------------------------------------------------------------------------------------------


def test_a_collapse_arms_on_counter_deltas_while_the_lifetime_rate_stays_high() -> None:
    """300 misses after 10 000 good lookups read as a collapse, though the lifetime rate is still 92 %."""
    windows = Windows(120)
    busy_history(windows)
    push(windows, 4.0, hits=9541, lookups=10_340, entries=340)
    push(windows, 5.0, hits=9544, lookups=10_360, entries=358)
    strategy = make(windows=windows)
    specs = strategy.triggers({})
    assert windows.last("cache_hit_rate") == pytest.approx(9544 / 10_360)
    assert (windows.last("cache_hit_rate") or 0.0) > 0.9
    recent = windows.values(RECENT_HIT_RATE)
    assert recent[:3] == [1.0, 1.0, 1.0]
    assert recent[-1] == pytest.approx((9544 - 9519) / (10_360 - 10_020))
    detector = Detector()
    assert detector.update(specs, windows, DETECTION) is True
    # each of those misses left a new entry (340 entries from 40): junk, which the junk share sees too
    assert set(detector.armed_signals) == {RECENT_HIT_RATE, JUNK_SHARE}


def test_healthy_traffic_does_not_arm() -> None:
    """Steady 95 % hits never arm, however long the history."""
    windows = Windows(120)
    busy_history(windows)
    push(windows, 4.0, hits=9557, lookups=10_060, entries=40)
    strategy = make(windows=windows)
    detector = Detector()
    assert detector.update(strategy.triggers({}), windows, DETECTION) is False
    assert windows.last(RECENT_HIT_RATE) == pytest.approx(38 / 40)


def test_too_few_lookups_read_as_healthy() -> None:
    """Ten misses out of ten lookups are below min_lookups: too few to judge, so the derived rate reads 1.0."""
    windows = Windows(120)
    push(windows, 1.0, hits=0, lookups=0, entries=0)
    push(windows, 2.0, hits=0, lookups=10, entries=10)
    strategy = make(windows=windows, min_lookups=50)
    strategy.triggers({})
    assert windows.values(RECENT_HIT_RATE) == [1.0, 1.0]
    assert strategy.recent().lookups == 10
    assert strategy.recent().hit_rate == 0.0


def test_derived_points_are_added_once_per_sample() -> None:
    """Asking for triggers again (the API does) adds nothing; a new sample adds exactly one point."""
    windows = Windows(120)
    busy_history(windows)
    strategy = make(windows=windows)
    strategy.triggers({})
    strategy.triggers({})
    assert len(windows.values(RECENT_HIT_RATE)) == 3
    assert len(windows.values(CLEARED)) == 3
    push(windows, 4.0, hits=9557, lookups=10_060, entries=40)
    strategy.update_signals()
    assert [at for at, _ in windows.points(RECENT_HIT_RATE)] == [1.0, 2.0, 3.0, 4.0]


def test_a_counter_reset_counts_from_zero() -> None:
    """After a backend restart the counters start again: the new totals are the interval's deltas."""
    points = [
        CounterPoint(at=1.0, hits=9000, lookups=10_000, entries=500),
        CounterPoint(at=2.0, hits=10, lookups=100, entries=3),
    ]
    act = activity(points)
    assert (act.lookups, act.hits, act.misses, act.new_entries) == (100, 10, 90, 0)


def test_counter_points_skip_samples_without_every_counter() -> None:
    """A sample whose cache source was down (no counters) is not a point."""
    windows = Windows(120)
    push(windows, 1.0, hits=1, lookups=2, entries=2)
    windows.push(2.0, {"cache_lookups": 5.0})
    push(windows, 3.0, hits=3, lookups=6, entries=2)
    assert [p.at for p in counter_points(windows)] == [1.0, 3.0]


def test_natural_expiry_of_a_small_cache_is_not_a_clear() -> None:
    """4 -> 1 entries with no removal counted is the backend's 60 s expiry sweep: no clear, no warm, no action.

    It used to be read as someone's clear: the warm started a cooldown, and a real junk explosion three minutes
    later was skipped. A clear adds what it dropped to the backend's invalidations (cacheService.cacheClear).
    """
    windows = Windows(120)
    push(windows, 1.0, hits=30, lookups=40, entries=4, removals=7)
    push(windows, 2.0, hits=31, lookups=42, entries=1, removals=7)
    for at in (3.0, 4.0):
        push(windows, at, hits=32, lookups=44, entries=1, removals=7)
    strategy = make(windows=windows)
    assert Detector().update(strategy.triggers({}), windows, DETECTION) is False
    assert windows.values(CLEARED) == [0.0, 0.0, 0.0, 0.0]
    assert windows.values(JUNK_SHARE) == [0.0, 0.0, 0.0, 0.0]


async def test_natural_expiry_plans_nothing_even_by_hand() -> None:
    """After an expiry there is nothing to warm: a manual round plans nothing (so no cooldown starts)."""
    windows = Windows(120)
    push(windows, 1.0, hits=30, lookups=40, entries=4, removals=7)
    push(windows, 2.0, hits=31, lookups=42, entries=1, removals=7)
    strategy = make(windows=windows)
    assert await strategy.plan(ctx(snapshot(cache_stats(1, hits=31, misses=11)), windows, manual=True)) is None


def sustained_junk(windows: Windows, *, start: float = 10.0, samples: int = 5) -> None:
    """Junk at 10 requests a second, read every 8 s: every junk URL a middleware miss and a new entry, each
    followed by the service cache's hit on its own camera list (so the hit rate stays near 50 %)."""
    hits, lookups, entries = 9_000, 10_000, 40
    push(windows, start, hits=hits, lookups=lookups, entries=entries, removals=500)
    for i in range(1, samples):
        hits += 80
        lookups += 160
        entries += 80
        push(windows, start + 8.0 * i, hits=hits, lookups=lookups, entries=entries, removals=500)


def test_sustained_junk_arms_though_service_hits_keep_the_hit_rate_up() -> None:
    """The recent hit rate stays at 50 % (over the 0.30 floor) and entries stay far under the limit, yet the
    junk share (new entries per miss) reads 1.0 and arms the strategy."""
    windows = Windows(120)
    sustained_junk(windows)
    strategy = make(windows=windows)
    detector = Detector()
    assert detector.update(strategy.triggers({}), windows, DETECTION) is True
    assert detector.armed_signals == (JUNK_SHARE,)
    assert windows.last(RECENT_HIT_RATE) == pytest.approx(0.5)
    assert windows.last(JUNK_SHARE) == pytest.approx(1.0)


async def test_sustained_junk_plans_invalidation_expecting_fewer_entries() -> None:
    """The plan invalidates the hot prefixes and warms; it expects the entries down by half of the junk seen
    over the last M intervals (3 x 80 new entries)."""
    windows = Windows(120)
    sustained_junk(windows)
    strategy = make(windows=windows)
    snap = snapshot(cache_stats(360, hits=9320, misses=1320))
    plan = await strategy.plan(ctx(snap, windows, JUNK_SHARE))
    assert plan is not None
    assert cause_of(plan) is Cause.JUNK
    assert [c.action for c in plan.changes] == ["cache_invalidate", "cache_invalidate", "cache_warm"]
    assert "junk query strings" in plan.reason
    assert plan.expected is not None
    assert (plan.expected.signal, plan.expected.direction) == ("cache_entries", Direction.DOWN)
    assert plan.expected.amount == pytest.approx(120.0)


def test_an_expiry_then_junk_three_minutes_later_is_junk() -> None:
    """The incident: the small cache expires (no clear, no warm), then junk arrives three minutes later and arms."""
    windows = Windows(120)
    push(windows, 1.0, hits=30, lookups=40, entries=4, removals=7)
    push(windows, 2.0, hits=31, lookups=42, entries=1, removals=7)
    strategy = make(windows=windows)
    strategy.triggers({})
    sustained_junk(windows, start=182.0)
    detector = Detector()
    assert detector.update(strategy.triggers({}), windows, DETECTION) is True
    assert CLEARED not in detector.armed_signals
    assert JUNK_SHARE in detector.armed_signals


Reading = tuple[float, int, int, int, int | None]  # at, hits, lookups, entries, removals


@pytest.mark.parametrize(
    ("readings", "signal", "expected"),
    [
        pytest.param(
            [(1.0, 10, 60, 52, None), (2.0, 10, 60, 0, None), *[(at, 10, 60, 2, None) for at in (3.0, 4.0, 5.0)]],
            CLEARED,
            [0.0, 1.0, 1.0, 1.0, 0.0],
            id="emptied-cache-flagged-for-m-samples",
        ),
        pytest.param(
            [(1.0, 10, 60, 302, None), (2.0, 10, 60, 200, None)], CLEARED, [0.0, 0.0], id="partial-drop-is-no-clear"
        ),
        pytest.param(
            [(1.0, 30, 40, 4, 7), (2.0, 30, 40, 0, 11)], CLEARED, [0.0, 1.0], id="drop-counted-in-removals-is-a-clear"
        ),
        pytest.param(
            [(1.0, 30, 40, 4, 7), (2.0, 1, 2, 1, 0)], CLEARED, [0.0, 1.0], id="counter-reset-is-a-restart-so-a-clear"
        ),
        pytest.param(
            [(1.0 + 8 * i, 1000 + 20 * i, 1100 + 120 * i, 40, 0) for i in range(5)],
            JUNK_SHARE,
            [0.0] * 5,
            id="misses-on-expired-hot-keys-are-no-junk",
        ),
        pytest.param(
            [
                (1.0, 1000, 1100, 300, 0),
                (2.0, 1000, 1100, 0, 300),
                (3.0, 1000, 1200, 100, 300),
                (4.0, 1010, 1300, 190, 300),
            ],
            JUNK_SHARE,
            [0.0] * 4,
            id="refill-after-a-clear-is-no-junk",
        ),
    ],
)
def test_a_derived_signal_reads_the_counter_history(
    readings: list[Reading], signal: str, expected: list[float]
) -> None:
    """From the sampled lifetime counters (entries, removals), the strategy derives cache_cleared (an emptied
    cache, flagged for M samples; a partial drop is a sweep) and the junk share (new entries per miss; misses that
    store known keys again, or the refill after a clear, are not junk)."""
    windows = Windows(120)
    for at, hits, lookups, entries, removals in readings:
        push(windows, at, hits=hits, lookups=lookups, entries=entries, removals=removals)
    make(windows=windows).triggers({})
    assert windows.values(signal) == expected


# ----- planning --------------------------------------------------------------------------------------------------


async def test_an_explosion_plans_invalidation_and_warming_expecting_fewer_entries() -> None:
    """Over the entries limit: invalidate each hot prefix once, then warm; expected cache_entries down."""
    windows = Windows(120)
    push(windows, 1.0, hits=100, lookups=110, entries=2500)
    strategy = make(windows=windows, entries_limit=2000)
    plan = await strategy.plan(ctx(snapshot(cache_stats(2500, hits=100, misses=10)), windows, "cache_entries"))
    assert plan is not None
    assert [c.action for c in plan.changes] == ["cache_invalidate", "cache_invalidate", "cache_warm"]
    assert [c.target for c in plan.changes[:2]] == [f"backend.cache:{p}" for p in HOT]
    assert not plan.reversible and not plan.disruptive
    assert plan.expected is not None
    assert (plan.expected.signal, plan.expected.direction) == ("cache_entries", Direction.DOWN)
    assert plan.expected.amount == pytest.approx(2500 - 2000 * 0.9)
    assert cause_of(plan) is Cause.ENTRIES


async def test_a_collapse_under_the_limit_expects_the_hit_rate_up() -> None:
    """A collapsed recent hit rate with few entries expects cache_hit_rate up; the reason names the figures."""
    windows = Windows(120)
    busy_history(windows)
    # misses on keys the cache holds again (expired ones): no junk, a collapse of the hit rate only
    push(windows, 4.0, hits=9541, lookups=10_340, entries=40)
    strategy = make(windows=windows)
    plan = await strategy.plan(ctx(snapshot(cache_stats(40, hits=9541, misses=799)), windows, RECENT_HIT_RATE))
    assert plan is not None and plan.expected is not None
    assert (plan.expected.signal, plan.expected.direction) == ("cache_hit_rate", Direction.UP)
    # M=3 intervals back: 340 lookups since the first sample, 41 of them hits
    assert "hit rate fell to 12.1 % over the last 340 lookups (floor 30 %)" in plan.reason
    assert cause_of(plan) is Cause.HIT_RATE


async def test_an_emptied_cache_plans_only_warming() -> None:
    """A cache found emptied plans one warm change and promises no measurable effect."""
    windows = Windows(120)
    push(windows, 1.0, hits=10, lookups=60, entries=52)
    push(windows, 2.0, hits=10, lookups=60, entries=0)
    strategy = make(windows=windows)
    plan = await strategy.plan(ctx(snapshot(cache_stats(0, hits=10, misses=50)), windows, CLEARED))
    assert plan is not None
    assert [c.action for c in plan.changes] == ["cache_warm"]
    assert plan.expected is None
    assert plan.actions == (WarmCache(warm=HOT),)


@pytest.mark.parametrize(
    "stats",
    [
        pytest.param(cache_stats(40, hits=9538, misses=502), id="healthy-stats"),
        pytest.param(None, id="no-stats-at-all"),
    ],
)
async def test_a_healthy_cache_plans_nothing_even_by_hand(stats: CacheStatsSample | None) -> None:
    """A manual request on a healthy cache finds nothing to do; no stats at all also means no plan."""
    windows = Windows(120)
    busy_history(windows)
    strategy = make(windows=windows)
    assert await strategy.plan(ctx(snapshot(stats), windows, manual=True)) is None


async def test_without_hot_endpoints_it_clears_or_does_nothing() -> None:
    """With no prefix to invalidate it plans a clear, unless clear_fallback is off."""
    windows = Windows(120)
    push(windows, 1.0, hits=0, lookups=0, entries=2500)
    snap = snapshot(cache_stats(2500))
    plan = await make(windows=windows, hot=()).plan(ctx(snap, windows, "cache_entries"))
    assert plan is not None and [c.action for c in plan.changes] == ["cache_clear"]
    assert await make(windows=windows, hot=(), clear_fallback=False).plan(ctx(snap, windows, "cache_entries")) is None


# ----- apply over HTTP -------------------------------------------------------------------------------------------


def junk(count: int) -> list[str]:
    """Entries made by cache-busting query strings on the first hot endpoint."""
    return [f"{HOT[0]}?_={i}" for i in range(count)]


async def test_apply_invalidates_the_junk_and_warms_so_the_next_request_hits(
    fake: tuple[FakeBackend, BackendClient],
) -> None:
    """Invalidation drops the junk, warming refills the hot keys, and the next viewer gets a HIT."""
    backend, client = fake
    backend.entries = [*junk(300), HOT[1]]
    windows = Windows(120)
    push(windows, 1.0, hits=0, lookups=0, entries=301)
    strategy = make(client, windows=windows, entries_limit=100)
    plan = await strategy.plan(ctx(snapshot(cache_stats(301)), windows, "cache_entries"))
    assert plan is not None
    result = await strategy.apply(plan)
    assert sorted(backend.entries) == sorted(HOT)
    assert [c.after for c in result.changes] == ["300 entries dropped", "1 entries dropped", "2 of 2 endpoints warmed"]
    assert "cache 301 -> 0 entries" in result.detail
    invalidated = [body["pattern"] for m, p, body in backend.requests if p == "/api/cache/invalidate"]
    assert invalidated == list(HOT)
    assert backend.calls("POST", "/api/cache/clear") == 0
    resp = await client.get_public(HOT[0])
    assert resp.x_cache == "HIT"


async def test_apply_clears_when_the_junk_is_elsewhere(fake: tuple[FakeBackend, BackendClient]) -> None:
    """Junk under another path survives invalidation of the hot prefixes: the fallback clears the cache."""
    backend, client = fake
    backend.entries = [f"/api/stream/1?_={i}" for i in range(300)]
    windows = Windows(120)
    push(windows, 1.0, hits=0, lookups=0, entries=300)
    strategy = make(client, windows=windows, entries_limit=100)
    plan = await strategy.plan(ctx(snapshot(cache_stats(300)), windows, "cache_entries"))
    assert plan is not None
    result = await strategy.apply(plan)
    assert [c.action for c in result.changes] == ["cache_invalidate", "cache_invalidate", "cache_clear", "cache_warm"]
    assert sorted(backend.entries) == sorted(HOT)


async def test_apply_rereads_and_does_nothing_when_the_junk_is_already_gone(
    fake: tuple[FakeBackend, BackendClient],
) -> None:
    """If the backend's own sweep emptied the cache since the plan, nothing is invalidated."""
    backend, client = fake
    backend.entries = [HOT[0]]
    windows = Windows(120)
    push(windows, 1.0, hits=0, lookups=0, entries=300)
    strategy = make(client, windows=windows, entries_limit=100)
    plan = await strategy.plan(ctx(snapshot(cache_stats(300)), windows, "cache_entries"))
    assert plan is not None
    result = await strategy.apply(plan)
    assert result.changes == ()
    assert "already down to 1 entries" in result.detail
    assert backend.calls("POST", "/api/cache/invalidate") == 0


async def test_a_backend_500_fails_before_anything_changes(fake: tuple[FakeBackend, BackendClient]) -> None:
    """A 500 on the first invalidation raises StrategyError naming it; no clear, no warming, junk intact."""
    backend, client = fake
    backend.entries = junk(300)
    backend.failures[("POST", "/api/cache/invalidate")] = (500, {})
    windows = Windows(120)
    push(windows, 1.0, hits=0, lookups=0, entries=300)
    strategy = make(client, windows=windows, entries_limit=100)
    plan = await strategy.plan(ctx(snapshot(cache_stats(300)), windows, "cache_entries"))
    assert plan is not None
    with pytest.raises(StrategyError, match="answered 500"):
        await strategy.apply(plan)
    assert len(backend.entries) == 300
    assert backend.calls("POST", "/api/cache/clear") == 0
    assert backend.calls("GET", HOT[0]) == 0


async def test_a_failure_halfway_still_warms_and_says_what_was_done(fake: tuple[FakeBackend, BackendClient]) -> None:
    """When the second prefix fails after the first was dropped, the hot endpoints are warmed before failing."""
    backend, client = fake
    backend.entries = junk(300)
    windows = Windows(120)
    push(windows, 1.0, hits=0, lookups=0, entries=300)
    strategy = make(client, windows=windows, entries_limit=100)
    plan = await strategy.plan(ctx(snapshot(cache_stats(300)), windows, "cache_entries"))
    assert plan is not None
    backend.failing_patterns.add(HOT[1])
    with pytest.raises(StrategyError, match="after dropping 300 entries; warmed 2 endpoints"):
        await strategy.apply(plan)
    assert sorted(backend.entries) == sorted(HOT)


async def test_a_429_is_honoured_for_its_retry_after(fake: tuple[FakeBackend, BackendClient]) -> None:
    """A 429 with Retry-After fails the action and pauses every later call for that long, without a request."""
    backend, client = fake
    backend.entries = junk(300)
    backend.failures[("GET", "/api/cache/stats")] = (429, {"Retry-After": "120"})
    windows = Windows(120)
    push(windows, 1.0, hits=0, lookups=0, entries=300)
    strategy = make(client, windows=windows, entries_limit=100)
    plan = await strategy.plan(ctx(snapshot(cache_stats(300)), windows, "cache_entries"))
    assert plan is not None
    with pytest.raises(StrategyError, match="429"):
        await strategy.apply(plan)
    assert client.budget.paused_for() > 100
    sent = len(backend.requests)
    with pytest.raises(StrategyError, match="budget"):
        await strategy.apply(plan)
    assert len(backend.requests) == sent
    assert len(backend.entries) == 300


async def test_evidence_before_the_action_no_longer_counts(fake: tuple[FakeBackend, BackendClient]) -> None:
    """After acting, the recent hit rate looks only at lookups made since, so the strategy disarms."""
    backend, client = fake
    backend.entries = junk(300)
    clock = FakeClock(start_monotonic=10.0)
    windows = Windows(120)
    busy_history(windows)
    push(windows, 4.0, hits=9541, lookups=10_340, entries=340)
    strategy = make(client, windows=windows, clock=clock.monotonic)
    plan = await strategy.plan(ctx(snapshot(cache_stats(340, hits=9541, misses=799)), windows, RECENT_HIT_RATE))
    assert plan is not None
    await strategy.apply(plan)
    push(windows, 11.0, hits=9545, lookups=10_346, entries=2)
    push(windows, 12.0, hits=9547, lookups=10_348, entries=2)
    strategy.update_signals()
    assert strategy.recent().lookups == 2
    assert windows.values(RECENT_HIT_RATE)[-2:] == [1.0, 1.0]
    # the drop from 340 entries was this strategy's own, and it warmed: not a foreign clear
    assert windows.values(CLEARED)[-2:] == [0.0, 0.0]


async def test_warming_after_a_clear_resets_the_flag(fake: tuple[FakeBackend, BackendClient]) -> None:
    """A warm-only plan GETs the hot endpoints; later samples no longer read the cache as emptied."""
    backend, client = fake
    clock = FakeClock(start_monotonic=10.0)
    windows = Windows(120)
    push(windows, 1.0, hits=10, lookups=60, entries=52)
    push(windows, 2.0, hits=10, lookups=60, entries=0)
    strategy = make(client, windows=windows, clock=clock.monotonic)
    plan = await strategy.plan(ctx(snapshot(cache_stats(0, hits=10, misses=50)), windows, CLEARED))
    assert plan is not None
    result = await strategy.apply(plan)
    assert result.changes[0].after == "2 of 2 endpoints warmed"
    assert sorted(backend.entries) == sorted(HOT)
    push(windows, 11.0, hits=10, lookups=62, entries=2)
    strategy.update_signals()
    assert windows.last(CLEARED) == 0.0


async def test_warming_that_reaches_nothing_fails(fake: tuple[FakeBackend, BackendClient]) -> None:
    """When every warm request fails, the warm-only action is a StrategyError with the reasons."""
    backend, client = fake
    for path in HOT:
        backend.failures[("GET", path)] = (502, {})
    strategy = make(client)
    plan = Plan(strategy="cache", reason="t", changes=(), actions=(WarmCache(warm=HOT),))
    with pytest.raises(StrategyError, match="answered 502"):
        await strategy.apply(plan)


async def test_reconcile_warms_the_hot_endpoints(fake: tuple[FakeBackend, BackendClient]) -> None:
    """An interrupted cleanup is settled by warming the hot endpoints."""
    backend, client = fake
    plan = Plan(
        strategy="cache",
        reason="t",
        changes=(),
        actions=(CleanCache(cause=Cause.ENTRIES, prefixes=(), warm=HOT, limit=10),),
    )
    note = await make(client).reconcile(plan)
    assert note == "interrupted cache action: warmed 2 endpoints"
    assert sorted(backend.entries) == sorted(HOT)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({"kind": "warm", "warm": list(HOT)}, WarmCache(warm=HOT), id="warm"),
        pytest.param(
            {"kind": "junk", "prefixes": ["/api/a"], "warm": list(HOT), "limit": 7, "clear_fallback": True},
            CleanCache(cause=Cause.JUNK, prefixes=("/api/a",), warm=HOT, limit=7, clear_fallback=True),
            id="junk",
        ),
        pytest.param(
            {"kind": "response", "warm": list(HOT)},
            CleanCache(cause=Cause.RESPONSE, prefixes=(), warm=HOT, limit=2000),
            id="response-defaults-the-limit",
        ),
    ],
)
async def test_a_plan_journaled_before_typed_actions_is_rebuilt_and_reconciled(
    fake: tuple[FakeBackend, BackendClient], params: dict[str, object], expected: CleanCache | WarmCache
) -> None:
    """An interrupted plan of the older untyped shape (``params``) becomes the same typed action and is settled."""
    backend, client = fake
    strategy = make(client, hot=())
    old: dict[str, object] = {"strategy": "cache", "reason": "t", "changes": [], "expected": None, "params": params}
    plan = Plan.from_dict(json.loads(json.dumps(old)), legacy=strategy.legacy_actions)
    assert plan.actions == (expected,)
    assert await strategy.reconcile(plan) == "interrupted cache action: warmed 2 endpoints"
    assert sorted(backend.entries) == sorted(HOT)


async def test_the_older_stats_shape_works_too(fake: tuple[FakeBackend, BackendClient]) -> None:
    """With the older numeric hitRate and maxSize shape, apply reads the size and acts the same way."""
    backend, client = fake
    backend.legacy = True
    backend.entries = junk(300)
    windows = Windows(120)
    push(windows, 1.0, hits=0, lookups=0, entries=300)
    strategy = make(client, windows=windows, entries_limit=100)
    plan = await strategy.plan(ctx(snapshot(cache_stats(300)), windows, "cache_entries"))
    assert plan is not None
    result = await strategy.apply(plan)
    assert "cache 300 -> 0 entries" in result.detail
    assert json.dumps(result.as_dict())


# ----- findings --------------------------------------------------------------------------------------------------


def test_misses_on_known_keys_suggest_a_longer_ttl() -> None:
    """Many misses that add no new entries mean entries expire before reuse: cache-ttl-too-short."""
    windows = Windows(120)
    push(windows, 1.0, hits=100, lookups=200, entries=3)
    push(windows, 2.0, hits=110, lookups=300, entries=3)
    push(windows, 3.0, hits=120, lookups=400, entries=3)
    [finding] = make(windows=windows).findings(ctx(snapshot(cache_stats(3, hits=120, misses=280)), windows))
    assert finding.id == "cache-ttl-too-short"
    assert finding.evidence["misses"] == 180 and finding.evidence["new_entries"] == 0


def test_junk_misses_are_not_a_ttl_problem() -> None:
    """Misses that each add an entry (cache busters) do not raise the TTL finding."""
    windows = Windows(120)
    push(windows, 1.0, hits=100, lookups=200, entries=3)
    push(windows, 2.0, hits=110, lookups=400, entries=193)
    assert make(windows=windows).findings(ctx(snapshot(cache_stats(193, hits=110, misses=290)), windows)) == []


def test_a_full_bounded_cache_that_evicts_is_too_small() -> None:
    """The older bounded cache, full and evicting between rounds, raises cache-too-small with its figures."""
    windows = Windows(120)
    strategy = make(windows=windows)
    full = snapshot(cache_stats(1000, max_size=1000, evictions=10))
    assert strategy.findings(ctx(full, windows)) == []
    [finding] = strategy.findings(ctx(snapshot(cache_stats(1000, max_size=1000, evictions=60)), windows))
    assert finding.id == "cache-too-small"
    assert finding.evidence["max_size"] == 1000


def test_slow_hot_endpoints_with_a_fast_health_are_reported() -> None:
    """Hot endpoints slower than the floor while /health is fast raise hot-endpoints-slow; a slow /health does not."""
    windows = Windows(120)
    for at in (1.0, 2.0, 3.0):
        windows.push(at, {"response_time_seconds": 0.9})
    strategy = make(windows=windows, response_time_floor_ms=500)

    def probe(health: float) -> ProbeSample:
        return ProbeSample(
            available=True,
            response_time_seconds=0.9,
            endpoint_seconds=MappingProxyType({"/health": health, HOT[0]: 0.9}),
            requests=3,
            errors=0,
            bytes_received=100,
        )

    [finding] = strategy.findings(ctx(snapshot(cache_stats(2), probe(0.01)), windows))
    assert finding.id == "hot-endpoints-slow"
    assert finding.evidence["limit_seconds"] == 0.5
    assert strategy.findings(ctx(snapshot(cache_stats(2), probe(0.8)), windows)) == []
    assert strategy.response_limit({"response_time_seconds": 0.4}) == pytest.approx(1.2)


# ----- response time as a trigger ---------------------------------------------------------------------------------


def slow_probe(response: float, health: float) -> ProbeSample:
    """A probe round: the hot endpoints at ``response`` seconds, /health at ``health``."""
    return ProbeSample(
        available=True,
        response_time_seconds=response,
        endpoint_seconds=MappingProxyType({"/health": health, HOT[0]: response, HOT[1]: response}),
        requests=3,
        errors=0,
        bytes_received=100,
    )


def slow_windows(response: float) -> Windows:
    """M samples of the hot endpoints at ``response`` seconds, with a quiet healthy cache."""
    windows = Windows(120)
    for at in (1.0, 2.0, 3.0):
        windows.push(at, {"response_time_seconds": response})
    return windows


def response_ctx(windows: Windows, health: float, baselines: dict[str, float], *armed: str) -> StrategyContext:
    """A planning context with a probe at the windows' last response time and the given baselines."""
    response = windows.last("response_time_seconds") or 0.0
    return StrategyContext(
        snapshot=snapshot(cache_stats(2), slow_probe(response, health)),
        windows=windows,
        armed=armed,
        manual=False,
        now=2000.0,
        baselines=MappingProxyType(baselines),
    )


@pytest.mark.parametrize(
    ("baselines", "line"),
    [
        pytest.param({}, 0.5, id="nothing-learned-the-floor"),
        pytest.param({"response_time_seconds": 0.1}, 0.5, id="fast-normal-under-the-floor-which-holds"),
        pytest.param({"response_time_seconds": 0.4}, 1.2, id="slow-normal-times-factor-lifts-the-line"),
    ],
)
def test_the_response_time_trigger_follows_the_baseline(baselines: dict[str, float], line: float) -> None:
    """response_time_seconds arms at max(floor, baseline x factor) and disarms under 0.9 of it."""
    strategy = make(response_time_floor_ms=500, baseline_factor=3.0)
    [spec] = [s for s in strategy.triggers(baselines) if s.signal == "response_time_seconds"]
    assert spec.above
    assert (spec.enter, spec.exit) == pytest.approx((line, line * 0.9))


def test_the_same_slowness_arms_against_the_floor_but_not_against_a_slow_normal() -> None:
    """0.9 s answers arm with no baseline (line 0.5 s) but not once 0.4 s is the learned normal (line 1.2 s)."""
    windows = slow_windows(0.9)
    strategy = make(windows=windows, response_time_floor_ms=500)
    detector = Detector()
    assert detector.update(strategy.triggers({}), windows, DETECTION) is True
    assert detector.armed_signals == ("response_time_seconds",)
    assert Detector().update(strategy.triggers({"response_time_seconds": 0.4}), windows, DETECTION) is False


async def test_slow_hot_endpoints_with_a_fast_health_plan_invalidation_and_warming() -> None:
    """Armed on response time while /health is fast: drop the junk under the hot paths, warm, expect it faster."""
    windows = slow_windows(0.9)
    strategy = make(windows=windows, response_time_floor_ms=500)
    plan = await strategy.plan(response_ctx(windows, 0.01, {}, "response_time_seconds"))
    assert plan is not None
    assert [c.action for c in plan.changes] == ["cache_invalidate", "cache_invalidate", "cache_warm"]
    assert cause_of(plan) is Cause.RESPONSE
    assert plan.expected is not None
    assert (plan.expected.signal, plan.expected.direction) == ("response_time_seconds", Direction.DOWN)
    assert plan.expected.amount == pytest.approx(0.9 - 0.5 * 0.9)
    assert "900 ms (line 500 ms)" in plan.reason


@pytest.mark.parametrize(
    ("hot", "health", "baselines"),
    [
        pytest.param(HOT, 0.8, {}, id="health-slow-too-so-the-whole-backend"),
        pytest.param(HOT, 0.01, {"response_time_seconds": 0.4}, id="learned-normal-above-the-values"),
        pytest.param((), 0.01, {}, id="no-hot-endpoints-to-warm"),
    ],
)
async def test_slowness_plans_nothing_a_cache_action_cannot_help(
    hot: tuple[str, ...], health: float, baselines: dict[str, float]
) -> None:
    """Armed on response time, yet no plan: a slow /health (the whole backend is slow), a learned normal above
    the values, or no hot endpoints to warm."""
    windows = slow_windows(0.9)
    strategy = make(windows=windows, hot=hot, response_time_floor_ms=500)
    assert await strategy.plan(response_ctx(windows, health, baselines, "response_time_seconds")) is None


async def test_apply_for_slowness_invalidates_and_warms_but_never_clears(
    fake: tuple[FakeBackend, BackendClient],
) -> None:
    """The response plan drops the hot paths' junk and warms them; junk elsewhere does not lead to a clear."""
    backend, client = fake
    backend.entries = [*junk(5), "/api/stream/1?_=1"]
    windows = slow_windows(0.9)
    strategy = make(client, windows=windows, response_time_floor_ms=500)
    plan = await strategy.plan(response_ctx(windows, 0.01, {}, "response_time_seconds"))
    assert plan is not None and cause_of(plan) is Cause.RESPONSE
    result = await strategy.apply(plan)
    assert [c.action for c in result.changes] == ["cache_invalidate", "cache_invalidate", "cache_warm"]
    assert backend.calls("POST", "/api/cache/clear") == 0
    assert sorted(backend.entries) == sorted(["/api/stream/1?_=1", *HOT])
