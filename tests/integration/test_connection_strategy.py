"""The connection strategy against the testbed: a stuck session sweep and a CLOSE_WAIT leak."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

from optimizer.app import Daemon
from testbed.harness import TestbedProcess
from tests.harness import daemon_env, running_daemon, sample_times

FORMAT = "%Y-%m-%d %H:%M:%S"
# the stuck_sessions scenario's viewers come from 10.10.x.y
STUCK = "ip_address LIKE '10.10.%'"


# the sweep counts as stuck after 2 periods of 0.5 s without its stale count going down (20 s x 3 in production)
SWEEP = {
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__SWEEP_INTERVAL_SECONDS": "0.5",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__STUCK_SWEEP_PERIODS": "2",
}


def env_for(tb: TestbedProcess, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Daemon environment with an immediate settle time and short sweep periods."""
    return daemon_env(
        tb, tmp_path / "state", **{"CCTV_OPTIMIZER_STRATEGIES__CONNECTION__SETTLE_SECONDS": "0", **SWEEP, **extra}
    )


async def watch_the_sweep_stall(daemon: Daemon) -> None:
    """Samples spanning more than the two sweep periods, with the stale count never going down."""
    await sample_times(daemon, 2)
    await asyncio.sleep(1.2)
    await sample_times(daemon, 1)


