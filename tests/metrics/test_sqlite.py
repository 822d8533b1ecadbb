"""Tests for metrics.sqlite: DatabaseReader on a real WAL database held open by a writer."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metrics.backendtime import TimeBase
from metrics.errors import SamplingError
from metrics.sqlite import DatabaseReader, read_database
from metrics.tables import TableSpec

UTC_BASE = TimeBase.UTC

OFFSET_HOURS = 7.0
STUCK_SECONDS = 120.0

SCHEMA = (
    """CREATE TABLE viewer_sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL UNIQUE,
        camera_id INTEGER NOT NULL,
        started_at DATETIME NOT NULL,
        last_heartbeat DATETIME NOT NULL,
        ended_at DATETIME,
        is_active INTEGER NOT NULL DEFAULT 1
    )""",
    "CREATE TABLE login_attempts (id INTEGER PRIMARY KEY, username TEXT, attempt_time DATETIME NOT NULL)",
    "CREATE TABLE token_blacklist (id INTEGER PRIMARY KEY, token_hash TEXT, expires_at DATETIME NOT NULL)",
    "CREATE TABLE bulk (id INTEGER PRIMARY KEY, payload BLOB)",
)


def local_ago(seconds: float, offset_hours: float = OFFSET_HOURS) -> str:
    """The backend's local-time text for ``seconds`` ago in a zone ``offset_hours`` from UTC."""
    moment = datetime.now(UTC) + timedelta(hours=offset_hours) - timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def add_session(
    conn: sqlite3.Connection, sid: str, heartbeat_age: float, *, active: bool = True, offset_hours: float = OFFSET_HOURS
) -> None:
    """Insert one viewer session whose last heartbeat is ``heartbeat_age`` seconds old (local time)."""
    conn.execute(
        "INSERT INTO viewer_sessions (session_id, camera_id, started_at, last_heartbeat, is_active)"
        " VALUES (?, 1, ?, ?, ?)",
        (sid, local_ago(heartbeat_age + 60, offset_hours), local_ago(heartbeat_age, offset_hours), int(active)),
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the database lives."""
    return tmp_path / "data" / "cctv.db"


@pytest.fixture
def writer(db_path: Path) -> Iterator[sqlite3.Connection]:
    """The backend's writer connection: WAL mode, schema, sessions, some freed pages; kept open."""
    db_path.parent.mkdir()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # keep the WAL so its size can be checked
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO bulk (payload) VALUES (randomblob(3000))", [()] * 200)
    conn.execute("COMMIT")
    conn.execute("DELETE FROM bulk WHERE id > 50")
    add_session(conn, "fresh", 10)
    add_session(conn, "late", 600)
    add_session(conn, "oldest", 3600)
    add_session(conn, "ended", 86_400, active=False)
    conn.execute("INSERT INTO login_attempts (username, attempt_time) VALUES ('a', '2026-01-02 03:04:05')")
    conn.execute("INSERT INTO login_attempts (username, attempt_time) VALUES ('b', '2025-12-31 23:59:59')")
    yield conn
    conn.close()


def reader(
    path: Path,
    *,
    timezone_offset_hours: float = OFFSET_HOURS,
    tables: tuple[tuple[str, str], ...] | tuple[TableSpec, ...] = (),
    table_interval_seconds: float = 300.0,
) -> DatabaseReader:
    """A reader with a short busy timeout and the test's offset and stuck limit unless overridden."""
    return DatabaseReader(
        path,
        busy_timeout_ms=50,
        timezone_offset_hours=timezone_offset_hours,
        stuck_session_seconds=STUCK_SECONDS,
        table_interval_seconds=table_interval_seconds,
        tables=tuple(
            t if isinstance(t, TableSpec) else TableSpec(table=t[0], column=t[1], time_base=UTC_BASE) for t in tables
        ),
    )


def pragma(conn: sqlite3.Connection, name: str) -> int:
    """One integer PRAGMA value from the writer's view."""
    return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


def test_sizes_pages_and_freelist_match_the_file(writer: sqlite3.Connection, db_path: Path) -> None:
    """File and WAL sizes, page size, page count and freelist are those of the live database."""
    sample = reader(db_path).read(1.0)
    assert sample.file_bytes == db_path.stat().st_size
    assert sample.wal_bytes == Path(f"{db_path}-wal").stat().st_size
    assert sample.wal_bytes > 0
    assert sample.page_size == pragma(writer, "page_size")
    assert sample.page_count == pragma(writer, "page_count")
    assert sample.freelist_count == pragma(writer, "freelist_count")
    assert sample.freelist_count > 0
    assert sample.freelist_ratio == pytest.approx(sample.freelist_count / sample.page_count)
    assert sample.journal_mode == "wal"
    assert sample.busy is False
    assert 0.0 <= sample.probe_seconds < 5.0


def test_wal_size_follows_a_checkpoint(writer: sqlite3.Connection, db_path: Path) -> None:
    """After the writer truncates the WAL, the reader sees zero WAL bytes."""
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert reader(db_path).read(1.0).wal_bytes == 0


def test_reading_creates_nothing_and_changes_nothing(writer: sqlite3.Connection, db_path: Path) -> None:
    """The read-only connection leaves the data untouched and the writer can still write."""
    before = writer.execute("SELECT count(*) FROM viewer_sessions").fetchone()[0]
    reader(db_path).read(1.0)
    writer.execute("INSERT INTO bulk (payload) VALUES (x'00')")
    assert writer.execute("SELECT count(*) FROM viewer_sessions").fetchone()[0] == before


def test_sessions_active_and_stuck_in_local_time(writer: sqlite3.Connection, db_path: Path) -> None:
    """Active sessions are counted; those with a heartbeat older than the limit (in local time) are stuck."""
    db = reader(db_path)
    db.read(1.0)
    sessions = db.last_sessions
    assert sessions is not None
    assert sessions.active == 3
    assert sessions.stuck == 2
    assert sessions.oldest_heartbeat_age_seconds == pytest.approx(3600, abs=5)


def set_zone(conn: sqlite3.Connection, value: str) -> None:
    """What the backend's setTimezone leaves in its database (an admin changing the zone at runtime)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS system_settings (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " setting_key TEXT UNIQUE NOT NULL, setting_value TEXT NOT NULL, updated_at DATETIME)"
    )
    conn.execute(
        "INSERT INTO system_settings (setting_key, setting_value, updated_at) VALUES ('timezone', ?, CURRENT_TIMESTAMP)"
        " ON CONFLICT(setting_key) DO UPDATE SET setting_value = excluded.setting_value",
        (value,),
    )


def test_the_zone_is_the_databases_and_a_change_at_runtime_applies_at_once(
    writer: sqlite3.Connection, db_path: Path
) -> None:
    """The configured offset does not decide: the system_settings row does, and the next sample follows it."""
    db = reader(db_path, timezone_offset_hours=0.0)
    db.read(1.0)
    assert db.last_sessions is not None
    # no row: the backend's default, Asia/Jakarta (+7), whatever the configured offset says
    assert (db.last_sessions.stuck, db.last_sessions.timezone) == (2, "Asia/Jakarta")
    # sessions written at UTC+8 a minute ago look an hour old to a reader that stays at +7 ...
    writer.execute("DELETE FROM viewer_sessions")
    add_session(writer, "makassar", 60, offset_hours=8.0)
    db.read(2.0)
    assert db.last_sessions is not None and db.last_sessions.stuck == 0
    # ... only because the zone was not changed yet: an admin sets WITA, and the next sample reads it
    writer.execute("DELETE FROM viewer_sessions")
    set_zone(writer, "WITA")
    add_session(writer, "makassar", 60, offset_hours=8.0)
    db.read(3.0)
    sessions = db.last_sessions
    assert sessions is not None and sessions.timezone == "Asia/Makassar"
    assert (sessions.active, sessions.stale, sessions.stuck) == (1, 1, 0)
    assert sessions.oldest_heartbeat_age_seconds == pytest.approx(60, abs=5)


def test_negative_offset_zone(tmp_path: Path) -> None:
    """A zone west of UTC (-5 h, named in the database) is handled the same way."""
    path = tmp_path / "west.db"
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute(SCHEMA[0])
        set_zone(conn, "America/Bogota")
        conn.execute(
            "INSERT INTO viewer_sessions (session_id, camera_id, started_at, last_heartbeat) VALUES"
            " ('a', 1, ?, ?), ('b', 1, ?, ?)",
            (local_ago(30, -5), local_ago(30, -5), local_ago(900, -5), local_ago(900, -5)),
        )
    conn.close()
    db = reader(path)
    db.read(1.0)
    assert db.last_sessions is not None
    assert (db.last_sessions.active, db.last_sessions.stuck) == (2, 1)


def test_database_without_sessions_table(tmp_path: Path) -> None:
    """A database without viewer_sessions still samples; the sessions are unknown (None)."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    db = reader(path)
    sample = db.read(1.0)
    assert sample.page_count > 0
    assert sample.journal_mode == "delete"
    assert db.last_sessions is None


def test_table_stats_for_existing_tables_only(writer: sqlite3.Connection, db_path: Path) -> None:
    """Row counts and oldest values are read for the listed tables that exist; missing ones are skipped."""
    tables = (("login_attempts", "attempt_time"), ("token_blacklist", "expires_at"), ("no_such_table", "x"))
    sample = reader(db_path, tables=tables).read(1.0)
    assert set(sample.tables) == {"login_attempts", "token_blacklist"}
    assert sample.tables["login_attempts"].rows == 2
    assert sample.tables["login_attempts"].oldest == "2025-12-31 23:59:59"
    assert sample.tables["token_blacklist"].rows == 0
    assert sample.tables["token_blacklist"].oldest is None


def test_table_with_another_column_counts_rows_without_age(writer: sqlite3.Connection, db_path: Path) -> None:
    """A listed column the schema lacks gives the row count and no oldest value (not the column's name)."""
    sample = reader(db_path, tables=(("login_attempts", "created_at"),)).read(1.0)
    assert sample.tables["login_attempts"].rows == 2
    assert sample.tables["login_attempts"].oldest is None


def test_table_stats_are_refreshed_only_after_their_interval(writer: sqlite3.Connection, db_path: Path) -> None:
    """Table counts are kept between reads and re-read once the table interval has passed."""
    db = reader(db_path, tables=(("login_attempts", "attempt_time"),), table_interval_seconds=300.0)
    assert db.read(1000.0).tables["login_attempts"].rows == 2
    writer.execute("INSERT INTO login_attempts (username, attempt_time) VALUES ('c', '2026-02-01 00:00:00')")
    assert db.read(1100.0).tables["login_attempts"].rows == 2
    assert db.read(1300.0).tables["login_attempts"].rows == 3


def test_table_stats_do_not_read_more_as_tables_grow(
    writer: sqlite3.Connection, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the table statistics takes as many SQLite steps at 40,000 rows as at 2,000 (no count(*) scan).

    Steps are counted by SQLite's progress handler on the reader's own connection; the rows and oldest values
    stay right: the rowid span, min() through the index, the least of the first rows where there is none.
    """
    import metrics.sqlite as module

    writer.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT, details TEXT)")
    writer.execute("CREATE INDEX idx_login_time ON login_attempts(attempt_time)")
    steps = [0]
    opener = module.open_read_only

    def counting(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = opener(*args, **kwargs)

        def step() -> int:
            steps[0] += 1
            return 0

        conn.set_progress_handler(step, 100)
        return conn

    monkeypatch.setattr(module, "open_read_only", counting)
    tables = (("login_attempts", "attempt_time"), ("events", "created_at"))

    def grow_to(rows: int) -> int:
        have = writer.execute("SELECT count(*) FROM events").fetchone()[0]
        writer.execute("BEGIN")
        writer.executemany(
            "INSERT INTO events (created_at, details) VALUES (?, 'x')",
            [(f"2026-01-01 00:00:{i % 60:02d}",) for i in range(have, rows)],
        )
        writer.executemany(
            "INSERT INTO login_attempts (username, attempt_time) VALUES ('u', '2026-03-01 00:00:00')",
            [()] * (rows - have),
        )
        writer.execute("COMMIT")
        steps[0] = 0
        sample = reader(db_path, tables=tables).read(1.0)
        assert sample.tables["events"].rows == rows
        assert sample.tables["events"].oldest == "2026-01-01 00:00:00"
        assert sample.tables["login_attempts"].rows == rows + 2
        assert sample.tables["login_attempts"].oldest == "2025-12-31 23:59:59"
        return steps[0]

    small = grow_to(2_000)
    large = grow_to(40_000)
    assert large <= small * 1.5 + 10, (small, large)


def test_busy_database_sets_the_busy_flag(writer: sqlite3.Connection, db_path: Path) -> None:
    """A database locked by an exclusive writer gives busy=True quickly, not an exception."""
    db = reader(db_path)
    db.read(1.0)
    assert db.last_sessions is not None
    writer.execute("PRAGMA locking_mode=EXCLUSIVE")
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("INSERT INTO bulk (payload) VALUES (x'01')")
    try:
        started = time.monotonic()
        sample = db.read(2.0)
        elapsed = time.monotonic() - started
    finally:
        writer.execute("COMMIT")
    assert sample.busy is True
    assert sample.journal_mode == "unknown"
    assert sample.file_bytes == db_path.stat().st_size
    assert elapsed < 2.0
    # the sessions were not read this time, so none are reported
    assert db.last_sessions is None


def test_busy_rollback_journal_database(tmp_path: Path) -> None:
    """A rollback-journal database with a writer holding an exclusive lock is also just busy."""
    path = tmp_path / "legacy.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(SCHEMA[0])
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("INSERT INTO viewer_sessions (session_id, camera_id, started_at, last_heartbeat) VALUES ('x',1,'','')")
    try:
        sample = reader(path).read(1.0)
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert sample.busy is True


def test_missing_file_is_a_sampling_error_and_is_not_created(tmp_path: Path) -> None:
    """A database path that does not exist raises SamplingError and no file appears."""
    path = tmp_path / "absent.db"
    with pytest.raises(SamplingError, match=r"absent\.db"):
        reader(path).read(1.0)
    with pytest.raises(SamplingError, match="does not exist"), read_database(path, 50):
        pass
    assert not path.exists()


def test_not_a_database_is_a_sampling_error(tmp_path: Path) -> None:
    """A file that is not SQLite raises SamplingError, not sqlite3.DatabaseError."""
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(SamplingError, match=r"garbage\.db"):
        reader(path).read(1.0)


def test_path_with_uri_characters(tmp_path: Path) -> None:
    """A path holding '?', '#' and '%' opens the right file rather than being read as URI syntax."""
    directory = tmp_path / "we?ird#dir%20"
    directory.mkdir()
    path = directory / "cctv.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    sample = reader(path).read(1.0)
    assert sample.page_count == 2
    assert sorted(p.name for p in directory.iterdir()) == ["cctv.db"]
