"""The connection strategy and the backend's own session sweep, on a real WAL file with the backend's schema.

The backend's sweep is played by ``backend_end_session``: the statements of its ``endSession`` (autocommit, no
``is_active`` guard on the UPDATE, foreign keys on), run on the backend's own open connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from config.settings import ConnectionOptions, DetectionSettings
from metrics.sqlite import DatabaseReader
from metrics.window import Windows
from strategies.actions.sessions import duration_seconds
from strategies.base import Action, Finding, Plan, StrategyContext, StrategyDeferred
from strategies.connection import ConnectionStrategy, EndStuckSessions, IdleReader, KickReaders, SweepProgress
from tests.optimizer.fakes import snapshot_of

SQL = "%Y-%m-%d %H:%M:%S"
# the real backend's tables as its migrations create them (add_viewer_sessions.js, zz_20260505_add_camera_view_stats.js)
SCHEMA = (
    "CREATE TABLE cameras (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, enabled INTEGER DEFAULT 1)",
    """CREATE TABLE viewer_sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT UNIQUE NOT NULL,
        camera_id INTEGER NOT NULL,
        ip_address TEXT NOT NULL,
        user_agent TEXT,
        device_type TEXT,
        started_at DATETIME DEFAULT CURRENT_TIMESTAMP,
        last_heartbeat DATETIME DEFAULT CURRENT_TIMESTAMP,
        ended_at DATETIME,
        duration_seconds INTEGER DEFAULT 0,
        is_active INTEGER DEFAULT 1,
        FOREIGN KEY (camera_id) REFERENCES cameras(id) ON DELETE CASCADE
    )""",
    """CREATE TABLE viewer_session_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        camera_id INTEGER NOT NULL,
        camera_name TEXT,
        ip_address TEXT NOT NULL,
        user_agent TEXT,
        device_type TEXT,
        started_at DATETIME NOT NULL,
        ended_at DATETIME NOT NULL,
        duration_seconds INTEGER NOT NULL,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE camera_view_stats (
        camera_id INTEGER PRIMARY KEY,
        total_live_views INTEGER NOT NULL DEFAULT 0,
        total_watch_seconds INTEGER NOT NULL DEFAULT 0,
        last_viewed_at DATETIME,
        created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        FOREIGN KEY (camera_id) REFERENCES cameras(id) ON DELETE CASCADE
    )""",
    """CREATE TABLE system_settings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        setting_key TEXT UNIQUE NOT NULL,
        setting_value TEXT NOT NULL,
        description TEXT,
        updated_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
)
PERIODS = 3
INTERVAL = 20.0


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """The backend's write connection (WAL, foreign keys on), kept open as the backend keeps it."""
    conn = sqlite3.connect(tmp_path / "cctv.db", isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO cameras (name) VALUES ('Gate'), ('')")  # camera 2 has an empty name
    conn.execute("INSERT INTO system_settings (setting_key, setting_value) VALUES ('timezone', 'Asia/Jakarta')")
    yield conn
    conn.close()


def path_of(conn: sqlite3.Connection) -> Path:
    """The database file behind a connection."""
    return Path(conn.execute("PRAGMA database_list").fetchone()[2])


def local(offset_hours: float, seconds_ago: float) -> str:
    """Local wall time ``seconds_ago`` in a zone ``offset_hours`` from UTC, as the backend writes it."""
    return (datetime.now(UTC) + timedelta(hours=offset_hours, seconds=-seconds_ago)).strftime(SQL)


def start_sessions(
    conn: sqlite3.Connection, count: int, *, silent: float, watched: float = 60.0, offset_hours: float = 7.0
) -> None:
    """``count`` sessions that watched for ``watched`` s and then fell silent ``silent`` s ago (startSession)."""
    for n in range(count):
        conn.execute(
            "INSERT INTO viewer_sessions (session_id, camera_id, ip_address, user_agent, device_type, started_at,"
            " last_heartbeat) VALUES (?, ?, ?, 'Mozilla/5.0', 'desktop', ?, ?)",
            (
                f"s-{silent:g}-{n}",
                1 + n % 2,
                f"10.0.{n // 250}.{n % 250 + 1}",
                local(offset_hours, silent + watched + n % 3),
                local(offset_hours, silent),
            ),
        )


def backend_end_session(conn: sqlite3.Connection, session_id: str) -> bool:
    """viewerSessionService.endSession(sessionId, {endedAt: last_heartbeat}), statement by statement."""
    session = conn.execute("SELECT * FROM viewer_sessions WHERE session_id = ? AND is_active = 1", (session_id,))
    row = session.fetchone()
    if row is None:
        return False
    ended_at = row["last_heartbeat"]
    duration = max(
        0,
        int((datetime.strptime(ended_at, SQL) - datetime.strptime(row["started_at"], SQL)).total_seconds()),
    )
    conn.execute(
        "UPDATE viewer_sessions SET is_active = 0, ended_at = ?, duration_seconds = ? WHERE session_id = ?",
        (ended_at, duration, session_id),
    )
    camera = conn.execute("SELECT name FROM cameras WHERE id = ?", (row["camera_id"],)).fetchone()
    conn.execute(
        "INSERT INTO viewer_session_history (camera_id, camera_name, ip_address, user_agent, device_type, started_at,"
        " ended_at, duration_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row["camera_id"],
            (camera["name"] if camera else None) or f"Camera {row['camera_id']}",
            row["ip_address"],
            row["user_agent"],
            row["device_type"],
            row["started_at"],
            ended_at,
            duration,
        ),
    )
    if duration >= 5:
        conn.execute(
            "INSERT INTO camera_view_stats (camera_id, total_live_views, total_watch_seconds, last_viewed_at,"
            " created_at, updated_at) VALUES (?, 1, ?, ?, ?, ?) ON CONFLICT(camera_id) DO UPDATE SET"
            " total_live_views = total_live_views + 1,"
            " total_watch_seconds = total_watch_seconds + excluded.total_watch_seconds,"
            " last_viewed_at = excluded.last_viewed_at, updated_at = excluded.updated_at",
            (row["camera_id"], duration, ended_at, ended_at, ended_at),
        )
    return True