def stuck_rows(tb: TestbedProcess) -> list[sqlite3.Row]:
    """The scenario's sessions, as the backend database holds them."""
    with sqlite3.connect(f"file:{tb.database}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(f"SELECT * FROM viewer_sessions WHERE {STUCK} ORDER BY id").fetchall()


def key(row: sqlite3.Row) -> tuple[str, str]:
    """A session's identity in viewer_session_history, which has no session_id in the backend's schema."""
    return (row["ip_address"], row["started_at"])


def history_rows(tb: TestbedProcess) -> dict[tuple[str, str], sqlite3.Row]:
    """viewer_session_history rows of the scenario's sessions, by (address, start); one each."""
    with sqlite3.connect(f"file:{tb.database}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(f"SELECT * FROM viewer_session_history WHERE {STUCK}").fetchall()
    out = {key(r): r for r in rows}
    assert len(out) == len(rows), "one history row per session"
    return out


async def round_of(daemon: Daemon) -> tuple[int, ...]:
    """One scheduled round of the connection strategy; the decision ids it wrote."""
    result = await daemon.engine.request_round(trigger="scheduled", strategy="connection")
    return result.decision_ids


async def test_stuck_sessions_are_ended_like_the_backend_does(testbed: TestbedProcess, tmp_path: Path) -> None:
    """20 sessions silent for 10 min, a sweep that does not end them: ended once as the backend's endSession ends
    them (ended_at = last heartbeat), copied to history, verified, reported; the cooldown holds."""
    before = testbed.state()
    testbed.scenario("stuck_sessions", count=20, age_seconds=600)
    assert testbed.state()["stale_active_sessions"] == 20
    async with running_daemon(env_for(testbed, tmp_path)) as daemon:
        await watch_the_sweep_stall(daemon)
        ids = await round_of(daemon)
        assert len(ids) == 1
        row = daemon.store.decision(ids[0])
        assert row is not None and row.outcome == "applied" and row.action == "end_stuck_sessions"
        assert row.signals["sessions_stuck"] == 20
        assert row.changes[0]["after"] == "0 stale (20 ended, copied to history)"
        after = testbed.state()
        assert after["stale_active_sessions"] == 0
        assert after["active_sessions"] == before["active_sessions"]

        sessions = stuck_rows(testbed)
        history = history_rows(testbed)
        assert len(sessions) == 20 and set(history) == {key(s) for s in sessions}
        for s in sessions:
            assert s["is_active"] == 0
            # what the backend's endSession writes: ended_at is the last heartbeat, the duration up to it
            assert s["ended_at"] == s["last_heartbeat"]
            watched = datetime.strptime(s["last_heartbeat"], FORMAT) - datetime.strptime(s["started_at"], FORMAT)
            assert s["duration_seconds"] == int(watched.total_seconds())
            copy = history[key(s)]
            assert (copy["ended_at"], copy["started_at"], copy["duration_seconds"]) == (
                s["ended_at"],
                s["started_at"],
                s["duration_seconds"],
            )
            assert copy["camera_name"] is not None and copy["camera_id"] == s["camera_id"]
        # and each view of 5 s or more counted in camera_view_stats, as endSession does
        with sqlite3.connect(f"file:{testbed.database}?mode=ro", uri=True) as conn:
            views = conn.execute("SELECT coalesce(sum(total_live_views), 0) FROM camera_view_stats").fetchone()[0]
        assert views >= 20

        finding = daemon.engine.findings["sessions-sweep-stuck"]
        assert finding.evidence["stale_sessions"] == 20

        await daemon.sample_now()
        await daemon.engine.verify_due()
        row = daemon.store.decision(ids[0])
        assert row is not None and row.verdict == "improved"
        assert row.verdict_detail is not None
        assert (row.verdict_detail["before"], row.verdict_detail["after"]) == (20.0, 0.0)

        # the sweep is still off: more sessions get stuck, but the strategy is in its cooldown
        testbed.scenario("stuck_sessions", count=5, age_seconds=600)
        await watch_the_sweep_stall(daemon)
        ids = await round_of(daemon)
        row = daemon.store.decision(ids[0])
        assert row is not None and row.outcome == "skipped_cooldown"
        assert testbed.state()["stale_active_sessions"] == 5
        # the advice stays while the backend is not fixed
        assert daemon.engine.findings["sessions-sweep-stuck"].evidence["ended_by_optimizer"] == 20


async def test_the_sweeps_whole_job_is_done_sessions_short_of_the_stuck_line_too(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """Once the sweep is shown stuck, sessions past the backend's 15 s end too; fresh ones stay active."""
    testbed.scenario("stuck_sessions", count=4, age_seconds=600)
    testbed.scenario("stuck_sessions", count=3, age_seconds=60)  # past 15 s, short of the 120 s stuck line
    async with running_daemon(env_for(testbed, tmp_path)) as daemon:
        await watch_the_sweep_stall(daemon)
        testbed.scenario("stuck_sessions", count=2, age_seconds=1)  # viewers still watching
        ids = await round_of(daemon)
        row = daemon.store.decision(ids[0])
        assert row is not None and row.outcome == "applied" and row.action == "end_stuck_sessions"
        assert row.signals["sessions_stuck"] == 4
        assert row.changes[0]["after"] == "0 stale (7 ended, copied to history)"
    sessions = stuck_rows(testbed)
    ended = [s for s in sessions if s["is_active"] == 0]
    active = [s for s in sessions if s["is_active"] == 1]
    assert len(ended) == 7 and len(active) == 2
    newest_ended = max(datetime.strptime(s["last_heartbeat"], FORMAT) for s in ended)
    oldest_active = min(datetime.strptime(s["last_heartbeat"], FORMAT) for s in active)
    assert oldest_active - newest_ended >= timedelta(seconds=50), "the fresh sessions are the ones left active"
    assert set(history_rows(testbed)) == {key(s) for s in ended}


async def test_observe_and_dry_run_end_no_session(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Observe records the armed strategy, dry_run the planned change; all 20 sessions stay active."""
    testbed.scenario("stuck_sessions", count=20, age_seconds=600)
    async with running_daemon(env_for(testbed, tmp_path / "a", ENABLE_PERFORMANCE_OPTIMIZATION="false")) as daemon:
        await watch_the_sweep_stall(daemon)
        row = daemon.store.decision((await round_of(daemon))[0])
        assert row is not None and row.outcome == "observed" and row.changes == []
        assert "sessions-sweep-stuck" in daemon.engine.findings
    env = env_for(testbed, tmp_path / "b", CCTV_OPTIMIZER_STRATEGIES__CONNECTION__MODE="dry_run")
    async with running_daemon(env) as daemon:
        await watch_the_sweep_stall(daemon)
        row = daemon.store.decision((await round_of(daemon))[0])
        assert row is not None and row.outcome == "dry_run"
        assert row.changes[0]["action"] == "end_stuck_sessions"
        assert row.changes[0]["before"].startswith("20 active")
    assert testbed.state()["stale_active_sessions"] == 20
    assert all(s["is_active"] == 1 for s in stuck_rows(testbed))
    assert history_rows(testbed) == {}


async def test_nothing_happens_while_the_sweep_works(testbed: TestbedProcess, tmp_path: Path) -> None:
    """With no stuck session and no leak, rounds record nothing and no finding is raised."""
    async with running_daemon(env_for(testbed, tmp_path)) as daemon:
        await sample_times(daemon, 3)
        assert await round_of(daemon) == ()
        assert daemon.store.decisions(strategy="connection") == []
        assert [f for f in daemon.engine.findings.values() if f.strategy == "connection"] == []


async def test_a_busy_database_fails_cleanly(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Another writer holding the lock: recorded as failed with the reason, no session ended, no history row."""
    testbed.scenario("stuck_sessions", count=20, age_seconds=600)
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__CONNECTION__BUSY_TIMEOUT_MS="100")
    async with running_daemon(env) as daemon:
        await watch_the_sweep_stall(daemon)
        writer = sqlite3.connect(testbed.database, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            ids = await round_of(daemon)
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        row = daemon.store.decision(ids[0])
        assert row is not None and row.outcome == "failed"
        assert row.error is not None and "database busy" in row.error and "no session was ended" in row.error
        assert [e.status for e in daemon.store.journal()] == ["failed"]
    assert testbed.state()["stale_active_sessions"] == 20
    assert history_rows(testbed) == {}


async def test_close_wait_build_up_is_reported_with_the_numbers(testbed: TestbedProcess, tmp_path: Path) -> None:
    """30 leaked CLOSE_WAIT sockets raise close-wait-leak with the counts; it clears once they are closed."""
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__CONNECTION__CLOSE_WAIT_THRESHOLD="20")
    async with running_daemon(env) as daemon:
        leaked = testbed.scenario("close_wait", count=30)
        assert leaked["close_wait"] == 30
        await sample_times(daemon, 2)
        assert await round_of(daemon) == ()
        finding = daemon.engine.findings["close-wait-leak"]
        assert finding.evidence["close_wait"] == 30 and finding.evidence["threshold"] == 20
        assert leaked["remote_port"] in finding.evidence["ports"]
        testbed.scenario("close_wait_release")
        await sample_times(daemon, 3)
        await round_of(daemon)
        assert "close-wait-leak" not in daemon.engine.findings
        assert daemon.store.decisions(strategy="connection") == []
