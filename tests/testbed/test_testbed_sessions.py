"""What the testbed writes when a viewer session ends, its time bases and its zone, on a real SQLite file."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from testbed.database import TABLES, Database
from testbed.localtime import LOCAL_FORMAT, LocalClock
from testbed.viewers import end_session, end_stale_sessions, heartbeat, start_session

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SQL_TEXT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A seeded testbed database in Asia/Jakarta."""
    database = Database(tmp_path / "data" / "cctv.db", LocalClock(7))
    database.open(cameras=2, admin_password="pw")
    yield database
    database.close()


def _rows(db: Database, sql: str, *args: object) -> list[sqlite3.Row]:
    return db.read(lambda conn: conn.execute(sql, args).fetchall())


def _start(db: Database, *, heartbeat_age: float, camera_id: int = 1) -> str:
    return db.write(
        lambda conn: start_session(
            conn,
            db.clock,
            camera_id=camera_id,
            ip_address="10.0.0.9",
            user_agent="UA",
            heartbeat_age_seconds=heartbeat_age,
        )
    )


def _parse(text: str) -> datetime:
    return datetime.strptime(text, LOCAL_FORMAT)


def test_sweep_ends_at_the_last_heartbeat_and_writes_history_and_view_stats(db: Database) -> None:
    """ended_at = last heartbeat, duration from started_at, a history row (UTC created_at), one counted view."""
    session_id = _start(db, heartbeat_age=40)
    before = _rows(db, "SELECT * FROM viewer_sessions WHERE session_id = ?", session_id)[0]
    assert db.write(lambda conn: end_stale_sessions(conn, db.clock, timeout_seconds=15)) == 1
    row = _rows(db, "SELECT * FROM viewer_sessions WHERE session_id = ?", session_id)[0]
    assert (row["is_active"], row["ended_at"]) == (0, before["last_heartbeat"])
    assert row["duration_seconds"] == 60 == (_parse(row["ended_at"]) - _parse(row["started_at"])).total_seconds()
    history = _rows(db, "SELECT * FROM viewer_session_history ORDER BY id DESC LIMIT 1")[0]
    assert "session_id" not in list(history.keys())
    assert (history["camera_name"], history["started_at"], history["ended_at"], history["duration_seconds"]) == (
        "CCTV 01",
        row["started_at"],
        row["ended_at"],
        60,
    )
    created = datetime.strptime(history["created_at"], LOCAL_FORMAT).replace(tzinfo=UTC)
    assert abs((created - datetime.now(UTC)).total_seconds()) < 60
    stats = _rows(db, "SELECT * FROM camera_view_stats WHERE camera_id = 1")[0]
    assert (stats["total_live_views"], stats["total_watch_seconds"], stats["last_viewed_at"]) == (
        1,
        60,
        row["ended_at"],
    )
    assert stats["updated_at"] == row["ended_at"]
    # a second sweep finds nothing: the session is no longer active
    assert db.write(lambda conn: end_stale_sessions(conn, db.clock, timeout_seconds=15)) == 0
    assert len(_rows(db, "SELECT id FROM viewer_session_history WHERE started_at = ?", row["started_at"])) == 1


def test_short_views_are_history_but_not_counted(db: Database) -> None:
    """A session under 5 s gets its history row but no camera_view_stats view; a stop ends it now."""
    session_id = _start(db, heartbeat_age=0, camera_id=2)
    db.write(lambda conn: conn.execute("UPDATE viewer_sessions SET started_at = last_heartbeat"))
    assert db.write(lambda conn: heartbeat(conn, db.clock, session_id))
    assert db.write(lambda conn: end_session(conn, db.clock, session_id))
    assert not db.write(lambda conn: end_session(conn, db.clock, session_id))
    row = _rows(db, "SELECT * FROM viewer_sessions WHERE session_id = ?", session_id)[0]
    assert row["duration_seconds"] < 5
    assert _rows(db, "SELECT * FROM camera_view_stats WHERE camera_id = 2") == []
    assert len(_rows(db, "SELECT id FROM viewer_session_history WHERE camera_id = 2 AND ended_at = ?", row["ended_at"]))


def test_zone_comes_from_system_settings_and_changes_at_run_time(db: Database) -> None:
    """The timezone row is seeded, WIB/WITA/WIT are stored as IANA names, and new local times follow a change."""
    assert _rows(db, "SELECT setting_value FROM system_settings WHERE setting_key = 'timezone'")[0][0] == "Asia/Jakarta"
    fresh = _start(db, heartbeat_age=0)
    assert db.set_timezone("WIT") == "Asia/Jayapura"
    assert db.clock.zone == "Asia/Jayapura"
    later = _start(db, heartbeat_age=0)
    first, second = (
        _parse(_rows(db, "SELECT started_at FROM viewer_sessions WHERE session_id = ?", sid)[0][0])
        for sid in (fresh, later)
    )
    assert timedelta(hours=2) - timedelta(seconds=5) <= second - first <= timedelta(hours=2) + timedelta(seconds=5)
    # the session written in Jakarta time now looks two hours silent, and the sweep ends it
    assert db.write(lambda conn: end_stale_sessions(conn, db.clock, timeout_seconds=15)) >= 1
    with pytest.raises(ValueError, match="unknown time zone"):
        db.set_timezone("Mars/Olympus")


def test_schema_and_time_bases_of_seeded_rows(db: Database) -> None:
    """The real tables exist; each dated column holds the backend's format for it."""
    names = {row[0] for row in _rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(TABLES) <= names
    assert {"identifier", "identifier_type", "attempt_time", "success"} <= {
        row[1] for row in _rows(db, "PRAGMA table_info(login_attempts)")
    }
    for table, column, pattern in (
        ("login_attempts", "attempt_time", ISO_UTC),
        ("token_blacklist", "expires_at", ISO_UTC),
        ("security_logs", "timestamp", ISO_UTC),
        ("playback_token_sessions", "expires_at", SQL_TEXT),
        ("viewer_sessions", "started_at", SQL_TEXT),
        ("viewer_session_history", "started_at", SQL_TEXT),
        ("playback_token_audit_logs", "created_at", SQL_TEXT),
    ):
        values = [row[0] for row in _rows(db, f"SELECT {column} FROM {table}")]
        assert values, table
        assert all(pattern.fullmatch(value) for value in values), (table, values[:2])
    # playback_token_sessions are UTC text, viewer sessions local: the same instant differs by the offset
    newest_token = _parse(_rows(db, "SELECT max(activated_at) FROM playback_token_sessions")[0][0])
    newest_session = _parse(_rows(db, "SELECT max(started_at) FROM viewer_sessions")[0][0])
    assert abs((newest_session - newest_token) - timedelta(hours=7)) < timedelta(minutes=1)
