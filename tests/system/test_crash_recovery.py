"""kill -9 in the middle of an apply, then a restart: the journal intent is reconciled and nothing is lost."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from testbed.harness import TestbedProcess, wait_until
from tests.harness import daemon_process, decision_rows, journal_rows


def test_kill_9_mid_apply_is_reconciled_at_restart(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A daemon killed while a checkpoint waits on a writer leaves an intent; the next start reconciles it."""
    state = tmp_path / "state"
    env = {
        **testbed.env,
        "CCTV_OPTIMIZER_API__LISTEN": "127.0.0.1:0",
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(state),
        "OPTIMIZATION_INTERVAL": "1000",
        "CCTV_OPTIMIZER_SAMPLE_INTERVAL": "200",
        "CCTV_OPTIMIZER_DETECTION__SAMPLES_REQUIRED": "1",
        "CCTV_OPTIMIZER_DETECTION__WINDOW_SAMPLES": "1",
        "CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES": str(2 * 1024 * 1024),
        # the TRUNCATE checkpoint will wait this long for the writer below (a reader with an older
        # snapshot would make the strategy defer instead of waiting): long enough to be killed mid-apply
        "CCTV_OPTIMIZER_STRATEGIES__DATABASE__BUSY_TIMEOUT_MS": "60000",
        "CCTV_OPTIMIZER_ENGINE__APPLY_TIMEOUT_SECONDS": "120",
    }
    testbed.scenario("wal_growth", mb=4)
    writer = sqlite3.connect(testbed.database, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # holds the write lock: a TRUNCATE checkpoint waits its busy timeout
    try:
        with daemon_process(env) as first:
            first.wait_event("daemon_started")
            intent = wait_until(
                lambda: [r for r in journal_rows(state / "state.db") if r[1] == "intent"] or None, timeout=30
            )
            first.proc.send_signal(signal.SIGKILL)
            assert first.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    decisions_before = decision_rows(state / "state.db")
    assert decisions_before and decisions_before[-1][1] == "applied"  # recorded before the write began
    with daemon_process(env) as second:
        event = second.wait_event("journal_reconciled")
        assert event["journal_id"] == intent[0][0]
        assert event["status"] == "reconciled"
        assert "WAL" in event["note"]
        second.wait_event("daemon_started")
        assert second.stop() == 0
    after = decision_rows(state / "state.db")
    interrupted = next(r for r in after if r[0] == decisions_before[-1][0])
    assert interrupted[1] == "interrupted"
    assert [r[0] for r in after][: len(decisions_before)] == [r[0] for r in decisions_before]  # nothing lost
    assert dict(journal_rows(state / "state.db"))[intent[0][0]] == "reconciled"
    with sqlite3.connect(testbed.database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
