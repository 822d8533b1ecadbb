"""The cache strategy against the testbed's real response cache, over its real admin API and rate limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from optimizer.app import Daemon
from optimizer.state import DecisionRecord
from testbed.harness import TestbedProcess
from tests.harness import (
    OBSERVE_AND_DRY_RUN_COLUMNS,
    daemon_env,
    observe_and_dry_run_cases,
    running_daemon,
    running_testbed,
    sample_times,
)

HOT = "/api/cameras/active"
ONLY_CACHE = {
    "CCTV_OPTIMIZER_STRATEGIES__MEMORY__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__SETTLE_SECONDS": "0",
}


def env_for(tb: TestbedProcess, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Daemon environment with only the cache strategy enabled and an immediate settle time."""
    return daemon_env(tb, tmp_path / "state", **{**ONLY_CACHE, **extra})


def cache_rows(daemon: Daemon) -> list[DecisionRecord]:
    """The cache strategy's history rows, oldest first."""
    return daemon.store.decisions(strategy="cache")


def cache_size(tb: TestbedProcess) -> int:
    """Entries in the testbed's response cache."""
    return int(tb.state()["cache_size"])


async def test_junk_explosion_is_invalidated_warmed_and_verified(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Junk entries over the limit are invalidated once, the hot endpoint answers HIT, the row says improved."""
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__CACHE__ENTRIES_LIMIT="100")
    async with running_daemon(env) as daemon:
        testbed.scenario("cache_junk", entries=300)
        before = cache_size(testbed)
        assert before >= 300
        await sample_times(daemon, 2)
        result = await daemon.engine.request_round(trigger="scheduled")
        assert len(result.decision_ids) == 1
        after = cache_size(testbed)
        # the two warmed hot endpoints and the camera and area services' entries behind them
        assert after <= 4
        assert testbed.request("GET", HOT).header("X-Cache") == "HIT"
        await daemon.sample_now()
        await daemon.engine.verify_due()
        [row] = cache_rows(daemon)
        assert row.outcome == "applied" and row.mode == "enforce"
        assert row.signals["cache_entries"] == before
        assert row.thresholds["cache_entries"]["enter"] == 100
        actions = [c["action"] for c in row.changes]
        assert actions[0] == "cache_invalidate" and actions[-1] == "cache_warm"
        # the junk and the hot camera route's entry go; the area route's and the services' entries stay
        dropped = int(row.changes[0]["after"].removesuffix(" entries dropped"))
        assert 300 < dropped <= before - 3
        assert row.verdict == "improved"
        assert row.verdict_detail is not None
        assert row.verdict_detail["signal"] == "cache_entries"
        assert row.verdict_detail["before"] == before and row.verdict_detail["after"] <= 4
        assert [e.status for e in daemon.store.journal()] == ["done"]
        # the next round finds the condition gone and does nothing more
        await sample_times(daemon, 2)
        again = await daemon.engine.request_round(trigger="scheduled")
        assert again.decision_ids == ()


async def test_junk_under_the_limit_is_judged_on_new_entries_per_miss(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A burst of junk misses under the entries limit arms on the junk share (each miss left a new entry), whatever
    the hit rate says (the services' hits keep it up on the real backend); the junk is gone afterwards."""
    async with running_daemon(env_for(testbed, tmp_path)) as daemon:
        testbed.scenario("cache_junk", entries=100)
        await sample_times(daemon, 2)
        result = await daemon.engine.request_round(trigger="scheduled")
        assert len(result.decision_ids) == 1
        assert daemon.windows.values("cache_junk_share")[-1] >= 0.5
        # the warmed hot endpoints (and the services' entries behind them, where the backend has them)
        assert cache_size(testbed) <= 4
        await daemon.sample_now()
        await daemon.engine.verify_due()
        [row] = cache_rows(daemon)
        assert row.outcome == "applied"
        assert "junk query strings" in row.reason
        assert "cache_junk_share" in row.thresholds
        assert row.verdict == "improved"
        assert row.verdict_detail is not None and row.verdict_detail["signal"] == "cache_entries"
        assert row.verdict_detail["after"] < row.verdict_detail["before"]


async def test_a_clear_by_someone_else_is_followed_by_warming(testbed: TestbedProcess, tmp_path: Path) -> None:
    """An emptied cache (cleared over the admin API by an operator) arms a warm-only action."""
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__CACHE__MIN_LOOKUPS="10000000")
    async with running_daemon(env) as daemon:
        testbed.scenario("cache_junk", entries=50)
        await sample_times(daemon, 1)
        session = testbed.login()
        cleared = testbed.request("POST", "/api/cache/clear", token=session.token, csrf=session.csrf)
        assert cleared.status == 200
        await sample_times(daemon, 2)
        assert daemon.windows.values("cache_cleared")[-2:] == [1.0, 1.0]
        result = await daemon.engine.request_round(trigger="scheduled")
        assert len(result.decision_ids) == 1
        [row] = cache_rows(daemon)
        assert row.outcome == "applied"
        assert [c["action"] for c in row.changes] == ["cache_warm"]
        assert row.changes[0]["after"] == "2 of 2 endpoints warmed"
        assert testbed.request("GET", HOT).header("X-Cache") == "HIT"
        await sample_times(daemon, 1)
        assert daemon.windows.last("cache_cleared") == 0.0


