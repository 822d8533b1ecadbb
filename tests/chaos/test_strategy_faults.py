"""A strategy that fails, hangs or makes things worse, inside the running daemon, watched over its real API.

The engine's own unit tests (tests/optimizer/test_engine.py) pin each rule with the fake clock; here one
built-in strategy is swapped for a scripted one in a daemon running against the testbed, to show the API
keeps serving, the breaker opens after three failures, it is visible in /strategies and /metrics, and an
operator's reset brings the strategy back.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
import structlog

from metrics.snapshot import Snapshot
from optimizer.app import Daemon
from strategies.base import Direction, ExpectedEffect, StrategyError
from testbed.harness import TestbedProcess
from tests.chaos.faults import lost_rows, report, row_ids, served, tracebacks
from tests.harness import api_client, auth, daemon_env, running_daemon
from tests.optimizer.fakes import ScriptedStrategy, make_plan

NAME = "cache"
PLAN_TIMEOUT_S = 0.3


def breaker_metric(text: str) -> float:
    """The breaker gauge of the scripted strategy from a /metrics page."""
    match = re.search(rf'^cctv_optimizer_breaker_open\{{strategy="{NAME}"\}} ([0-9.]+)$', text, re.MULTILINE)
    assert match is not None
    return float(match.group(1))


async def hls_grows(daemon: Daemon, root: Path, n: int) -> Snapshot:
    """Make the watched signal worse (the HLS directory grows), then sample."""
    stream = root / "stream"
    await asyncio.to_thread(stream.mkdir, exist_ok=True)
    await asyncio.to_thread((stream / f"grow-{n}.mp4").write_bytes, b"\0" * 512 * 1024)
    return await daemon.sample_now()


@pytest.mark.parametrize("fault", ["fails", "raises", "hangs", "regresses"])
async def test_a_misbehaving_strategy_trips_its_breaker_and_the_daemon_serves_on(
    testbed: TestbedProcess, tmp_path: Path, fault: str
) -> None:
    """Three failures (an error, a crash, a plan timeout, or a reverted regression) open the breaker; meanwhile
    /health and /metrics answer; the breaker shows in the API and the metric; a reset re-arms the strategy."""
    hls = tmp_path / "hls"
    hls.mkdir()
    env = daemon_env(
        testbed,
        tmp_path / "state",
        CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY=str(hls),
        CCTV_OPTIMIZER_ENGINE__COOLDOWN_SECONDS="0",
        CCTV_OPTIMIZER_ENGINE__PLAN_TIMEOUT_SECONDS=str(PLAN_TIMEOUT_S),
    )
    scripted = ScriptedStrategy(NAME, use_default_plan=True)
    if fault == "fails":
        scripted.apply_error = StrategyError("the backend refused the change")
    elif fault == "raises":
        scripted.plan_error = RuntimeError("a bug in the strategy")
    elif fault == "hangs":
        scripted.plan_gate = asyncio.Event()  # never set: every plan hangs until the engine's timeout
    else:
        scripted.next_plan = make_plan(
            NAME,
            expected=ExpectedEffect(signal="hls_bytes", direction=Direction.DOWN, amount=1000.0, settle_seconds=0.0),
        )
    state_db = tmp_path / "state" / "state.db"
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(env) as daemon, api_client(daemon) as http:
            daemon.engine.runtimes[NAME].strategy = scripted
            before = row_ids(state_db)
            started = time.monotonic()
            health_during: list[int] = []
            for n in range(3):
                round_task = asyncio.create_task(
                    daemon.engine.request_round(trigger="manual", strategy=NAME, manual=True)
                )
                if fault == "hangs":
                    await asyncio.wait_for(scripted.plan_started.wait(), 10)
                    during = await served(daemon)  # asked while the plan hangs
                    health_during.append(during.health_status)
                    scripted.plan_started.clear()
                await round_task
                if fault == "regresses":
                    await hls_grows(daemon, hls, n)
                    await daemon.engine.verify_due()
            tripped = time.monotonic() - started
            # /metrics renders once per snapshot: a fresh sample shows the breaker as it is now
            await daemon.sample_now()
            during = await served(daemon)
            async with http.get("/metrics") as resp:
                gauge_open = breaker_metric(await resp.text())
            async with http.get("/strategies") as resp:
                views = await resp.json()
            blocked = await daemon.engine.request_round(trigger="manual", strategy=NAME, manual=True)
            blocked_row = daemon.store.decision(blocked.decision_ids[0]) if blocked.decision_ids else None
            async with http.post(f"/strategies/{NAME}/reset", headers=auth(daemon)) as resp:
                reset_status = resp.status
                reset_view = await resp.json()
            await daemon.sample_now()
            async with http.get("/metrics") as resp:
                gauge_after = breaker_metric(await resp.text())
            lost = lost_rows(before, row_ids(state_db))
    view = next(v for v in (views if isinstance(views, list) else views["strategies"]) if v["name"] == NAME)
    assert view["breakerOpen"] is True and view["breakerReason"]
    assert gauge_open == 1.0 and gauge_after == 0.0
    assert during.health_status == 200 and during.metrics_status == 200
    assert all(status == 200 for status in health_during)
    assert blocked_row is not None and blocked_row.outcome == "blocked_breaker"
    assert reset_status == 200 and reset_view["breakerOpen"] is False
    assert any(e["event"] == "breaker_opened" and e.get("strategy") == NAME for e in logs)
    assert lost == 0
    crashes = tracebacks(logs)
    if fault == "raises":
        # an unexpected exception is a bug: logged with its traceback, once per failure
        assert [e["event"] for e in crashes] == ["plan_crashed"] * 3
    else:
        assert crashes == []
    if fault == "regresses":
        assert len(scripted.reverted) == 3
    report(
        f"strategy {fault}",
        failures_to_open=3,
        seconds_to_open=tripped,
        api_5xx=sum(1 for s in health_during if s >= 500),
        rows_lost=lost,
        reset_status=reset_status,
    )
