"""The connection strategy against the real backend's viewer sessions and its own 20 s sweep."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import pytest

from config.settings import ConnectionOptions
from optimizer.app import Daemon
from tests.contract.real import MIN_COUNTABLE_VIEW_SECONDS, SQL_FORMAT, SWEEP_PERIOD_SECONDS, RealBackend
from tests.harness import running_daemon

pytestmark = pytest.mark.contract

WATCHED = 120
STUCK_PERIODS = ConnectionOptions().stuck_sweep_periods
SILENT = 600
ONLY_CONNECTION = {
    "CCTV_OPTIMIZER_STRATEGIES__MEMORY__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__SETTLE_SECONDS": "0",
}


def of_net(net: str) -> str:
    """The WHERE clause of one scenario's viewers."""
    return f"ip_address LIKE '{net}.%'"


def counts(real: RealBackend, net: str) -> dict[str, int]:
    """Active and ended sessions, history rows and duplicated history rows of one scenario's viewers."""
    with real.sql() as conn:
        active = conn.execute(f"SELECT COUNT(*) FROM viewer_sessions WHERE is_active = 1 AND {of_net(net)}").fetchone()
        ended = conn.execute(f"SELECT COUNT(*) FROM viewer_sessions WHERE is_active = 0 AND {of_net(net)}").fetchone()
        history = conn.execute(f"SELECT COUNT(*) FROM viewer_session_history WHERE {of_net(net)}").fetchone()
        doubled = conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM viewer_session_history WHERE "
            f"{of_net(net)} GROUP BY ip_address, started_at, camera_id HAVING COUNT(*) > 1)"
        ).fetchone()
    return {"active": active[0], "ended": ended[0], "history": history[0], "doubled": doubled[0]}


def assert_ended_as_the_backend_does(real: RealBackend, net: str, count: int) -> None:
    """Every session ended the way endSession(id, {endedAt: last_heartbeat}) ends it, with one history row."""
    with real.sql() as conn:
        sessions = conn.execute(f"SELECT * FROM viewer_sessions WHERE {of_net(net)}").fetchall()
        history = conn.execute(f"SELECT * FROM viewer_session_history WHERE {of_net(net)}").fetchall()
        names = {r[0]: r[1] for r in conn.execute("SELECT id, name FROM cameras")}
    assert len(sessions) == count and len(history) == count
    copies = {(h["ip_address"], h["started_at"], h["camera_id"]): h for h in history}
    assert len(copies) == count, "one history row per session"
    for s in sessions:
        assert s["is_active"] == 0
        assert s["ended_at"] == s["last_heartbeat"], "ended_at is the last heartbeat"
        started = datetime.strptime(s["started_at"], SQL_FORMAT)
        assert s["duration_seconds"] == int((datetime.strptime(s["ended_at"], SQL_FORMAT) - started).total_seconds())
        copy = copies[(s["ip_address"], s["started_at"], s["camera_id"])]
        assert (copy["ended_at"], copy["duration_seconds"]) == (s["ended_at"], s["duration_seconds"])
        assert (copy["user_agent"], copy["device_type"]) == (s["user_agent"], s["device_type"])
        assert copy["camera_name"] == names.get(s["camera_id"], f"Camera {s['camera_id']}")