def backend_sweep(conn: sqlite3.Connection, limit: int | None = None) -> int:
    """cleanupStaleSessions (optionally only its first ``limit`` sessions: a sweep still working through them)."""
    now = conn.execute("SELECT datetime('now', '+7 hours')").fetchone()[0]
    stale = conn.execute(
        "SELECT session_id FROM viewer_sessions WHERE is_active = 1"
        " AND datetime(last_heartbeat) < datetime(?, '-15 seconds')",
        (now,),
    ).fetchall()
    return sum(backend_end_session(conn, r["session_id"]) for r in stale[:limit])


class Round:
    """The engine's view, fed with real samples at chosen monotonic times."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.path = path
        self.reader = DatabaseReader(path, session_timeout_seconds=15.0, stuck_session_seconds=120.0)
        self.windows = Windows(500)
        self.strategy = ConnectionStrategy(
            ConnectionOptions(
                sweep_interval_seconds=INTERVAL, stuck_sweep_periods=PERIODS, settle_seconds=0.0, **options
            ),
            database=path,
            timezone_offset_hours=7.0,
            detection=DetectionSettings(),
            exit_ratio=0.9,
        )

    def sample(self, at: float) -> StrategyContext:
        """Sample the file at monotonic ``at`` and build the round's context (armed as the engine would)."""
        database = self.reader.read(at)
        snap = snapshot_of(seq=int(at), monotonic=at, database=database, sessions=self.reader.last_sessions)
        self.windows.push(at, snap.signals())
        armed = ("sessions_stuck",) if snap.signals().get("sessions_stuck", 0) >= 1 else ()
        return StrategyContext(snapshot=snap, windows=self.windows, armed=armed, manual=False, now=at)

    async def look(self, at: float) -> tuple[dict[str, Finding], Plan | None]:
        """One round: the findings by id, and the plan."""
        ctx = self.sample(at)
        findings = {f.id: f for f in self.strategy.findings(ctx)}
        return findings, await self.strategy.plan(ctx)


def count(conn: sqlite3.Connection, sql: str, *args: Any) -> int:
    """One integer."""
    return int(conn.execute(sql, args).fetchone()[0])


