"""A backend database at a path holding URI syntax (``%``, ``#``, ``?``) is sampled, checkpointed and pruned."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from config.settings import DatabaseOptions
from metrics import backendtime as bt
from metrics.sqlite import DatabaseReader
from metrics.window import Windows
from strategies.actions import retention as ret
from strategies.base import StrategyContext
from strategies.database import CHECKPOINT_FAMILY, DatabaseStrategy
from testbed.database import Database
from testbed.localtime import LocalClock
from tests.optimizer.fakes import snapshot_of
from tests.strategies.test_database_wal import grow_wal, wal_bytes

OFFSET = 7.0
LIMIT = 1024 * 1024
# each of these means something in a file: URI (escape, fragment, query), and "%41" would decode to "A"
AWKWARD = "cctv %41 #1 ?mode=rw"


@pytest.fixture
def awkward_db(tmp_path: Path) -> Iterator[Path]:
    """The stand-in backend's database, open, in a directory and under a name full of URI syntax."""
    db = Database(tmp_path / AWKWARD / f"{AWKWARD}.db", LocalClock(OFFSET))
    db.open(cameras=2, admin_password="secret")
    yield db.path
    db.close()


def test_the_database_at_an_awkward_path_is_sampled(awkward_db: Path) -> None:
    """The reader opens the file itself (not a file named by the path cut at ``?`` or ``#``) and reads it."""
    sample = DatabaseReader(awkward_db, timezone_offset_hours=OFFSET).read(0.0)
    assert sample.file_bytes == awkward_db.stat().st_size
    assert sample.page_count > 0
    assert sorted(p.name for p in awkward_db.parent.iterdir()) == sorted(
        [awkward_db.name, f"{awkward_db.name}-wal", f"{awkward_db.name}-shm"]
    )


async def test_the_database_strategy_checkpoints_the_database_at_an_awkward_path(awkward_db: Path) -> None:
    """An oversized WAL of that file is planned and truncated by the strategy."""
    grow_wal(awkward_db, 2 * LIMIT)
    strategy = DatabaseStrategy(
        awkward_db, DatabaseOptions(wal_limit_bytes=LIMIT), exit_ratio=0.9, timezone_offset_hours=OFFSET
    )
    strategy._last_optimize = strategy._last_quick_check = time.monotonic()  # only the checkpoint is due
    database = DatabaseReader(awkward_db, timezone_offset_hours=OFFSET).read(0.0)
    context = StrategyContext(
        snapshot=snapshot_of(database=database), windows=Windows(10), armed=(), manual=True, now=100.0
    )
    plan = await strategy.plan(context)
    assert plan is not None and plan.family == CHECKPOINT_FAMILY
    result = await strategy.apply(plan)
    assert result.changed is True
    assert wal_bytes(awkward_db) < LIMIT


def test_old_rows_of_the_database_at_an_awkward_path_are_counted_and_pruned(awkward_db: Path) -> None:
    """Retention counts and deletes the old login attempts of that file (ours and the seeded ones), no others."""
    with sqlite3.connect(awkward_db, isolation_level=None) as conn:
        conn.executemany(
            "INSERT INTO login_attempts (identifier, identifier_type, success, attempt_time) VALUES (?, 'username', 0, ?)",
            [("old", "2020-01-01T00:00:00.000Z")] * 30,
        )
        total = conn.execute("SELECT count(*) FROM login_attempts").fetchone()[0]
    rule = ret.RULES_BY_TABLE["login_attempts"]
    cutoff = bt.cutoff_text(rule.time_base, bt.fixed_zone(OFFSET), datetime.now(UTC), 90)
    [counted] = ret.count_candidates(awkward_db, [rule], {rule.table: cutoff}, 1000)
    assert (counted.table, counted.rows) == ("login_attempts", total) and counted.prunable >= 30
    result = ret.prune_table(
        awkward_db, rule, cutoff, batch_rows=10, max_rows=1000, deadline=time.monotonic() + 30, busy_timeout_ms=1000
    )
    assert (result.deleted, result.stopped) == (counted.prunable, None)
    with sqlite3.connect(awkward_db) as conn:
        assert conn.execute("SELECT count(*) FROM login_attempts").fetchone()[0] == total - counted.prunable
        assert conn.execute("SELECT count(*) FROM login_attempts WHERE identifier = 'old'").fetchone()[0] == 0


def test_only_the_openers_module_opens_sqlite_by_uri() -> None:
    """SQLite URIs are built in metrics/sqlite.py alone (quoted there); elsewhere files are opened through it."""
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(root))
        for package in ("config", "metrics", "strategies", "optimizer")
        for path in sorted((root / package).rglob("*.py"))
        if "uri=True" in path.read_text(encoding="utf-8") and path != root / "metrics" / "sqlite.py"
    ]
    assert offenders == []
