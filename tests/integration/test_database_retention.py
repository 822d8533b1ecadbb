"""The database strategy's findings, opt-in retention pruning and VACUUM against the testbed's real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from optimizer.app import Daemon
from optimizer.state import DecisionRecord
from testbed.harness import TestbedProcess
from testbed.localtime import LocalClock
from tests.harness import api_client, daemon_env, running_daemon, running_testbed, sample_times

OFFSET = 7.0
DAY = 86400.0
OTHERS_OFF = {
    "CCTV_OPTIMIZER_STRATEGIES__MEMORY__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__SETTLE_SECONDS": "0",
}
RETENTION = {
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__RETENTION_ENABLED": "true",
    "CCTV_OPTIMIZER_ENGINE__ALLOW_DISRUPTIVE": "true",
}
BULK_ROWS = 4000


def env_for(tb: TestbedProcess, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Daemon environment with only the database strategy and an immediate settle time."""
    return daemon_env(tb, tmp_path / "state", **{**OTHERS_OFF, **extra})


@contextmanager
def connect(tb: TestbedProcess) -> Iterator[sqlite3.Connection]:
    """A connection to the testbed's database, next to the backend's own."""
    conn = sqlite3.connect(tb.database, timeout=5.0, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def scalar(tb: TestbedProcess, sql: str, *args: Any) -> int:
    """One integer from the testbed's database."""
    with connect(tb) as conn:
        return int(conn.execute(sql, args).fetchone()[0])


def old_login_attempts(tb: TestbedProcess, rows: int = BULK_ROWS, days: float = 150.0) -> None:
    """Login attempts from months ago, the kind nobody cleans (attempt_time ISO UTC, as the backend writes it)."""
    when = LocalClock(OFFSET).iso(days * DAY)
    with connect(tb) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO login_attempts (identifier, identifier_type, success, attempt_time)"
            " VALUES (?, 'username', 0, ?)",
            [("guess-" + "x" * 200, when)] * rows,
        )
        conn.execute("COMMIT")


def database_rows(daemon: Daemon) -> list[DecisionRecord]:
    """The database strategy's history rows, oldest first."""
    return daemon.store.decisions(strategy="database")


def counts(tb: TestbedProcess) -> dict[str, int]:
    """Row counts the tests compare before and after."""
    cutoff = LocalClock(OFFSET).iso(90 * DAY)
    return {
        "old_login_attempts": scalar(tb, "SELECT count(*) FROM login_attempts WHERE attempt_time < ?", cutoff),
        "old_token_audit_logs": scalar(
            tb, "SELECT count(*) FROM playback_token_audit_logs WHERE created_at < ?", LocalClock(OFFSET).utc(90 * DAY)
        ),
        "telegram_archive_uploads": scalar(tb, "SELECT count(*) FROM telegram_archive_uploads"),
        "recording_segments": scalar(tb, "SELECT count(*) FROM recording_segments"),
        "notification_diagnostic_runs": scalar(tb, "SELECT count(*) FROM notification_diagnostic_runs"),
        "active_sessions": scalar(tb, "SELECT count(*) FROM viewer_sessions WHERE is_active = 1"),
    }


def recent_login_attempts(tb: TestbedProcess) -> int:
    """Login attempts inside the retention period (the daemon's own login adds one)."""
    cutoff = LocalClock(OFFSET).iso(90 * DAY)
    return scalar(tb, "SELECT count(*) FROM login_attempts WHERE attempt_time >= ?", cutoff)


