"""Each dated column read in the clock the backend writes it in, and the backend's timezone read at runtime.

Real WAL files with the stand-in backend's schema; rows are written the way the real backend's code writes them
(``toUtcSql`` for playback_token_sessions, ``toISOString()`` for token_blacklist, local time for sessions).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from config.settings import DatabaseOptions
from metrics.snapshot import DatabaseSample, Snapshot
from metrics.sqlite import DatabaseReader
from metrics.tables import TABLES
from metrics.window import Windows
from strategies.base import Plan, StrategyContext
from strategies.database import DatabaseStrategy, PruneTables
from testbed.database import Database
from testbed.localtime import LocalClock
from tests.optimizer.fakes import snapshot_of

OFFSET = 7.0
SQL = "%Y-%m-%d %H:%M:%S"


def cutoffs(plan: Plan) -> dict[str, str]:
    """The cutoffs of a plan's retention run."""
    prune = next(a for a in plan.actions if isinstance(a, PruneTables))
    return dict(prune.cutoffs)


@pytest.fixture
def backend_db(tmp_path: Path) -> Iterator[Path]:
    """The stand-in backend's schema and seed rows in a real WAL file, held open as the backend holds it."""
    db = Database(tmp_path / "cctv.db", LocalClock(OFFSET))
    db.open(cameras=2, admin_password="secret")
    yield db.path
    db.close()


def run(path: Path, sql: str, *args: Any) -> None:
    """One statement, committed, as the backend would run it."""
    with sqlite3.connect(path) as conn:
        conn.execute(sql, args)
    conn.close()


def insert_row(path: Path, table: str, values: dict[str, Any]) -> None:
    """Insert a row with the given values, in whatever columns of these the schema has; columns the schema
    requires (NOT NULL without a default) and the values do not name get a placeholder."""
    with sqlite3.connect(path) as conn:
        info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
        row = {c[1]: values[c[1]] for c in info if c[1] in values}
        for _, name, kind, notnull, default, pk in info:
            if notnull and default is None and not pk and name not in row:
                row[name] = 1 if "INT" in str(kind).upper() else f"{name}-{len(values)}-{time.monotonic_ns()}"
        marks = ", ".join("?" for _ in row)
        conn.execute(f'INSERT INTO "{table}" ({", ".join(row)}) VALUES ({marks})', tuple(row.values()))
    conn.close()


def rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Query results."""
    with sqlite3.connect(path) as conn:
        out = conn.execute(sql, args).fetchall()
    conn.close()
    return out


def utc_sql(delta: timedelta) -> str:
    """``toUtcSql(now + delta)``: UTC as ``YYYY-MM-DD HH:MM:SS``."""
    return (datetime.now(UTC) + delta).strftime(SQL)


def iso(delta: timedelta) -> str:
    """``new Date(now + delta).toISOString()``."""
    moment = datetime.now(UTC) + delta
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def local_in(offset_hours: float, delta: timedelta) -> str:
    """The backend's local-time text in a zone ``offset_hours`` from UTC."""
    return (datetime.now(UTC) + timedelta(hours=offset_hours) + delta).strftime(SQL)


def set_zone(path: Path, value: str) -> None:
    """What the backend's setTimezone leaves in system_settings."""
    run(
        path,
        "CREATE TABLE IF NOT EXISTS system_settings (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " setting_key TEXT UNIQUE NOT NULL, setting_value TEXT NOT NULL, updated_at DATETIME)",
    )
    run(
        path,
        "INSERT INTO system_settings (setting_key, setting_value, updated_at) VALUES ('timezone', ?, CURRENT_TIMESTAMP)"
        " ON CONFLICT(setting_key) DO UPDATE SET setting_value = excluded.setting_value",
        value,
    )


def sample(path: Path) -> DatabaseSample:
    """A real reading by the sampler's reader, with every dated table."""
    return DatabaseReader(path, timezone_offset_hours=OFFSET, tables=TABLES).read(0.0)


def snapshot(database: DatabaseSample) -> Snapshot:
    """A snapshot with only the database part, taken now."""
    return snapshot_of(database=database)


def manual(snap: Snapshot) -> StrategyContext:
    """A context for a round asked for by hand."""
    return StrategyContext(snapshot=snap, windows=Windows(10), armed=(), manual=True, now=100.0)


def strategy(path: Path, **options: Any) -> DatabaseStrategy:
    """The database strategy with retention on."""
    return DatabaseStrategy(
        path, DatabaseOptions(retention_enabled=True, **options), exit_ratio=0.9, timezone_offset_hours=OFFSET
    )


async def test_a_token_session_expired_89_days_20_hours_ago_is_kept_under_a_90_day_rule(backend_db: Path) -> None:
    """playback_token_sessions.expires_at is UTC: read as local time (+7 h) it looked 90 d 3 h old and was deleted."""
    run(backend_db, "DELETE FROM playback_token_sessions")
    for name, age in (("recent", timedelta(days=89, hours=20)), ("old", timedelta(days=90, hours=4))):
        insert_row(
            backend_db,
            "playback_token_sessions",
            {
                "token_id": 1,
                "token_hash": name,
                "session_id_hash": name,
                "ip_address": name,
                "created_at": utc_sql(-age - timedelta(hours=1)),
                "last_seen_at": utc_sql(-age),
                "expires_at": utc_sql(-age),
                "ended_at": utc_sql(-age),
            },
        )
    s = strategy(backend_db)
    plan = await s.plan(manual(snapshot(sample(backend_db))))
    assert plan is not None
    await s.apply(plan)
    assert rows(backend_db, "SELECT ip_address FROM playback_token_sessions") == [("recent",)]