@pytest.mark.parametrize(OBSERVE_AND_DRY_RUN_COLUMNS, observe_and_dry_run_cases("cache", "cache_invalidate"))
async def test_observe_and_dry_run_change_nothing(
    testbed: TestbedProcess,
    tmp_path: Path,
    setting: dict[str, str],
    outcome: str,
    mode: str,
    first_action: list[str],
) -> None:
    """With optimization switched off the armed strategy is recorded as observed; in dry_run the invalidation is
    recorded with its changes. Either way the cache keeps its junk and no journal entry is written."""
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__CACHE__ENTRIES_LIMIT="100", **setting)
    async with running_daemon(env) as daemon:
        testbed.scenario("cache_junk", entries=300)
        before = cache_size(testbed)
        await sample_times(daemon, 2)
        await daemon.engine.request_round(trigger="scheduled")
        [row] = cache_rows(daemon)
        assert row.outcome == outcome and row.mode == mode
        assert [c["action"] for c in row.changes][:1] == first_action
        assert daemon.store.journal() == []
        assert cache_size(testbed) >= before


async def test_nothing_happens_when_the_cache_is_healthy(testbed: TestbedProcess, tmp_path: Path) -> None:
    """With no junk and a working cache, rounds record nothing and the cache is untouched."""
    async with running_daemon(env_for(testbed, tmp_path)) as daemon:
        await sample_times(daemon, 3)
        result = await daemon.engine.request_round(trigger="scheduled")
        assert result.decision_ids == ()
        assert daemon.store.decisions() == []
        assert daemon.windows.last("cache_recent_hit_rate") == 1.0


async def test_no_second_action_within_the_cooldown(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Junk that returns inside the cooldown is recorded as skipped and left alone."""
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__CACHE__ENTRIES_LIMIT="100")
    async with running_daemon(env) as daemon:
        testbed.scenario("cache_junk", entries=300)
        await sample_times(daemon, 2)
        await daemon.engine.request_round(trigger="scheduled")
        testbed.scenario("cache_junk", entries=300)
        grown = cache_size(testbed)
        await sample_times(daemon, 2)
        await daemon.engine.request_round(trigger="scheduled")
        first, second = cache_rows(daemon)
        assert first.outcome == "applied"
        assert second.outcome == "skipped_cooldown"
        assert "cooldown" in second.reason
        assert cache_size(testbed) >= grown


async def test_a_rate_limited_backend_fails_cleanly_and_is_honoured(tmp_path: Path) -> None:
    """A 429 from the backend is recorded as failed with the reason, changes nothing, and pauses further calls."""
    with running_testbed(tmp_path / "testbed", "--rate-limit-scale", "0.2") as tb:
        env = env_for(tb, tmp_path, CCTV_OPTIMIZER_STRATEGIES__CACHE__ENTRIES_LIMIT="100")
        async with running_daemon(env) as daemon:
            tb.scenario("cache_junk", entries=300)
            before = cache_size(tb)
            await sample_times(daemon, 2)
            # spend the rest of this client's per-minute allowance, as a burst of other traffic would
            for _ in range(40):
                if tb.request("GET", "/api/areas/public").status == 429:
                    break
            else:
                raise AssertionError("the testbed never answered 429")
            await daemon.engine.request_round(trigger="scheduled")
            [row] = cache_rows(daemon)
            assert row.outcome == "failed"
            assert row.error is not None and "429" in row.error
            assert [e.status for e in daemon.store.journal()] == ["failed"]
            assert daemon.backend.budget.paused_for() > 1.0
            assert cache_size(tb) >= before


@asynccontextmanager
async def failing_invalidate_proxy(target: str) -> AsyncIterator[str]:
    """A reverse proxy to the testbed on 127.0.0.1 that answers POST /api/cache/invalidate with a 500."""
    hop = {"content-length", "transfer-encoding", "content-encoding", "connection", "host"}

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/api/cache/invalidate":
            return web.json_response({"success": False, "message": "Internal server error"}, status=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with (
            ClientSession() as client,
            client.request(
                request.method, target + request.path_qs, headers=headers, data=await request.read()
            ) as upstream,
        ):
            body = await upstream.read()
            answer = web.Response(status=upstream.status, body=body)
            for key, value in upstream.headers.items():
                if key.lower() not in hop:
                    answer.headers.add(key, value)
            return answer

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_backend_500_fails_cleanly_and_keeps_the_cache(testbed: TestbedProcess, tmp_path: Path) -> None:
    """The backend answering 500 to the invalidation: recorded as failed with the reason, no entry dropped."""
    async with failing_invalidate_proxy(testbed.url) as url:
        env = env_for(
            testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__CACHE__ENTRIES_LIMIT="100", CCTV_OPTIMIZER_BACKEND__URL=url
        )
        async with running_daemon(env) as daemon:
            testbed.scenario("cache_junk", entries=300)
            before = cache_size(testbed)
            await sample_times(daemon, 2)
            await daemon.engine.request_round(trigger="scheduled")
            [row] = cache_rows(daemon)
            assert row.outcome == "failed"
            assert row.error is not None and "500" in row.error and "/api/cameras" in row.error
            assert [e.status for e in daemon.store.journal()] == ["failed"]
            assert daemon.engine.runtimes["cache"].consecutive_failures == 1
            assert cache_size(testbed) >= before
