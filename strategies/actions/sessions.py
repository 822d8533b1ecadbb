"""End stuck viewer sessions the way the backend's own sweep does, in small busy-aware batches.

The backend ends a live session by setting ``is_active = 0``, ``ended_at`` and ``duration_seconds``
(local-time text ``YYYY-MM-DD HH:MM:SS``) and copying the row into ``viewer_session_history``. This does
the same, with one difference on purpose: ``ended_at`` is the moment the working sweep would have ended
the session (its last heartbeat plus the backend's timeout, never later than now), so a sweep that was
stuck for hours does not add those hours to the viewers' watch time.

Each batch is one short ``BEGIN IMMEDIATE`` transaction under a short busy timeout; the update
re-checks ``is_active = 1`` so a session the backend ends at the same moment is not ended twice. The
history columns are read from the table, so older schemas (without ``session_id``) work too.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from metrics.sqlite import LOCAL_FORMAT, is_busy, local_text, table_columns
from strategies.actions.sqlite import reading, writing
from strategies.base import StrategyError

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


def parse_local(text: str) -> datetime | None:
    """A stored local-time text as a naive datetime (None when it is not one)."""
    try:
        return datetime.strptime(str(text)[:19].replace("T", " "), LOCAL_FORMAT)
    except ValueError:
        return None


def count_stuck(path: Path, cutoff: str, busy_timeout_ms: int) -> StuckSessions:
    """How many active sessions have a heartbeat older than ``cutoff`` (local-time text); read-only."""
    with reading(path, busy_timeout_ms) as conn:
        try:
            row = conn.execute(
                "SELECT count(*), min(last_heartbeat) FROM viewer_sessions WHERE is_active = 1 AND last_heartbeat < ?",
                (cutoff,),
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise StrategyError(f"database busy: cannot count stuck sessions ({exc})") from None
            raise StrategyError(f"cannot read viewer_sessions: {exc}") from None
    return StuckSessions(count=int(row[0]), oldest_heartbeat=str(row[1]) if row[1] is not None else None)


def _select(conn: sqlite3.Connection, has_cameras: bool) -> str:
    # the backend names a camera it cannot find "Camera <id>"
    name = "COALESCE(c.name, 'Camera ' || vs.camera_id)" if has_cameras else "'Camera ' || vs.camera_id"
    join = "LEFT JOIN cameras c ON c.id = vs.camera_id" if has_cameras else ""
    return (
        f"SELECT vs.*, {name} AS camera_name FROM viewer_sessions vs {join} "
        "WHERE vs.is_active = 1 AND vs.last_heartbeat < ? ORDER BY vs.last_heartbeat LIMIT ?"
    )


def _end_batch(
    conn: sqlite3.Connection,
    *,
    query: str,
    history: tuple[str, ...],
    with_duration: bool,
    cutoff: str,
    now: datetime,
    timeout: timedelta,
    rows: int,
) -> list[str]:
    """End up to ``rows`` stuck sessions in one transaction; returns their session ids."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        ended: list[str] = []
        for row in conn.execute(query, (cutoff, rows)).fetchall():
            heartbeat = parse_local(row["last_heartbeat"])
            started = parse_local(row["started_at"])
            end = min(now, heartbeat + timeout) if heartbeat is not None else now
            duration = max(0, int((end - started).total_seconds())) if started is not None else 0
            ended_at = local_text(end)
            if with_duration:
                cur = conn.execute(
                    "UPDATE viewer_sessions SET is_active = 0, ended_at = ?, duration_seconds = ? "
                    "WHERE id = ? AND is_active = 1",
                    (ended_at, duration, row["id"]),
                )
            else:
                cur = conn.execute(
                    "UPDATE viewer_sessions SET is_active = 0, ended_at = ? WHERE id = ? AND is_active = 1",
                    (ended_at, row["id"]),
                )
            if cur.rowcount != 1:
                continue
            values = {
                "session_id": row["session_id"],
                "camera_id": row["camera_id"],
                "camera_name": row["camera_name"],
                "ip_address": row["ip_address"],
                "user_agent": row["user_agent"],
                "device_type": row["device_type"],
                "started_at": row["started_at"],
                "ended_at": ended_at,
                "duration_seconds": duration,
            }
            marks = ", ".join("?" for _ in history)
            conn.execute(
                f"INSERT INTO viewer_session_history ({', '.join(history)}) VALUES ({marks})",
                tuple(values[c] for c in history),
            )
            ended.append(str(row["session_id"]))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return ended


def end_stuck_sessions(
    path: Path,
    *,
    cutoff: str,
    now: datetime,
    session_timeout_seconds: float,
    batch_rows: int,
    max_batches: int,
    busy_timeout_ms: int,
) -> EndedSessions:
    """End active sessions whose heartbeat is older than ``cutoff``; ``now`` is the backend's local time.

    A busy database on the first batch raises StrategyError and nothing has changed; on a later batch
    the run stops there and says so (each batch is complete or absent).
    """
    pause = threading.Event()
    with writing(path, busy_timeout_ms, row_factory=True) as conn:
        try:
            session_columns = table_columns(conn, "viewer_sessions")
            history_columns = table_columns(conn, "viewer_session_history")
            has_cameras = {"id", "name"} <= table_columns(conn, "cameras")
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise StrategyError(f"database busy: cannot read the schema ({exc}); no session was ended") from None
            raise StrategyError(f"cannot read the schema: {exc}") from None
        if not {"is_active", "last_heartbeat", "ended_at"} <= session_columns:
            raise StrategyError("viewer_sessions lacks is_active, last_heartbeat or ended_at: unknown schema")
        if not history_columns:
            raise StrategyError("viewer_session_history is missing: sessions are not ended without their copy")
        history = tuple(c for c in HISTORY_COLUMNS if c in history_columns)
        query = _select(conn, has_cameras)
        timeout = timedelta(seconds=session_timeout_seconds)
        ended: list[str] = []
        batches = 0
        stopped: str | None = None
        while batches < max_batches:
            try:
                done = _end_batch(
                    conn,
                    query=query,
                    history=history,
                    with_duration="duration_seconds" in session_columns,
                    cutoff=cutoff,
                    now=now,
                    timeout=timeout,
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
            remaining = int(
                conn.execute(
                    "SELECT count(*) FROM viewer_sessions WHERE is_active = 1 AND last_heartbeat < ?", (cutoff,)
                ).fetchone()[0]
            )
        except sqlite3.OperationalError:
            remaining = -1
    return EndedSessions(
        ended=len(ended), batches=batches, remaining=remaining, stopped=stopped, session_ids=tuple(ended)
    )