async def test_old_rows_are_pruned_in_batches_and_the_effect_is_measured(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """Armed by the age of the oldest rows, one disruptive round prunes them; freelist up is the verdict."""
    old_login_attempts(testbed)
    before = counts(testbed)
    recent_before = recent_login_attempts(testbed)
    assert before["old_login_attempts"] == BULK_ROWS + 2
    assert before["old_token_audit_logs"] == 2
    async with running_daemon(env_for(testbed, tmp_path, **RETENTION)) as daemon:
        await sample_times(daemon, 1)
        result = await daemon.engine.request_round(trigger="scheduled")
        assert len(result.decision_ids) == 1
        after = counts(testbed)
        assert (after["old_login_attempts"], after["old_token_audit_logs"]) == (0, 0)
        # the daemon's own admin login adds a recent row; no recent row is ever deleted
        assert recent_login_attempts(testbed) >= recent_before
        untouched = (
            "telegram_archive_uploads",
            "recording_segments",
            "notification_diagnostic_runs",
            "active_sessions",
        )
        assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
        assert (
            scalar(
                testbed, "SELECT count(*) FROM viewer_sessions WHERE started_at < ?", LocalClock(OFFSET).local(90 * DAY)
            )
            == 0
        )
        await daemon.sample_now()
        await daemon.engine.verify_due()
        [row] = database_rows(daemon)
        assert row.outcome == "applied" and row.mode == "enforce"
        assert row.action == "retention_prune"
        assert row.signals["table_oldest_days:login_attempts"] > 150
        assert row.thresholds["table_oldest_days:login_attempts"]["enter"] == 91.0
        login = next(c for c in row.changes if c["target"] == "table:login_attempts")
        assert (login["action"], login["risk"], login["reversible"]) == ("retention_prune", "disruptive", False)
        rows_before, rows_after = (int(login[k].split()[0]) for k in ("before", "after"))
        assert rows_before - rows_after == before["old_login_attempts"]
        assert rows_after == recent_login_attempts(testbed)
        [entry] = daemon.store.journal()
        assert entry.status == "done" and entry.result is not None
        # 4002 rows at 500 per write transaction
        assert f"login_attempts: deleted {before['old_login_attempts']} rows in 9 batches" in entry.result["detail"]
        assert row.verdict == "improved"
        assert row.verdict_detail is not None and row.verdict_detail["signal"] == "freelist_ratio"
        assert row.verdict_detail["after"] > row.verdict_detail["before"]
    with connect(testbed) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_missing_archive_table_is_reported_not_acted_on(tmp_path: Path) -> None:
    """With the migration-order bug the archive job fails; the finding shows in the engine and the API."""
    with running_testbed(tmp_path / "testbed", "--missing-archive-table") as tb:
        assert tb.state()["archive_job"]["failures"] >= 1
        async with running_daemon(env_for(tb, tmp_path)) as daemon:
            await sample_times(daemon, 2)
            result = await daemon.engine.request_round(trigger="scheduled")
            assert result.decision_ids == ()
            finding = daemon.engine.findings["archive-table-missing"]
            assert finding.strategy == "database"
            assert finding.evidence["history_rows"] == scalar(tb, "SELECT count(*) FROM viewer_session_history")
            assert finding.evidence["oldest_days"] > 190
            async with api_client(daemon) as client, client.get("/strategies") as resp:
                body = await resp.json()
            database = next(s for s in body["strategies"] if s["name"] == "database")
            assert "archive-table-missing" in {f["id"] for f in database["findings"]}


async def test_the_archive_lagging_behind_is_reported(testbed: TestbedProcess, tmp_path: Path) -> None:
    """History rows past 91 days although the archive table exists raise history-archive-behind."""
    with connect(testbed) as conn:
        conn.execute(
            "INSERT INTO viewer_session_history (camera_id, ip_address, started_at, ended_at, duration_seconds)"
            " VALUES (1, '10.0.0.1', ?, ?, 60)",
            (LocalClock(OFFSET).local(100 * DAY), LocalClock(OFFSET).local(100 * DAY - 60)),
        )
    async with running_daemon(env_for(testbed, tmp_path)) as daemon:
        await daemon.engine.request_round(trigger="scheduled")
        assert "history-archive-behind" in daemon.engine.findings
        assert "archive-table-missing" not in daemon.engine.findings


async def test_observe_mode_prunes_nothing(testbed: TestbedProcess, tmp_path: Path) -> None:
    """With optimization switched off the armed strategy is recorded as observed and every row stays."""
    old_login_attempts(testbed, rows=10)
    before = counts(testbed)
    env = env_for(testbed, tmp_path, ENABLE_PERFORMANCE_OPTIMIZATION="false", **RETENTION)
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        await daemon.engine.request_round(trigger="scheduled")
        [row] = database_rows(daemon)
        assert row.outcome == "observed" and row.changes == []
    assert counts(testbed) == before


async def test_dry_run_plans_the_prune_but_deletes_nothing(testbed: TestbedProcess, tmp_path: Path) -> None:
    """In dry_run the prune is recorded table by table and no row is deleted."""
    old_login_attempts(testbed, rows=10)
    before = counts(testbed)
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__DATABASE__MODE="dry_run", **RETENTION)
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        await daemon.engine.request_round(trigger="scheduled")
        [row] = database_rows(daemon)
        assert row.outcome == "dry_run"
        assert "table:login_attempts" in {c["target"] for c in row.changes}
        assert daemon.store.journal() == []
    assert counts(testbed) == before


