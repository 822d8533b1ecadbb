"""The database strategy's WAL checkpoint on a real SQLite file in WAL mode: the live WAL decides, and its pacing."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import DatabaseOptions
from metrics.sqlite import DatabaseReader
from metrics.window import Windows
from strategies.base import StrategyContext
from strategies.database import CHECKPOINT_FAMILY, CheckpointWal, DatabaseStrategy
from testbed.database import Database
from testbed.localtime import LocalClock
from tests.optimizer.fakes import snapshot_of

OFFSET = 7.0
LIMIT = 1024 * 1024


@pytest.fixture
def backend_db(tmp_path: Path) -> Iterator[Path]:
    """The stand-in backend's database, kept open as the backend keeps it while it runs."""
    db = Database(tmp_path / "cctv.db", LocalClock(OFFSET))
    db.open(cameras=2, admin_password="secret")
    with sqlite3.connect(db.path) as conn:  # the seed rows' WAL is copied back: each test starts from an empty WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    yield db.path
    db.close()


def wal_bytes(path: Path) -> int:
    """Bytes of the database's WAL file."""
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


def grow_wal(path: Path, target: int) -> None:
    """Write rows while a reader holds a snapshot, so the backend's own checkpoints cannot reset the WAL."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN")
    holder.execute("SELECT count(*) FROM cameras").fetchone()
    try:
        with sqlite3.connect(path) as writer:
            while wal_bytes(path) < target:
                writer.executemany(
                    "INSERT INTO audit_logs (user_id, action, details, ip_address) VALUES (NULL, ?, ?, '127.0.0.1')",
                    [("WAL_GROWTH", "x" * 2000)] * 200,
                )
                writer.commit()
    finally:
        holder.execute("COMMIT")
        holder.close()


def context(path: Path, *, manual: bool) -> StrategyContext:
    """A planning context over a real reading of the file, taken now."""
    database = DatabaseReader(path, timezone_offset_hours=OFFSET).read(0.0)
    snapshot = snapshot_of(database=database)
    return StrategyContext(snapshot=snapshot, windows=Windows(10), armed=(), manual=manual, now=100.0)


def strategy(path: Path) -> DatabaseStrategy:
    """The strategy with a 1 MiB WAL limit."""
    return DatabaseStrategy(path, DatabaseOptions(wal_limit_bytes=LIMIT), exit_ratio=0.9, timezone_offset_hours=OFFSET)


async def test_a_requested_checkpoint_planned_on_a_small_wal_truncates_the_wal_it_finds_over_the_limit(
    backend_db: Path,
) -> None:
    """Planned when the WAL was small (a PASSIVE pass would do), applied after it grew: it is truncated anyway."""
    strat = strategy(backend_db)
    grow_wal(backend_db, LIMIT // 2)
    plan = await strat.plan(context(backend_db, manual=True))
    assert plan is not None and plan.reason.startswith("requested: WAL is")
    assert plan.family == CHECKPOINT_FAMILY and plan.actions[0] == CheckpointWal(limit=LIMIT, truncate=False)
    grow_wal(backend_db, 3 * LIMIT)
    grown = wal_bytes(backend_db)
    result = await strat.apply(plan)
    assert wal_bytes(backend_db) < LIMIT
    change = next(c for c in result.changes if c.action == "wal_checkpoint")
    assert change.after == "0 B" and change.before != change.after
    assert "checkpoint TRUNCATE" in result.detail
    assert grown > LIMIT


async def test_a_checkpoint_that_moves_nothing_reports_no_change(backend_db: Path) -> None:
    """A PASSIVE pass on a small WAL leaves its size as it was: the result says nothing changed."""
    strat = strategy(backend_db)
    grow_wal(backend_db, LIMIT // 4)
    strat._last_optimize = strat._last_quick_check = time.monotonic()  # only the checkpoint is due
    plan = await strat.plan(context(backend_db, manual=True))
    assert plan is not None and [c.action for c in plan.changes] == ["wal_checkpoint"]
    result = await strat.apply(plan)
    assert result.changed is False


async def test_checkpoint_retention_and_vacuum_are_paced_as_separate_families(backend_db: Path) -> None:
    """An oversized WAL is planned in the checkpoint family, whatever retention did before it."""
    grow_wal(backend_db, 2 * LIMIT)
    strat = DatabaseStrategy(
        backend_db,
        DatabaseOptions(wal_limit_bytes=LIMIT, retention_enabled=True),
        exit_ratio=0.9,
        timezone_offset_hours=OFFSET,
    )
    plan = await strat.plan(context(backend_db, manual=False))
    assert plan is not None and plan.family == CHECKPOINT_FAMILY and plan.reason.startswith("WAL is")