def views_added(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """Live views and watch seconds added to camera_view_stats between two readings."""
    views = sum(v for v, _ in after.values()) - sum(v for v, _ in before.values())
    seconds = sum(s for _, s in after.values()) - sum(s for _, s in before.values())
    return views, seconds


def forget(real: RealBackend, net: str) -> None:
    """Remove one scenario's viewers again (sessions and history rows)."""
    with real.sql() as conn:
        conn.execute(f"DELETE FROM viewer_sessions WHERE {of_net(net)}")
        conn.execute(f"DELETE FROM viewer_session_history WHERE {of_net(net)}")


async def wait_for_a_sweep(real: RealBackend, net: str) -> None:
    """Start three viewers through the backend's route and let them go silent: the sweep that ends them has just
    run when this returns, so the next one is about 20 s away."""
    for index in range(3):
        reply = real.request("POST", "/api/viewer/start", {"cameraId": 1 + index}, client_ip=f"{net}.250.{index + 1}")
        assert reply.status == 200, reply
    deadline = time.monotonic() + 15 + 2 * SWEEP_PERIOD_SECONDS + 5
    while counts(real, net)["active"] > 0:
        assert time.monotonic() < deadline, "the backend's sweep did not end its silent viewers"
        await asyncio.sleep(0.2)


async def connection_rounds(daemon: Daemon) -> list[str]:
    """One sample and one scheduled round of the connection strategy; the outcomes it recorded."""
    await daemon.sample_now()
    result = await daemon.engine.request_round(trigger="scheduled", strategy="connection")
    rows = [daemon.store.decision(i) for i in result.decision_ids]
    return [r.outcome for r in rows if r is not None]


async def test_twenty_thousand_stale_sessions_are_left_to_a_working_sweep(real: RealBackend, tmp_path: Path) -> None:
    """20,000 sessions silent for 10 min, written with startSession's INSERT right after a sweep: the backend's
    next sweep ends them all; the daemon, sampling and planning every second meanwhile, ends none, and the
    backend's history and view counters come out exactly as its own code writes them."""
    net = "10.77"
    forget(real, net)
    views_before = real.camera_views()
    try:
        async with running_daemon(real.daemon_env(tmp_path / "state", **ONLY_CONNECTION)) as daemon:
            await wait_for_a_sweep(real, net)
            real.insert_stale_sessions(20_000, silent_seconds=SILENT, watched_seconds=WATCHED, net=net)
            assert counts(real, net)["active"] == 20_000
            outcomes: list[str] = []
            deadline = time.monotonic() + 2 * SWEEP_PERIOD_SECONDS + 10
            while time.monotonic() < deadline and counts(real, net)["active"] > 0:
                outcomes += await connection_rounds(daemon)
                await asyncio.sleep(1.0)
            after = counts(real, net)
            # a few more rounds once the sweep is through: nothing is left for the daemon to do
            for _ in range(3):
                outcomes += await connection_rounds(daemon)
            assert "applied" not in outcomes, f"the daemon acted while the sweep worked: {outcomes}"
            assert "sessions-sweep-stuck" not in daemon.engine.findings
        assert after == {"active": 0, "ended": 20_003, "history": 20_003, "doubled": 0}
        assert any("Cleaned up" in line and "stale sessions" in line for line in real.log_since(0)[-2000:])
        assert_ended_as_the_backend_does_for(real, net)
        views, seconds = views_added(views_before, real.camera_views())
        assert (views, seconds) == (20_000, 20_000 * WATCHED), "the three route viewers watched 0 s: not counted"
    finally:
        forget(real, net)


def assert_ended_as_the_backend_does_for(real: RealBackend, net: str) -> None:
    """The inserted sessions (not the three route viewers) ended as endSession ends them."""
    with real.sql() as conn:
        wrong = conn.execute(
            f"SELECT COUNT(*) FROM viewer_sessions WHERE {of_net(net)} AND ip_address NOT LIKE '{net}.250.%' "
            f"AND (ended_at != last_heartbeat OR duration_seconds != {WATCHED})"
        ).fetchone()[0]
    assert wrong == 0


async def test_a_stopped_sweep_is_taken_over_with_what_end_session_writes(real: RealBackend, tmp_path: Path) -> None:
    """The backend process frozen (SIGSTOP) with 500 sessions silent for 10 min: the daemon sees the stale rows
    not going down across sweep periods, ends them exactly as endSession would (ended_at = last heartbeat,
    duration, one history row, camera_view_stats), and once the backend runs again its sweep finds nothing to
    double."""
    net = "10.78"
    count = 500
    forget(real, net)
    views_before = real.camera_views()
    try:
        async with running_daemon(real.daemon_env(tmp_path / "state", **ONLY_CONNECTION)) as daemon:
            with real.stopped():
                real.insert_stale_sessions(count, silent_seconds=SILENT, watched_seconds=WATCHED, net=net)
                outcomes: list[str] = []
                # the sweep counts as stuck after its configured number of periods without progress
                deadline = time.monotonic() + (STUCK_PERIODS + 1) * SWEEP_PERIOD_SECONDS + 20
                while time.monotonic() < deadline and "applied" not in outcomes:
                    outcomes += await connection_rounds(daemon)
                    await asyncio.sleep(1.0)
                assert "applied" in outcomes, f"the daemon never took over: {outcomes}"
                assert counts(real, net) == {"active": 0, "ended": count, "history": count, "doubled": 0}
            # the backend runs again: its next sweep must find nothing left to end
            await asyncio.sleep(SWEEP_PERIOD_SECONDS + 2)
        assert counts(real, net) == {"active": 0, "ended": count, "history": count, "doubled": 0}
        assert_ended_as_the_backend_does(real, net, count)
        views, seconds = views_added(views_before, real.camera_views())
        assert WATCHED >= MIN_COUNTABLE_VIEW_SECONDS
        assert (views, seconds) == (count, count * WATCHED)
    finally:
        forget(real, net)
