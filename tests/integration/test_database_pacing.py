"""Retention pruning and WAL checkpoints are paced apart, against the testbed's real SQLite file."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from testbed.harness import TestbedProcess
from testbed.localtime import LocalClock
from tests.harness import api_client, daemon_env, running_daemon, sample_times

OFFSET = 7.0
DAY = 86400.0
LIMIT = 2 * 1024 * 1024


def wal_size(tb: TestbedProcess) -> int:
    """Bytes of the testbed database's WAL file."""
    try:
        return os.stat(f"{tb.database}-wal").st_size
    except FileNotFoundError:
        return 0


def old_login_attempts(tb: TestbedProcess, rows: int = 1000) -> None:
    """Login attempts from 150 days ago, the kind nobody cleans (attempt_time ISO UTC, as the backend writes it)."""
    when = LocalClock(OFFSET).iso(150 * DAY)
    conn = sqlite3.connect(tb.database, timeout=5.0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO login_attempts (identifier, identifier_type, success, attempt_time)"
            " VALUES ('guess', 'username', 0, ?)",
            [(when,)] * rows,
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_retention_run_does_not_hold_an_oversized_wal_back(testbed: TestbedProcess, tmp_path: Path) -> None:
    """With a budget of one action an hour, a retention run first, then a WAL past its limit: it is truncated."""
    old_login_attempts(testbed)
    with sqlite3.connect(testbed.database) as conn:  # the seed rows' WAL is copied back: retention comes first
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert wal_size(testbed) < LIMIT
    env = daemon_env(
        testbed,
        tmp_path / "state",
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__ENABLED="false",
        CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED="false",
        CCTV_OPTIMIZER_STRATEGIES__CONNECTION__ENABLED="false",
        CCTV_OPTIMIZER_STRATEGIES__CACHE__ENABLED="false",
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__SETTLE_SECONDS="0",
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__RETENTION_ENABLED="true",
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES=str(LIMIT),
        CCTV_OPTIMIZER_ENGINE__ALLOW_DISRUPTIVE="true",
        CCTV_OPTIMIZER_ENGINE__BUDGET_ACTIONS="1",
    )
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        pruned = await daemon.engine.request_round(trigger="scheduled", strategy="database")
        [first] = [daemon.store.decision(i) for i in pruned.decision_ids]
        assert first is not None and (first.action, first.outcome) == ("retention_prune", "applied")

        testbed.scenario("wal_growth", mb=4)
        assert wal_size(testbed) > LIMIT
        await sample_times(daemon, 2)
        checkpointed = await daemon.engine.request_round(trigger="scheduled", strategy="database")
        [second] = [daemon.store.decision(i) for i in checkpointed.decision_ids]
        assert second is not None and (second.action, second.outcome) == ("wal_checkpoint", "applied")
        assert wal_size(testbed) < LIMIT
        rt = daemon.engine.runtimes["database"]
        assert daemon.engine.pacer.budget_left(rt, "retention") == 0
        assert daemon.engine.pacer.budget_left(rt, "checkpoint") == 0
        assert daemon.engine.pacer.cooldown_left(rt, "vacuum") == 0
        async with api_client(daemon) as http, http.get("/strategies") as resp:
            [view] = [s for s in (await resp.json())["strategies"] if s["name"] == "database"]
        assert set(view["pacing"]) == {"checkpoint", "retention"}
        assert view["pacing"]["checkpoint"]["budgetLeft"] == 0
        assert view["pacing"]["retention"]["cooldownLeftSeconds"] > 0