async def test_a_sweep_working_through_a_backlog_is_left_alone_and_a_stalled_one_is_done_for_it(
    backend: sqlite3.Connection,
) -> None:
    """2,000 stale sessions going down by 300 per look: nothing done, a backlog finding. Then the sweep stops:
    after 3 periods without the count going down, the rest is ended exactly as endSession ends it."""
    start_sessions(backend, 2000, silent=600)
    r = Round(path_of(backend))
    at = 0.0
    for _ in range(5):
        findings, plan = await r.look(at)
        assert plan is None, "the backend's sweep is making progress"
        assert "sessions-sweep-backlog" in findings and "sessions-sweep-stuck" not in findings
        if at > 0:
            assert "the backend's sweep is working through them" in findings["sessions-sweep-backlog"].summary
        assert backend_sweep(backend, limit=300) == 300
        at += 25.0
    by_backend = count(backend, "SELECT count(*) FROM viewer_session_history")
    assert by_backend == 1500
    # the sweep stops: the count stays at 500 for three periods
    for step in range(4):
        findings, plan = await r.look(at + step * INTERVAL)
        if step == 2:
            assert plan is None
            assert "(the count last went down 40 s ago)" in findings["sessions-sweep-backlog"].summary
    assert plan is not None and "sessions-sweep-stuck" in findings
    assert plan.changes[0].before == "500 active, silent past 15 s"
    result = await r.strategy.apply(plan)
    assert "ended 500 session(s)" in result.detail

    assert count(backend, "SELECT count(*) FROM viewer_sessions WHERE is_active = 1") == 0
    # one history row per session, written as the backend writes it
    assert count(backend, "SELECT count(*) FROM viewer_session_history") == 2000
    mismatched = count(
        backend,
        "SELECT count(*) FROM viewer_sessions s JOIN viewer_session_history h"
        " ON h.ip_address = s.ip_address"
        " WHERE s.ended_at != s.last_heartbeat OR h.ended_at != s.ended_at"
        " OR h.duration_seconds != s.duration_seconds"
        " OR s.duration_seconds != CAST(strftime('%s', s.last_heartbeat) - strftime('%s', s.started_at) AS INTEGER)",
    )
    assert mismatched == 0
    assert count(backend, "SELECT count(DISTINCT ip_address) FROM viewer_session_history") == 2000
    names = {r[0]: r[1] for r in backend.execute("SELECT DISTINCT camera_id, camera_name FROM viewer_session_history")}
    assert names == {1: "Gate", 2: "Camera 2"}
    # every view counted once in camera_view_stats, the optimizer's as the backend's
    stats = {r[0]: (r[1], r[2]) for r in backend.execute("SELECT * FROM camera_view_stats")}
    expected = {
        r[0]: (r[1], r[2])
        for r in backend.execute(
            "SELECT camera_id, count(*), sum(duration_seconds) FROM viewer_sessions GROUP BY camera_id"
        )
    }
    assert stats == expected


async def test_a_session_the_backend_ended_meanwhile_is_neither_copied_nor_counted_twice(
    backend: sqlite3.Connection,
) -> None:
    """Planned while stalled, then the backend ends 7 of the 20 itself: the apply ends only the other 13."""
    start_sessions(backend, 20, silent=600)
    r = Round(path_of(backend))
    plan = None
    for step in range(5):
        findings, plan = await r.look(step * INTERVAL)
        if step == 2:
            summary = findings["sessions-sweep-backlog"].summary
            assert "has not gone down for 40 s; the sweep counts as stuck after 1 min (3 of its periods)" in summary
    assert plan is not None
    ended_by_backend = [
        row["session_id"] for row in backend.execute("SELECT session_id FROM viewer_sessions LIMIT 7").fetchall()
    ]
    assert all(backend_end_session(backend, sid) for sid in ended_by_backend)
    result = await r.strategy.apply(plan)
    assert "ended 13 session(s)" in result.detail
    assert count(backend, "SELECT count(*) FROM viewer_session_history") == 20
    assert count(backend, "SELECT sum(total_live_views) FROM camera_view_stats") == 20


async def test_the_sessions_ended_are_those_stale_in_the_backends_own_timezone(backend: sqlite3.Connection) -> None:
    """The zone is WITA (+8): a session silent 60 s is ended, one silent 5 s is not. Read at +7 (the configured
    fallback) neither would look stale; read as UTC both would look 8 h stale."""
    backend.execute("UPDATE system_settings SET setting_value = 'Asia/Makassar' WHERE setting_key = 'timezone'")
    start_sessions(backend, 10, silent=600, offset_hours=8.0)
    start_sessions(backend, 1, silent=60, offset_hours=8.0)
    start_sessions(backend, 1, silent=5, offset_hours=8.0)
    r = Round(path_of(backend))
    plan = None
    for step in range(5):
        _, plan = await r.look(step * INTERVAL)
    assert plan is not None
    await r.strategy.apply(plan)
    active = [row[0] for row in backend.execute("SELECT session_id FROM viewer_sessions WHERE is_active = 1")]
    assert active == ["s-5-0"]