async def test_pruning_waits_for_disruptive_changes_to_be_allowed(testbed: TestbedProcess, tmp_path: Path) -> None:
    """retention_enabled alone is not enough: without engine.allow_disruptive the plan is blocked."""
    before = counts(testbed)
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__DATABASE__RETENTION_ENABLED="true")
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        await daemon.engine.request_round(trigger="scheduled")
        [row] = database_rows(daemon)
        assert row.outcome == "blocked_disruptive"
    assert counts(testbed) == before


async def test_nothing_happens_when_no_row_is_past_retention(testbed: TestbedProcess, tmp_path: Path) -> None:
    """With retention longer than the oldest row, rounds record nothing and delete nothing."""
    before = counts(testbed)
    env = env_for(
        testbed,
        tmp_path,
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__RETENTION_DAYS="3650",
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__ARCHIVE_RETENTION_DAYS="3650",
        **RETENTION,
    )
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 2)
        result = await daemon.engine.request_round(trigger="scheduled")
        assert result.decision_ids == ()
    assert counts(testbed) == before


async def test_no_second_prune_within_the_cooldown(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Old rows that appear again inside the cooldown are recorded as skipped and kept."""
    async with running_daemon(env_for(testbed, tmp_path, **RETENTION)) as daemon:
        await sample_times(daemon, 1)
        await daemon.engine.request_round(trigger="scheduled")
        old_login_attempts(testbed, rows=10)
        await sample_times(daemon, 2)
        await daemon.engine.request_round(trigger="scheduled")
        first, second = database_rows(daemon)
        assert first.outcome == "applied"
        assert second.outcome == "skipped_cooldown"
    assert counts(testbed)["old_login_attempts"] == 10


async def test_a_busy_database_fails_the_prune_and_keeps_every_row(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A writer holding the lock makes the prune fail with the reason; the journal says failed; no row is lost."""
    old_login_attempts(testbed, rows=10)
    before = counts(testbed)
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__DATABASE__BUSY_TIMEOUT_MS="50", **RETENTION)
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        with connect(testbed) as holder:
            holder.execute("BEGIN IMMEDIATE")
            try:
                await daemon.engine.request_round(trigger="scheduled")
            finally:
                holder.execute("ROLLBACK")
        [row] = database_rows(daemon)
        assert row.outcome == "failed"
        assert row.error is not None and "database busy" in row.error
        assert [e.status for e in daemon.store.journal()] == ["failed"]
    assert counts(testbed) == before


def window_around_now(offset_hours: float) -> str:
    """A two-hour quiet window centred on the backend's local time now."""
    local = datetime.now(UTC) + timedelta(hours=offset_hours)
    return f"{local - timedelta(hours=1):%H:%M}-{local + timedelta(hours=1):%H:%M}"


async def test_vacuum_in_the_quiet_window_returns_the_free_pages(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Free pages over the ratio inside the window: one VACUUM, the freelist empties, the backend keeps serving."""
    old_login_attempts(testbed)
    with connect(testbed) as conn:
        conn.execute("DELETE FROM login_attempts WHERE identifier LIKE 'guess-%'")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        free_before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    assert free_before > 100
    env = env_for(
        testbed,
        tmp_path,
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__VACUUM_ENABLED="true",
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__VACUUM_WINDOW=window_around_now(OFFSET),
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__VACUUM_MIN_FREELIST_RATIO="0.1",
        CCTV_OPTIMIZER_ENGINE__ALLOW_DISRUPTIVE="true",
    )
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        result = await daemon.engine.request_round(trigger="scheduled")
        assert len(result.decision_ids) == 1
        assert scalar(testbed, "PRAGMA freelist_count") == 0
        await daemon.sample_now()
        await daemon.engine.verify_due()
        [row] = database_rows(daemon)
        assert row.outcome == "applied" and row.action == "vacuum"
        assert row.verdict == "improved"
        assert row.verdict_detail is not None and row.verdict_detail["after"] == 0.0
    assert testbed.request("GET", "/api/areas/public").status == 200
    with connect(testbed) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
