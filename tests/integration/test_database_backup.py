"""A backup before every retention run and VACUUM, within its limits, and its restore with one command."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from testbed.harness import TestbedProcess
from tests.harness import ROOT, Mount, running_daemon, running_testbed
from tests.integration.test_database_retention import RETENTION, env_for, old_login_attempts, scalar

ROWS = 300


def old_rows(tb: TestbedProcess) -> int:
    """Login attempts older than the 90-day retention."""
    return scalar(tb, "SELECT count(*) FROM login_attempts WHERE attempt_time < datetime('now', '-100 days')")


def backup_rows(path: Path) -> int:
    """Login attempts in a backup file, read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM login_attempts").fetchone()[0])
    finally:
        conn.close()


def restore_command(env: dict[str, str], backup: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``cctv-optimizer restore-backup BACKUP`` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "restore-backup", str(backup), *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_retention_backs_up_first_names_the_backup_and_keeps_the_newest(tmp_path: Path) -> None:
    """Each retention run first writes a consistent backup (the rows it then deletes are in it) into the state
    directory's backups/, names it in the history row, and keeps at most backup_keep of them; the one command
    restores it once the backend is stopped, keeping what it replaced, and refuses while the backend runs."""
    with running_testbed(tmp_path / "testbed") as tb:
        env = env_for(
            tb,
            tmp_path,
            **RETENTION,
            CCTV_OPTIMIZER_STRATEGIES__DATABASE__BACKUP_KEEP="2",
            CCTV_OPTIMIZER_ENGINE__COOLDOWN_SECONDS="0",
            CCTV_OPTIMIZER_STRATEGIES__DATABASE__RETENTION_MAX_ROWS_PER_RUN="100",
        )
        old_login_attempts(tb, rows=ROWS)
        rows = []
        counts = []  # login attempts before each run, and at the end
        async with running_daemon(env) as daemon:
            for _ in range(3):
                counts.append(scalar(tb, "SELECT count(*) FROM login_attempts"))
                await daemon.sample_now()
                result = await daemon.engine.request_round(trigger="manual", strategy="database", manual=True)
                rows += [daemon.store.decision(i) for i in result.decision_ids]
        counts.append(scalar(tb, "SELECT count(*) FROM login_attempts"))
        refused = restore_command(env, Path(rows[-1].changes[0]["after"]))  # type: ignore[union-attr]
    backups = sorted((tmp_path / "state" / "backups").glob("cctv-2*.db"), key=lambda p: p.stat().st_mtime_ns)
    named = [Path(r.changes[0]["after"]) for r in rows if r is not None]
    assert [(r.action, r.outcome) for r in rows if r is not None] == [("retention_prune", "applied")] * 3
    assert [r.changes[0]["action"] for r in rows if r is not None] == ["backup"] * 3
    assert counts[0] > counts[1] > counts[2] > counts[3]
    assert backups == named[1:]  # backup_keep=2: the oldest went
    assert [backup_rows(p) for p in named[1:]] == counts[1:3]  # each holds the rows its run then deleted
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in backups)
    assert refused.returncode == 1 and "is open by process" in refused.stderr
    # the backend stopped: one command puts the rows back
    done = restore_command(env, named[-1])
    assert done.returncode == 0, done.stderr
    assert f"restored {named[-1]} into {tb.database}" in done.stdout
    kept = sorted((tmp_path / "state" / "backups").glob("cctv-before-restore-*.db"))
    assert len(kept) == 1 and backup_rows(kept[0]) == counts[3]
    with running_testbed(tmp_path / "testbed") as again:
        assert scalar(again, "SELECT count(*) FROM login_attempts") == counts[2]


async def test_without_room_for_a_backup_nothing_is_pruned_and_a_finding_says_why(
    testbed: TestbedProcess, tmp_path: Path, tmpfs: Mount
) -> None:
    """A backup directory on a full little file system: retention plans nothing, deletes nothing, and the
    finding database-backup-no-room names the sizes."""
    small = tmpfs("size=1m")
    env = env_for(testbed, tmp_path, **RETENTION, CCTV_OPTIMIZER_STRATEGIES__DATABASE__BACKUP_DIRECTORY=str(small))
    old_login_attempts(testbed, rows=ROWS)
    waiting = old_rows(testbed)
    async with running_daemon(env) as daemon:
        rows = []
        for _ in range(2):  # the first round finds there is no room, the next one reports it
            await daemon.sample_now()
            result = await daemon.engine.request_round(trigger="manual", strategy="database", manual=True)
            rows += [daemon.store.decision(i) for i in result.decision_ids]
        finding = daemon.engine.findings.get("database-backup-no-room")
    assert old_rows(testbed) == waiting
    assert all(r is not None and r.action != "retention_prune" for r in rows)
    assert finding is not None and f"{small} has only" in finding.summary
    assert finding.evidence["needed_bytes"] > 0 and os.listdir(small) == []