async def test_asked_by_hand_while_the_sweep_progresses_it_says_so(backend: sqlite3.Connection) -> None:
    """A manual round while the count goes down is deferred with the reason, nothing is ended."""
    start_sessions(backend, 50, silent=600)
    r = Round(path_of(backend))
    r.sample(0.0)
    backend_sweep(backend, limit=10)
    ctx = r.sample(10.0)
    manual = StrategyContext(
        snapshot=ctx.snapshot, windows=ctx.windows, armed=ctx.armed, manual=True, now=ctx.now, baselines={}
    )
    with pytest.raises(StrategyDeferred, match="sweep is working through them"):
        await r.strategy.plan(manual)
    assert count(backend, "SELECT count(*) FROM viewer_sessions WHERE is_active = 1") == 40


def test_progress_is_judged_between_samples_and_any_drop_restarts_it() -> None:
    """Flat or rising counts add up between samples; a drop or an empty count starts over; a gap adds nothing."""
    progress = SweepProgress()
    progress.observe([(0.0, 100.0), (20.0, 100.0), (40.0, 120.0)])
    assert progress.flat_for() == 40.0
    progress.observe([(40.0, 120.0)])  # seen already: ignored
    assert progress.flat_for() == 40.0
    progress.observe([(50.0, 90.0), (70.0, 95.0)])
    assert (progress.flat_for(), progress.last_down) == (20.0, 50.0)
    progress.observe([(80.0, 0.0)])
    assert progress.flat_for() == 0.0
    progress.observe([(90.0, 5.0)])
    assert progress.flat_for() == 0.0  # one sample: no span yet, however late the next look comes


@pytest.mark.parametrize(
    ("params", "actions"),
    [
        pytest.param({"mode": "sessions", "count": 3}, (EndStuckSessions(count=3),), id="sessions"),
        pytest.param(
            {"mode": "kick", "readers": [{"kind": "rtspsession", "id": "a1", "bytes_sent": 5}]},
            (KickReaders(readers=(IdleReader(kind="rtspsession", id="a1", bytes_sent=5),)),),
            id="kick",
        ),
    ],
)
def test_plans_journaled_before_typed_actions_are_rebuilt(
    backend: sqlite3.Connection, params: dict[str, object], actions: tuple[Action, ...]
) -> None:
    """Older ``params`` (mode sessions / kick) become the same typed actions."""
    strategy = Round(path_of(backend)).strategy
    old = {"strategy": "connection", "reason": "r", "changes": [], "params": params}
    assert Plan.from_dict(old, legacy=strategy.legacy_actions).actions == actions


async def test_an_interrupted_end_of_sessions_of_the_older_shape_reports_what_is_still_stale(
    backend: sqlite3.Connection,
) -> None:
    """An interrupted end of sessions journaled with ``params`` is reconciled by what is still stale."""
    start_sessions(backend, 3, silent=600)
    strategy = Round(path_of(backend)).strategy
    old = {"strategy": "connection", "reason": "r", "changes": [], "params": {"mode": "sessions", "count": 3}}
    plan = Plan.from_dict(old, legacy=strategy.legacy_actions)
    assert (await strategy.reconcile(plan)).startswith("3 session(s) still stale")


def test_an_older_plan_of_an_unknown_mode_is_a_clear_value_error(backend: sqlite3.Connection) -> None:
    """An older ``params`` whose mode no version knew is refused with the mode named."""
    strategy = Round(path_of(backend)).strategy
    with pytest.raises(ValueError, match="unknown mode 'other'"):
        strategy.legacy_actions({"mode": "other"})


@pytest.mark.parametrize(
    ("started", "ended", "seconds"),
    [
        pytest.param("2026-12-04 05:00:00", "2026-12-04 05:00:30", 30, id="local-sql-texts-wall-clock-fields"),
        pytest.param(
            "2026-12-04T05:00:00.000Z", "2026-12-04T12:01:00+07:00", 60, id="zoned-iso-texts-each-in-its-zone"
        ),
        pytest.param("2026-12-04 05:00:00", "2026-12-04T05:02:00.000Z", 120, id="local-fields-compared-as-if-utc"),
        pytest.param("2026-12-04 05:00:30", "2026-12-04 05:00:00", 0, id="never-negative"),
        # not a time: 0, as the backend's diffLocalSqlSeconds
        pytest.param("yesterday", "2026-12-04 05:00:00", 0, id="not-a-time"),
        pytest.param(None, "2026-12-04 05:00:00", 0, id="no-start"),
    ],
)
def test_a_session_duration_is_counted_as_the_backend_counts_it(started: object, ended: object, seconds: int) -> None:
    """Whole seconds between the two texts, read by the one backend-time parser where they carry a zone."""
    assert duration_seconds(started, ended) == seconds