def test_an_expiry_still_ahead_is_age_zero_never_negative(backend_db: Path) -> None:
    """token_blacklist holds ISO UTC expiries a week ahead: the oldest is 0 days old, not -7 (or -7 d 7 h)."""
    run(backend_db, "DELETE FROM token_blacklist")
    for n, ahead in enumerate((timedelta(days=7), timedelta(days=6, hours=23))):
        insert_row(
            backend_db,
            "token_blacklist",
            {"token_hash": f"hash-{n}", "user_id": 1, "reason": "logout", "expires_at": iso(ahead)},
        )
    snap = snapshot(sample(backend_db))
    assert snap.signals()["table_oldest_days:token_blacklist"] == 0.0
    findings = strategy(backend_db, table_rows_warning=1).findings(manual(snap))
    token = next(f for f in findings if f.id == "uncleaned-token_blacklist")
    assert token.evidence["oldest_days"] == 0.0
    assert token.evidence["time_base"] == "utc"


async def test_local_cutoffs_follow_the_timezone_an_admin_sets_at_runtime(backend_db: Path) -> None:
    """An ended session written in WITA 90 d 30 min ago: under WIB it is 89 d 23.5 h old, under WITA past 90 d.

    The zone is the system_settings row, read again at each plan: the cutoff moves by the hour when it changes.
    """
    run(backend_db, "DELETE FROM viewer_sessions")
    age = -timedelta(days=90, minutes=30)
    insert_row(
        backend_db,
        "viewer_sessions",
        {
            "session_id": "wita",
            "camera_id": 1,
            "ip_address": "10.0.0.8",
            "started_at": local_in(8.0, age),
            "last_heartbeat": local_in(8.0, age),
            "ended_at": local_in(8.0, age),
            "is_active": 0,
        },
    )
    s = strategy(backend_db)
    set_zone(backend_db, "WIB")
    before = await s.plan(manual(snapshot(sample(backend_db))))
    assert before is not None
    assert "table:viewer_sessions" not in {c.target for c in before.changes}
    utc_cutoff = datetime.strptime(cutoffs(before)["login_attempts"], SQL)

    set_zone(backend_db, "WITA")
    after = await s.plan(manual(snapshot(sample(backend_db))))
    assert after is not None
    assert "table:viewer_sessions" in {c.target for c in after.changes}
    local_cutoff = datetime.strptime(cutoffs(after)["viewer_sessions"], SQL)
    # UTC columns do not move; local ones are WITA: 8 h ahead of UTC
    # (the two plans read the clock a moment apart: a second may tick between them)
    utc_after = datetime.strptime(cutoffs(after)["login_attempts"], SQL)
    assert utc_after - utc_cutoff == pytest.approx(timedelta(0), abs=timedelta(seconds=5))
    assert local_cutoff - utc_cutoff == pytest.approx(timedelta(hours=8), abs=timedelta(seconds=5))
    await s.apply(after)
    assert rows(backend_db, "SELECT count(*) FROM viewer_sessions WHERE session_id = 'wita'") == [(0,)]


async def test_the_retention_reason_counts_the_tables_holding_the_rows(backend_db: Path) -> None:
    """A total across several tables is said to be in those tables, and a smaller round says what it takes."""
    s = strategy(backend_db, retention_max_rows_per_run=1)
    plan = await s.plan(manual(snapshot(sample(backend_db))))
    assert plan is not None
    assert len(plan.changes) == 1
    waiting, _, rest = plan.reason.partition(" rows past their retention")
    holding = int(rest.split(" in ", 1)[1].split(" ", 1)[0])
    assert holding > 1 and int(waiting) > 1
    assert f"in {holding} tables nobody cleans" in plan.reason
    table = plan.changes[0].target.removeprefix("table:")
    assert plan.reason.endswith(f"; 1 of them this round, from 1 table ({table})")


async def test_the_vacuum_window_follows_the_backends_zone(backend_db: Path) -> None:
    """19:30 UTC is 02:30 in WIB, outside 03:00-05:00, and 03:30 in WITA, inside: the sampled zone decides."""
    wall = datetime(2026, 1, 15, 19, 30, tzinfo=UTC).timestamp()
    s = DatabaseStrategy(
        backend_db,
        DatabaseOptions(vacuum_enabled=True),
        exit_ratio=0.9,
        timezone_offset_hours=OFFSET,
        wall=lambda: wall,
    )
    await s.plan(manual(snapshot(sample(backend_db))))
    assert not s.in_vacuum_window(wall)
    set_zone(backend_db, "WITA")
    db = sample(backend_db)
    assert db.timezone == "Asia/Makassar"
    await s.plan(manual(snapshot(db)))
    assert s.in_vacuum_window(wall)


async def test_a_text_that_is_no_time_is_never_pruned(backend_db: Path) -> None:
    """datetime() cannot read 'never' or an empty text: such rows stay, the old ISO ones next to them go."""
    run(backend_db, "DELETE FROM token_blacklist")
    for n, expires in enumerate(("never", "", iso(-timedelta(days=200)))):
        insert_row(
            backend_db,
            "token_blacklist",
            {"token_hash": f"hash-{n}", "user_id": 1, "reason": "logout", "expires_at": expires},
        )
    s = strategy(backend_db)
    plan = await s.plan(manual(snapshot(sample(backend_db))))
    assert plan is not None
    await s.apply(plan)
    assert sorted(r[0] for r in rows(backend_db, "SELECT expires_at FROM token_blacklist")) == ["", "never"]
