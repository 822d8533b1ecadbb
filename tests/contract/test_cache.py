"""The cache strategy against the real backend's in-memory cache, its counters, TTLs and 60 s expiry sweep."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from pathlib import Path

import pytest

from optimizer.app import Daemon
from tests.contract.real import RealBackend
from tests.harness import running_daemon

pytestmark = pytest.mark.contract

HOT = "/api/cameras/active"
EXPIRED = re.compile(r"^\[Cache\] Cleaned (\d+) expired entries")
# the response cache's TTL on the hot routes, and the backend's expiry sweep (services/cacheService.js)
TTL_SECONDS = 30
EXPIRY_SWEEP_SECONDS = 60
ONLY_CACHE = {
    "CCTV_OPTIMIZER_STRATEGIES__MEMORY__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__SETTLE_SECONDS": "0",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__ENTRIES_LIMIT": "100",
}
# samples taken back to back read fresh cache counters only while the budget has room beyond the hot-endpoint
# probe: at the default 30 requests a minute the counters are read about every 8 s, the probe timed in between
ROOMY_BUDGET = {"CCTV_OPTIMIZER_BACKEND__REQUESTS_PER_MINUTE": "90"}


def junk(real: RealBackend, count: int) -> None:
    """``count`` requests for the hot route with a never-repeated query string, from many visitors (as a
    scraper farm sends them through nginx): each adds one response-cache entry that nobody reads again."""
    nonce = secrets.token_hex(3)
    for index in range(count):
        reply = real.request("GET", f"{HOT}?_={nonce}{index}", client_ip=f"198.51.100.{index % 200 + 1}")
        assert reply.status == 200 and reply.header("x-cache") == "MISS", reply


def expired(real: RealBackend, mark: int) -> int:
    """The most entries one run of the backend's expiry sweep dropped since ``mark`` (its log line)."""
    found = [EXPIRED.match(line) for line in real.log_since(mark)]
    return max((int(m.group(1)) for m in found if m), default=0)


async def paced(daemon: Daemon, n: int) -> None:
    """n samples one second apart, the daemon's shortest interval."""
    for _ in range(n):
        await asyncio.sleep(1.0)
        await daemon.sample_now()


async def first_decision(daemon: Daemon, within: float = 40.0) -> int:
    """Sample every second and run a cache round after each, as the daemon's loops do, until the round records
    a decision (with the default budget the cache counters are read afresh only every few seconds)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        await daemon.sample_now()
        result = await daemon.engine.request_round(trigger="scheduled", strategy="cache")
        if result.decision_ids:
            return result.decision_ids[0]
    raise AssertionError(f"no cache decision within {within} s")


async def verdict(daemon: Daemon, decision_id: int, within: float = 40.0) -> str | None:
    """Sample every second until the decision's effect is judged; its verdict."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        await daemon.sample_now()
        await daemon.engine.verify_due()
        row = daemon.store.decision(decision_id)
        if row is not None and row.verdict is not None:
            return row.verdict
    return None


def cache_outcomes(daemon: Daemon) -> list[tuple[str, list[str]]]:
    """(outcome, actions) of the cache strategy's decisions, oldest first."""
    return [(r.outcome, [c["action"] for c in r.changes]) for r in daemon.store.decisions(strategy="cache")]


async def test_a_junk_explosion_is_invalidated_and_the_hot_route_warmed(real: RealBackend, tmp_path: Path) -> None:
    """300 junk entries over a limit of 100: one invalidate and a warm; the backend's own counters show the
    entries gone (its invalidations counter rises) and the hot route answers from the cache again."""
    async with running_daemon(real.daemon_env(tmp_path / "state", **ONLY_CACHE, **ROOMY_BUDGET)) as daemon:
        junk(real, 300)
        before = real.cache_stats()
        assert before["size"] >= 300
        row = daemon.store.decision(await first_decision(daemon))
        assert row is not None and row.outcome == "applied", row
        actions = [c["action"] for c in row.changes]
        assert actions[0] == "cache_invalidate" and actions[-1] == "cache_warm"
        after = real.cache_stats()
        assert after["size"] < 20
        assert after["invalidations"] - before["invalidations"] >= 300
        assert real.request("GET", HOT, client_ip="198.51.100.250").header("x-cache") == "HIT"
    print(f"cache entries {before['size']} -> {after['size']}")


