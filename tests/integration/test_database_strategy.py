"""The database strategy against the testbed's real SQLite file in WAL mode."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from testbed.harness import TestbedProcess
from tests.harness import (
    OBSERVE_AND_DRY_RUN_COLUMNS,
    daemon_env,
    observe_and_dry_run_cases,
    running_daemon,
    sample_times,
)

LIMIT = 2 * 1024 * 1024


def wal_size(tb: TestbedProcess) -> int:
    """Bytes of the testbed database's WAL file."""
    try:
        return os.stat(f"{tb.database}-wal").st_size
    except FileNotFoundError:
        return 0


def env_for(tb: TestbedProcess, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Daemon environment with a small WAL limit and an immediate settle time."""
    return daemon_env(
        tb,
        tmp_path / "state",
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES=str(LIMIT),
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__SETTLE_SECONDS="0",
        **extra,
    )


async def test_grown_wal_is_truncated_once_the_trigger_holds(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A WAL past its limit is checkpointed and truncated in the round after N of M samples, and the row says so."""
    testbed.scenario("wal_growth", mb=4)
    before = wal_size(testbed)
    assert before > LIMIT
    async with running_daemon(env_for(testbed, tmp_path)) as daemon:
        # one sample above the limit is not enough (N=2 of M=3)
        result = await daemon.engine.request_round(trigger="scheduled", strategy="database")
        assert result.decision_ids == ()
        assert wal_size(testbed) >= LIMIT
        await sample_times(daemon, 1)
        result = await daemon.engine.request_round(trigger="scheduled", strategy="database")
        assert len(result.decision_ids) == 1
        assert wal_size(testbed) < LIMIT
        await daemon.sample_now()
        await daemon.engine.verify_due()
        row = daemon.store.decision(result.decision_ids[0])
        assert row is not None
        assert row.strategy == "database"
        assert row.outcome == "applied"
        assert row.mode == "enforce"
        assert row.signals["wal_bytes"] >= before * 0.9
        assert row.thresholds["wal_bytes"]["enter"] == LIMIT
        wal_change = next(c for c in row.changes if c["action"] == "wal_checkpoint")
        assert wal_change["after"] == "0 B"
        assert row.verdict == "improved"
        assert row.verdict_detail is not None and row.verdict_detail["after"] < LIMIT
        journal = daemon.store.journal()
        assert [e.status for e in journal if e.strategy == "database"] == ["done"]
    with sqlite3.connect(testbed.database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(OBSERVE_AND_DRY_RUN_COLUMNS, observe_and_dry_run_cases("database", "wal_checkpoint"))
async def test_observe_and_dry_run_change_nothing(
    testbed: TestbedProcess,
    tmp_path: Path,
    setting: dict[str, str],
    outcome: str,
    mode: str,
    first_action: list[str],
) -> None:
    """ENABLE_PERFORMANCE_OPTIMIZATION=false records the armed strategy only; in dry_run the plan is recorded with
    its changes. Either way the WAL keeps its size and nothing is journaled."""
    testbed.scenario("wal_growth", mb=4)
    before = wal_size(testbed)
    async with running_daemon(env_for(testbed, tmp_path, **setting)) as daemon:
        await sample_times(daemon, 2)
        result = await daemon.engine.request_round(trigger="scheduled", strategy="database")
        row = daemon.store.decision(result.decision_ids[0])
        assert row is not None and row.outcome == outcome and row.mode == mode
        assert [c["action"] for c in row.changes][:1] == first_action
        assert [e for e in daemon.store.journal() if e.strategy == "database"] == []
    assert wal_size(testbed) >= before


async def test_nothing_happens_below_the_limit(testbed: TestbedProcess, tmp_path: Path) -> None:
    """With the WAL under its limit, rounds record nothing."""
    async with running_daemon(env_for(testbed, tmp_path)) as daemon:
        await sample_times(daemon, 3)
        result = await daemon.engine.request_round(trigger="scheduled", strategy="database")
        assert result.decision_ids == ()
        assert daemon.store.decisions(strategy="database") == []


async def test_no_second_action_within_the_cooldown(testbed: TestbedProcess, tmp_path: Path) -> None:
    """After acting, a WAL grown again inside the cooldown is recorded as skipped, not checkpointed."""
    testbed.scenario("wal_growth", mb=4)
    async with running_daemon(env_for(testbed, tmp_path)) as daemon:
        await sample_times(daemon, 1)
        first = await daemon.engine.request_round(trigger="scheduled", strategy="database")
        assert daemon.store.decision(first.decision_ids[0]).outcome == "applied"  # type: ignore[union-attr]
        testbed.scenario("wal_growth", mb=4)
        grown = wal_size(testbed)
        await sample_times(daemon, 2)
        second = await daemon.engine.request_round(trigger="scheduled", strategy="database")
        row = daemon.store.decision(second.decision_ids[0])
        assert row is not None and row.outcome == "skipped_cooldown"
        assert wal_size(testbed) >= grown * 0.9


async def test_a_reader_holding_the_wal_defers_the_truncate_and_it_runs_once_released(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """A pinned WAL gives a deferred row (no failure, attempt given back) and a finding; the release is acted on."""
    testbed.scenario("wal_growth", mb=4)
    before = wal_size(testbed)
    reader = sqlite3.connect(testbed.database, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM cameras").fetchone()
    try:
        env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__DATABASE__BUSY_TIMEOUT_MS="50")
        async with running_daemon(env) as daemon:
            rt = daemon.engine.runtimes["database"]
            budget = daemon.engine.pacer.budget_left(rt)
            await sample_times(daemon, 1)
            result = await daemon.engine.request_round(trigger="scheduled", strategy="database")
            row = daemon.store.decision(result.decision_ids[0])
            assert row is not None and row.outcome == "deferred"
            assert row.error is not None and "a reader holds the WAL" in row.error
            assert [e.status for e in daemon.store.journal() if e.strategy == "database"] == ["done"]
            # not a failure, and the attempt was given back: no cooldown, no budget spent
            assert rt.consecutive_failures == 0
            assert daemon.engine.pacer.cooldown_left(rt) == 0
            assert daemon.engine.pacer.budget_left(rt) == budget
            assert wal_size(testbed) >= before

            # the backend keeps writing while the reader stays: the WAL grows, and no new plan is made
            testbed.scenario("wal_growth", mb=6)
            assert wal_size(testbed) > before
            await sample_times(daemon, 1)
            result = await daemon.engine.request_round(trigger="scheduled", strategy="database")
            assert result.decision_ids == ()
            finding = daemon.engine.findings["wal-held-by-reader"]
            assert finding.evidence["frames_copied"] < finding.evidence["frames"]

            reader.execute("COMMIT")
            await sample_times(daemon, 1)
            result = await daemon.engine.request_round(trigger="scheduled", strategy="database")
            row = daemon.store.decision(result.decision_ids[0])
            assert row is not None and row.outcome == "applied"
            assert wal_size(testbed) < LIMIT
            await daemon.sample_now()
            await daemon.engine.request_round(trigger="scheduled", strategy="database")
            assert "wal-held-by-reader" not in daemon.engine.findings
    finally:
        if reader.in_transaction:
            reader.execute("COMMIT")
        reader.close()
    with sqlite3.connect(testbed.database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
