"""SIGTERM while an apply is blocked: the daemon stops cleanly within a bound and leaves nothing unaccounted for.

The blocked write is a SQLite checkpoint in a worker thread, which cannot be interrupted: the stop cuts the
round after its grace, and the process exits when the checkpoint's own busy timeout ends it. The journal
intent stays open on purpose, so that the next start checks what really happened (the reconcile) instead of
guessing at stop time.

kill -9 mid-apply and the restart that reconciles the journal are tests/system/test_crash_recovery.py;
SIGHUP with an invalid config and SIGHUP storms are tests/system/test_lifecycle.py.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from testbed.harness import TestbedProcess, wait_until
from tests.chaos.faults import report
from tests.harness import daemon_process, decision_rows, journal_rows

STOP_GRACE_S = 1
BUSY_TIMEOUT_S = 4


def test_sigterm_mid_apply_stops_cleanly_and_the_restart_reconciles(testbed: TestbedProcess, tmp_path: Path) -> None:
    """SIGTERM while a checkpoint waits on a writer: exit 0 within grace + busy timeout, no traceback, the
    round cut is logged, the history is intact, and the next start reconciles the open intent."""
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
        # the TRUNCATE checkpoint waits this long for the writer below (a reader with an older
        # snapshot would make the strategy defer instead of waiting): the stop has to cut it short
        "CCTV_OPTIMIZER_STRATEGIES__DATABASE__BUSY_TIMEOUT_MS": str(BUSY_TIMEOUT_S * 1000),
        "CCTV_OPTIMIZER_ENGINE__APPLY_TIMEOUT_SECONDS": "120",
        "CCTV_OPTIMIZER_ENGINE__STOP_TIMEOUT_SECONDS": str(STOP_GRACE_S),
    }
    testbed.scenario("wal_growth", mb=4)
    writer = sqlite3.connect(testbed.database, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # holds the write lock: a TRUNCATE checkpoint waits its busy timeout
    try:
        with daemon_process(env) as first:
            first.wait_event("daemon_started")
            wait_until(lambda: [r for r in journal_rows(state / "state.db") if r[1] == "intent"] or None, timeout=30)
            started = time.monotonic()
            first.proc.send_signal(signal.SIGTERM)
            code = first.proc.wait(timeout=30)
            took = time.monotonic() - started
            first.wait_event("daemon_stopped")
            cut = first.wait_event("round_cut_at_stop")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert code == 0
    assert took < STOP_GRACE_S + BUSY_TIMEOUT_S + 10  # bounded: not the apply timeout (120 s)
    assert cut["grace_seconds"] == STOP_GRACE_S
    assert "Traceback" not in "".join(first.raw)
    intents = [i for i, status in journal_rows(state / "state.db") if status == "intent"]
    assert len(intents) == 1
    history = decision_rows(state / "state.db")
    assert history[-1][1] == "applied"  # recorded before the write began
    with daemon_process(env) as second:
        event = second.wait_event("journal_reconciled")
        second.wait_event("daemon_started")
        assert second.stop() == 0
    assert event["journal_id"] == intents[0] and event["status"] == "reconciled"
    after = decision_rows(state / "state.db")
    lost = len({r[0] for r in history} - {r[0] for r in after})
    assert lost == 0
    assert next(r for r in after if r[0] == history[-1][0])[1] == "interrupted"
    assert "Traceback" not in "".join(second.raw)
    with sqlite3.connect(testbed.database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    report("SIGTERM mid-apply", exit_code=code, stop_seconds=took, reconciled=event["status"], rows_lost=lost)