async def test_the_verdict_on_an_invalidate_reads_the_counters_after_it(real: RealBackend, tmp_path: Path) -> None:
    """After the invalidate and warm have spent the request budget, the verifying sample must not judge on the
    counters read before the action (304 -> 304, neutral): it reads them again or waits until it can."""
    async with running_daemon(real.daemon_env(tmp_path / "state", **ONLY_CACHE)) as daemon:
        junk(real, 300)
        # at the default budget the counters are read about every 8 s: the explosion arms once two readings show it
        deadline = time.monotonic() + 30
        while True:
            await paced(daemon, 1)
            result = await daemon.engine.request_round(trigger="scheduled", strategy="cache")
            if result.decision_ids or time.monotonic() > deadline:
                break
        assert len(result.decision_ids) == 1
        assert real.cache_stats()["size"] < 20
        # the counters that stand in until the budget allows a read are from before: the verdict waits for one
        deadline = time.monotonic() + 30
        while True:
            await paced(daemon, 1)
            await daemon.engine.verify_due()
            row = daemon.store.decision(result.decision_ids[0])
            assert row is not None
            if row.verdict is not None or time.monotonic() > deadline:
                break
        assert row.verdict == "improved", row


async def test_natural_expiry_is_not_a_clear_and_junk_later_is_still_handled(real: RealBackend, tmp_path: Path) -> None:
    """A few live entries expire on their own (30 s TTL, dropped by the 60 s expiry sweep): no warm is recorded
    and no cooldown starts; a junk explosion right after is still invalidated."""
    # a small cache, as on a quiet night: emptied before the daemon starts, so it sees no clear
    assert real.request("POST", "/api/cache/clear", {}, admin=True).status == 200
    # a budget large enough that every sample reads fresh counters (the default's shortfall is defect 3d)
    env = real.daemon_env(tmp_path / "state", **ONLY_CACHE, CCTV_OPTIMIZER_BACKEND__REQUESTS_PER_MINUTE="90")
    async with running_daemon(env) as daemon:
        # visitors' filtered views: cached 30 s like the hot route, but not re-read by the daemon's probe
        for area in (1, 2, 3):
            reply = real.request("GET", f"{HOT}?areaId={area}", client_ip=f"198.51.100.{240 + area}")
            assert reply.status == 200 and reply.header("x-cache") == "MISS", reply
        mark = real.log_mark()
        await paced(daemon, 2)
        deadline = time.monotonic() + TTL_SECONDS + EXPIRY_SWEEP_SECONDS + 15
        while time.monotonic() < deadline and expired(real, mark) < 3:
            await asyncio.sleep(3)  # 3 requests a sample: within the budget of 90 a minute
            await daemon.sample_now()
            await daemon.engine.request_round(trigger="scheduled", strategy="cache")
        assert expired(real, mark) >= 3, "the expiry sweep did not drop the three views"
        await paced(daemon, 2)
        await daemon.engine.request_round(trigger="scheduled", strategy="cache")
        assert cache_outcomes(daemon) == [], "expiry taken for a clear"
        junk(real, 300)
        await paced(daemon, 2)
        await daemon.engine.request_round(trigger="scheduled", strategy="cache")
        assert [o for o, _ in cache_outcomes(daemon)] == ["applied"]
        assert real.cache_stats()["size"] < 20


async def test_a_clear_by_an_operator_is_followed_by_a_warm(real: RealBackend, tmp_path: Path) -> None:
    """An operator empties the cache over the backend's admin route (login, CSRF, API key): the daemon warms
    the hot routes once, and they answer from the cache."""
    env = real.daemon_env(
        tmp_path / "state", **ONLY_CACHE, **ROOMY_BUDGET, CCTV_OPTIMIZER_STRATEGIES__CACHE__MIN_LOOKUPS="10000000"
    )
    async with running_daemon(env) as daemon:
        junk(real, 30)
        await paced(daemon, 2)
        cleared = real.request("POST", "/api/cache/clear", {}, admin=True)
        assert cleared.status == 200, cleared
        size_after_clear = real.cache_stats()["size"]
        for _ in range(20):
            await asyncio.sleep(1.0)
            await daemon.sample_now()
            await daemon.engine.request_round(trigger="scheduled", strategy="cache")
        outcomes = cache_outcomes(daemon)
        assert all(o == "applied" and actions == ["cache_warm"] for o, actions in outcomes), outcomes
        for path in (HOT, "/api/areas/public"):
            assert real.request("GET", path, client_ip="198.51.100.251").header("x-cache") == "HIT", path
    print(f"cache entries after the clear {size_after_clear}, 20 s later {real.cache_stats()['size']}: {outcomes}")
