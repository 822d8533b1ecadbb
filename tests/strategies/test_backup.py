"""The database backup action on real SQLite files: consistent copies, limits, and what it leaves alone."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from strategies.actions.backup import backups_of, room_for, take_backup
from strategies.base import StrategyDeferred

GIB = 1 << 30


def database(tmp_path: Path, rows: int = 200) -> Path:
    """A WAL-mode database closed cleanly (no -wal/-shm), as the backend leaves it when it stops."""
    path = tmp_path / "data" / "cctv.db"
    path.parent.mkdir()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("y" * 100,)] * rows)
    conn.close()
    return path


def test_a_backup_is_a_standalone_checked_copy_and_creates_nothing_next_to_the_database(tmp_path: Path) -> None:
    """The copy holds every row, is in rollback-journal mode (one file), mode 0600; nothing appears next to the
    closed database."""
    db = database(tmp_path)
    made = take_backup(db, tmp_path / "backups", keep=3, max_bytes=GIB, busy_timeout_ms=100, wall=lambda: 0.0)
    assert made.path.name == "cctv-19700101T000000Z.db" and made.bytes == made.path.stat().st_size
    copy = sqlite3.connect(f"file:{made.path}?mode=ro", uri=True)
    try:
        assert copy.execute("SELECT count(*) FROM t").fetchone()[0] == 200
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        copy.close()
    assert made.path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in db.parent.iterdir()) == ["cctv.db"]
    assert sorted(p.name for p in made.path.parent.iterdir()) == [made.path.name]


def test_the_oldest_backups_go_to_keep_the_count_and_the_size(tmp_path: Path) -> None:
    """Three backups taken in the same second with keep=2: the two newest stay, ordered by when they were made."""
    db = database(tmp_path)
    made = [
        take_backup(db, tmp_path / "b", keep=2, max_bytes=GIB, busy_timeout_ms=100, wall=lambda: 0.0) for _ in range(3)
    ]
    assert [m.path.name for m in made] == [
        "cctv-19700101T000000Z.db",
        "cctv-19700101T000000Z-2.db",
        "cctv-19700101T000000Z-3.db",
    ]
    assert made[2].removed == ("cctv-19700101T000000Z.db",)
    assert backups_of(db, tmp_path / "b") == [m.path for m in made[1:]]
    # a size limit that holds one backup only
    size = made[2].bytes
    last = take_backup(db, tmp_path / "b", keep=10, max_bytes=size + size // 2, busy_timeout_ms=100, wall=lambda: 1.0)
    assert backups_of(db, tmp_path / "b") == [last.path]


def test_no_room_means_no_backup_and_a_deferral(tmp_path: Path) -> None:
    """A database larger than the limit, or a file system without the space: StrategyDeferred, nothing written, and
    the old backups stay."""
    db = database(tmp_path)
    old = take_backup(db, tmp_path / "b", keep=3, max_bytes=GIB, busy_timeout_ms=100, wall=lambda: 0.0)
    assert room_for(db, tmp_path / "b", keep=3, max_bytes=1024).problem is not None
    with pytest.raises(StrategyDeferred, match="more than the backup limit"):
        take_backup(db, tmp_path / "b", keep=3, max_bytes=1024, busy_timeout_ms=100)
    with pytest.raises(StrategyDeferred, match="has only"):
        take_backup(db, tmp_path / "b", keep=3, max_bytes=GIB, busy_timeout_ms=100, free_bytes=lambda _p: 10)
    assert os.listdir(tmp_path / "b") == [old.path.name]
