"""End viewer sessions the backend's stalled sweep left active, writing exactly what its ``endSession`` writes.

The backend's sweep (every 20 s) selects active sessions with ``datetime(last_heartbeat) < datetime(now,
'-15 seconds')`` (``now`` its local time in the zone of its ``system_settings`` row) and ends each one:

- ``viewer_sessions``: ``is_active = 0``, ``ended_at`` = the session's last heartbeat (as
  ``YYYY-MM-DD HH:MM:SS``), ``duration_seconds`` = whole seconds from ``started_at`` to that, never negative;
- ``viewer_session_history``: camera id and name (``Camera <id>`` when the camera has none), address, user
  agent, device type, ``started_at``, ``ended_at`` and the duration;
- ``camera_view_stats``: one more view and its seconds for the camera (upserted), ``last_viewed_at`` and
  ``updated_at`` = ``ended_at``, only for a duration of at least 5 s and a camera that exists (the backend's
  foreign key rejects the others).

This does the same, in batches of short ``BEGIN IMMEDIATE`` transactions under a short busy timeout. Each
session's UPDATE is guarded by ``is_active = 1`` and its history and statistics are written only when that
UPDATE changed the row, so a session the backend ended meanwhile is neither copied twice nor counted twice.
(The backend's own UPDATE has no such guard: a sweep that read a session as active just before this ends it
would still write a second copy. That is why this runs only when the sweep is shown not to progress.)
"""

from __future__ import annotations

import re
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from metrics import backendtime as bt
from metrics.sqlite import is_busy, table_columns
from strategies.actions.sqlite import reading, writing
from strategies.base import StrategyError

# the columns endSession writes into viewer_session_history; ``session_id`` too where a schema has it
HISTORY_COLUMNS = (
    "session_id",
    "camera_id",
    "camera_name",
    "ip_address",
    "user_agent",
    "device_type",
    "started_at",
    "ended_at",
    "duration_seconds",
)
BATCH_PAUSE_SECONDS = 0.01
# cameraViewStatsService: shorter sessions are not counted as views
MIN_COUNTABLE_VIEW_SECONDS = 5
# timeService.js LOCAL_SQL_PATTERN
_UTC = bt.fixed_zone(0.0)
_LOCAL_SQL = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class StuckSessions:
    """Active sessions whose heartbeat is older than a cutoff."""

    count: int
    oldest_heartbeat: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndedSessions:
    """What one run ended, and why it stopped early if it did."""

    ended: int
    batches: int
    remaining: int
    stopped: str | None
    session_ids: tuple[str, ...]


def _local_sql_parts(text: object) -> datetime | None:
    """The backend's parseLocalSqlParts: the wall-clock fields of a local SQL text (naive), else None."""
    if not isinstance(text, str):
        return None
    match = _LOCAL_SQL.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


def resolve_end(heartbeat: object, zone: bt.Zone) -> str:
    """The backend's resolveLocalSqlTimestamp(last_heartbeat): the same wall time, as ``YYYY-MM-DD HH:MM:SS``."""
    parts = _local_sql_parts(heartbeat)
    if parts is not None:
        return bt.sql_text(parts)
    moment = bt.parse(heartbeat, bt.TimeBase.UTC, zone) if isinstance(heartbeat, str) else None
    return zone.local_text(moment)


def _comparable_seconds(text: object) -> float | None:
    """The backend's localSqlToComparableMs, in seconds: wall-clock fields read as UTC, else a zoned ISO text."""
    parts = _local_sql_parts(text)
    if parts is not None:
        return parts.replace(tzinfo=UTC).timestamp()
    moment = bt.parse(text, bt.TimeBase.UTC, _UTC)
    return moment.timestamp() if moment is not None else None


def duration_seconds(started_at: object, ended_at: object) -> int:
    """The backend's diffLocalSqlSeconds: whole seconds between the two, 0 when either cannot be read."""
    start, end = _comparable_seconds(started_at), _comparable_seconds(ended_at)
    if start is None or end is None:
        return 0
    return max(0, int((end - start) // 1))


def _positive_int(value: object) -> int:
    """JavaScript's parseInt for the ids and durations the backend normalises (0 when not a positive integer)."""
    try:
        number = int(str(value).strip().split(".")[0])
    except ValueError:
        return 0
    return number if number > 0 else 0


def stale_condition(timeout_seconds: float) -> str:
    """The backend's sweep condition (``?`` is its local time now)."""
    return f"is_active = 1 AND datetime(last_heartbeat) < datetime(?, '-{timeout_seconds:g} seconds')"


def count_stale(
    path: Path, timeout_seconds: float, busy_timeout_ms: int, fallback_offset_hours: float
) -> StuckSessions:
    """Active sessions the backend's sweep would end now (silent past its timeout, in its own zone); read-only."""
    with reading(path, busy_timeout_ms) as conn:
        try:
            zone = bt.resolve_zone(bt.read_zone_setting(conn), fallback_offset_hours)
            row = conn.execute(
                f"SELECT count(*), min(last_heartbeat) FROM viewer_sessions WHERE {stale_condition(timeout_seconds)}",
                (zone.local_text(),),
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise StrategyError(f"database busy: cannot count stale sessions ({exc})") from None
            raise StrategyError(f"cannot read viewer_sessions: {exc}") from None
    return StuckSessions(count=int(row[0]), oldest_heartbeat=str(row[1]) if row[1] is not None else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Schema:
    history: tuple[str, ...]
    with_duration: bool
    has_cameras: bool
    has_stats: bool


def _end_batch(
    conn: sqlite3.Connection,
    *,
    schema: _Schema,
    timeout_seconds: float,
    fallback_offset_hours: float,
    rows: int,
) -> list[str]:
    """End up to ``rows`` stale sessions in one transaction, as endSession would; returns their session ids."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # the zone and the clock are read inside the transaction: what the backend would use at this moment
        zone = bt.resolve_zone(bt.read_zone_setting(conn), fallback_offset_hours)
        stale = conn.execute(
            f"SELECT * FROM viewer_sessions WHERE {stale_condition(timeout_seconds)} ORDER BY last_heartbeat LIMIT ?",
            (zone.local_text(), rows),
        ).fetchall()
        ended: list[str] = []
        for row in stale:
            ended_at = resolve_end(row["last_heartbeat"], zone)
            duration = duration_seconds(row["started_at"], ended_at)
            if schema.with_duration:
                cur = conn.execute(
                    "UPDATE viewer_sessions SET is_active = 0, ended_at = ?, duration_seconds = ? "
                    "WHERE session_id = ? AND is_active = 1",
                    (ended_at, duration, row["session_id"]),
                )
            else:
                cur = conn.execute(
                    "UPDATE viewer_sessions SET is_active = 0, ended_at = ? WHERE session_id = ? AND is_active = 1",
                    (ended_at, row["session_id"]),
                )
            if cur.rowcount != 1:
                continue  # ended by someone else meanwhile: their copy and count stand
            camera_id = row["camera_id"]
            camera = (
                conn.execute("SELECT name FROM cameras WHERE id = ?", (camera_id,)).fetchone()
                if schema.has_cameras
                else None
            )
            values = {
                "session_id": row["session_id"],
                "camera_id": camera_id,
                "camera_name": (camera["name"] if camera is not None else None) or f"Camera {camera_id}",
                "ip_address": row["ip_address"],
                "user_agent": row["user_agent"],
                "device_type": row["device_type"],
                "started_at": row["started_at"],
                "ended_at": ended_at,
                "duration_seconds": duration,
            }
            marks = ", ".join("?" for _ in schema.history)
            conn.execute(
                f"INSERT INTO viewer_session_history ({', '.join(schema.history)}) VALUES ({marks})",
                tuple(values[c] for c in schema.history),
            )
            camera_key = _positive_int(camera_id)
            watched = _positive_int(duration)
            if schema.has_stats and camera is not None and camera_key > 0 and watched >= MIN_COUNTABLE_VIEW_SECONDS:
                conn.execute(
                    "INSERT INTO camera_view_stats (camera_id, total_live_views, total_watch_seconds, last_viewed_at,"
                    " created_at, updated_at) VALUES (?, 1, ?, ?, ?, ?) ON CONFLICT(camera_id) DO UPDATE SET"
                    " total_live_views = total_live_views + 1,"
                    " total_watch_seconds = total_watch_seconds + excluded.total_watch_seconds,"
                    " last_viewed_at = excluded.last_viewed_at, updated_at = excluded.updated_at",
                    (camera_key, watched, ended_at, ended_at, ended_at),
                )
            ended.append(str(row["session_id"]))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return ended


def end_stale_sessions(  # noqa: PLR0913 -- the inputs of the backend's own endSession
    path: Path,
    *,
    timeout_seconds: float,
    fallback_offset_hours: float,
    batch_rows: int,
    max_batches: int,
    busy_timeout_ms: int,
) -> EndedSessions:
    """End the active sessions the backend's sweep would end now, writing what its endSession writes.

    A busy database on the first batch raises StrategyError and nothing has changed; on a later batch
    the run stops there and says so (each batch is complete or absent).
    """
    pause = threading.Event()
    with writing(path, busy_timeout_ms, row_factory=True) as conn:
        try:
            session_columns = table_columns(conn, "viewer_sessions")
            history_columns = table_columns(conn, "viewer_session_history")
            schema = _Schema(
                history=tuple(c for c in HISTORY_COLUMNS if c in history_columns),
                with_duration="duration_seconds" in session_columns,
                has_cameras={"id", "name"} <= table_columns(conn, "cameras"),
                has_stats={"camera_id", "total_live_views", "total_watch_seconds"}
                <= table_columns(conn, "camera_view_stats"),
            )
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise StrategyError(f"database busy: cannot read the schema ({exc}); no session was ended") from None
            raise StrategyError(f"cannot read the schema: {exc}") from None
        if not {"session_id", "is_active", "last_heartbeat", "ended_at"} <= session_columns:
            raise StrategyError(
                "viewer_sessions lacks session_id, is_active, last_heartbeat or ended_at: unknown schema"
            )
        if not history_columns:
            raise StrategyError("viewer_session_history is missing: sessions are not ended without their copy")
        ended: list[str] = []
        batches = 0
        stopped: str | None = None
        while batches < max_batches:
            try:
                done = _end_batch(
                    conn,
                    schema=schema,
                    timeout_seconds=timeout_seconds,
                    fallback_offset_hours=fallback_offset_hours,
                    rows=batch_rows,
                )
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise StrategyError(f"ending sessions failed: {exc}") from None
                if batches == 0:
                    raise StrategyError(
                        f"database busy: no write lock within {busy_timeout_ms} ms; no session was ended"
                    ) from None
                stopped = f"database busy after {batches} batches"
                break
            batches += 1
            ended.extend(done)
            if len(done) < batch_rows:
                break
            # between batches the backend's writer gets its turn
            pause.wait(BATCH_PAUSE_SECONDS)
    try:
        remaining = count_stale(path, timeout_seconds, busy_timeout_ms, fallback_offset_hours).count
    except StrategyError:
        remaining = -1
    return EndedSessions(
        ended=len(ended), batches=batches, remaining=remaining, stopped=stopped, session_ids=tuple(ended)
    )
