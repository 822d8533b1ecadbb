"""Viewer sessions as the backend keeps them: start, heartbeat, stop, and the sweep that ends silent ones."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from testbed.localtime import LocalClock, local_seconds_between

# cameraViewStatsService: shorter sessions are not counted as views (bots, instant bounces)
MIN_COUNTABLE_VIEW_SECONDS = 5


def device_type(user_agent: str) -> str:
    """Rough device class from a User-Agent, as the backend records it."""
    lowered = user_agent.lower()
    if "mobile" in lowered or "android" in lowered or "iphone" in lowered:
        return "mobile"
    if "tablet" in lowered or "ipad" in lowered:
        return "tablet"
    return "desktop"


def start_session(  # noqa: PLR0913 -- the backend's own call shape
    conn: sqlite3.Connection,
    clock: LocalClock,
    *,
    camera_id: int,
    ip_address: str,
    user_agent: str,
    heartbeat_age_seconds: float = 0.0,
) -> str:
    """Insert an active session and return its id; a positive age back-dates it (stuck sessions)."""
    session_id = str(uuid.uuid4())
    conn.execute(
        """INSERT INTO viewer_sessions (session_id, camera_id, ip_address, user_agent, device_type,
               started_at, last_heartbeat, is_active) VALUES (?, ?, ?, ?, ?, ?, ?, 1)""",
        (
            session_id,
            camera_id,
            ip_address,
            user_agent,
            device_type(user_agent),
            clock.local(heartbeat_age_seconds + (60.0 if heartbeat_age_seconds else 0.0)),
            clock.local(heartbeat_age_seconds),
        ),
    )
    return session_id


def heartbeat(conn: sqlite3.Connection, clock: LocalClock, session_id: str) -> bool:
    """Refresh an active session's heartbeat; False when there is no such active session."""
    cursor = conn.execute(
        "UPDATE viewer_sessions SET last_heartbeat = ? WHERE session_id = ? AND is_active = 1",
        (clock.local(), session_id),
    )
    return cursor.rowcount > 0


def record_completed_view(conn: sqlite3.Connection, *, camera_id: int, duration: int, viewed_at: str) -> bool:
    """cameraViewStatsService.recordCompletedLiveView: count a view of at least 5 s in camera_view_stats.

    ``viewed_at`` (the session's local ``ended_at``) also becomes ``created_at``/``updated_at``: this table's
    times are local text, unlike the ``CURRENT_TIMESTAMP`` defaults elsewhere.
    """
    if camera_id <= 0 or duration < MIN_COUNTABLE_VIEW_SECONDS:
        return False
    conn.execute(
        """INSERT INTO camera_view_stats (camera_id, total_live_views, total_watch_seconds, last_viewed_at,
               created_at, updated_at) VALUES (?, 1, ?, ?, ?, ?)
           ON CONFLICT(camera_id) DO UPDATE SET total_live_views = total_live_views + 1,
               total_watch_seconds = total_watch_seconds + excluded.total_watch_seconds,
               last_viewed_at = excluded.last_viewed_at, updated_at = excluded.updated_at""",
        (camera_id, duration, viewed_at, viewed_at, viewed_at),
    )
    return True


def end_session(conn: sqlite3.Connection, clock: LocalClock, session_id: str, *, ended_at: str | None = None) -> bool:
    """viewerSessionService.endSession: end one active session; False when it is not active.

    ``ended_at`` is the local-time text to record (the sweep passes the session's last heartbeat); None
    means now. The session's UPDATE is keyed by ``session_id`` alone, without an ``is_active`` guard, as
    in the backend: only the SELECT before it checks ``is_active``. The history row's ``created_at`` is
    the UTC ``CURRENT_TIMESTAMP`` default.
    """
    row = conn.execute("SELECT * FROM viewer_sessions WHERE session_id = ? AND is_active = 1", (session_id,)).fetchone()
    if row is None:
        return False
    timestamp = ended_at[:19].replace("T", " ") if ended_at else clock.local()
    duration = local_seconds_between(row["started_at"], timestamp)
    conn.execute(
        "UPDATE viewer_sessions SET is_active = 0, ended_at = ?, duration_seconds = ? WHERE session_id = ?",
        (timestamp, duration, session_id),
    )
    camera = conn.execute("SELECT name FROM cameras WHERE id = ?", (row["camera_id"],)).fetchone()
    conn.execute(
        """INSERT INTO viewer_session_history (camera_id, camera_name, ip_address, user_agent, device_type,
               started_at, ended_at, duration_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            row["camera_id"],
            camera["name"] if camera is not None and camera["name"] else f"Camera {row['camera_id']}",
            row["ip_address"],
            row["user_agent"],
            row["device_type"],
            row["started_at"],
            timestamp,
            duration,
        ),
    )
    record_completed_view(conn, camera_id=int(row["camera_id"]), duration=duration, viewed_at=timestamp)
    return True


def stop_session(conn: sqlite3.Connection, clock: LocalClock, session_id: str) -> bool:
    """POST /api/viewer/stop: end one active session now; False when it was not active."""
    return end_session(conn, clock, session_id)


def end_stale_sessions(conn: sqlite3.Connection, clock: LocalClock, *, timeout_seconds: float) -> int:
    """The backend's sweep (cleanupStaleSessions): end sessions silent for longer than the timeout.

    Compared with SQLite's ``datetime()`` against the backend's local now, and each session ends at its
    last heartbeat.
    """
    rows = conn.execute(
        """SELECT session_id, last_heartbeat FROM viewer_sessions WHERE is_active = 1
           AND datetime(last_heartbeat) < datetime(?, ?)""",
        (clock.local(), f"-{int(timeout_seconds)} seconds"),
    ).fetchall()
    return sum(end_session(conn, clock, row["session_id"], ended_at=row["last_heartbeat"]) for row in rows)


def end_all_sessions(conn: sqlite3.Connection, clock: LocalClock) -> int:
    """End every active session now (the testbed's reset)."""
    rows = conn.execute("SELECT session_id FROM viewer_sessions WHERE is_active = 1").fetchall()
    return sum(end_session(conn, clock, row["session_id"]) for row in rows)


_ACTIVE_SELECT = """SELECT vs.*, c.name AS camera_name FROM viewer_sessions vs
    LEFT JOIN cameras c ON c.id = vs.camera_id WHERE vs.is_active = 1"""


def end_playback_session(
    conn: sqlite3.Connection, clock: LocalClock, session_id: str, *, ended_at: str | None = None
) -> bool:
    """playbackViewerSessionService.endSession: the live session's rules for playback sessions."""
    row = conn.execute(
        "SELECT * FROM playback_viewer_sessions WHERE session_id = ? AND is_active = 1", (session_id,)
    ).fetchone()
    if row is None:
        return False
    timestamp = ended_at[:19].replace("T", " ") if ended_at else clock.local()
    duration = local_seconds_between(row["started_at"], timestamp)
    conn.execute(
        "UPDATE playback_viewer_sessions SET is_active = 0, ended_at = ?, duration_seconds = ? WHERE session_id = ?",
        (timestamp, duration, session_id),
    )
    columns = (
        "camera_id, camera_name, segment_filename, segment_started_at, playback_access_mode, ip_address, "
        "user_agent, device_type, admin_user_id, admin_username, token_id, token_label, started_at"
    )
    conn.execute(
        f"""INSERT INTO playback_viewer_session_history ({columns}, ended_at, duration_seconds)
            SELECT {columns}, ?, ? FROM playback_viewer_sessions WHERE session_id = ?""",
        (timestamp, duration, session_id),
    )
    return True


def end_stale_playback(conn: sqlite3.Connection, clock: LocalClock, *, timeout_seconds: float) -> int:
    """The backend's playback sweep: silent playback sessions end at their last heartbeat."""
    rows = conn.execute(
        """SELECT session_id, last_heartbeat FROM playback_viewer_sessions WHERE is_active = 1
           AND datetime(last_heartbeat) < datetime(?, ?)""",
        (clock.local(), f"-{int(timeout_seconds)} seconds"),
    ).fetchall()
    return sum(end_playback_session(conn, clock, row["session_id"], ended_at=row["last_heartbeat"]) for row in rows)


def session_counts(conn: sqlite3.Connection, clock: LocalClock, *, stale_after_seconds: float) -> tuple[int, int]:
    """(active sessions, active sessions whose heartbeat is older than `stale_after_seconds`)."""
    active = conn.execute("SELECT COUNT(*) FROM viewer_sessions WHERE is_active = 1").fetchone()[0]
    stale = conn.execute(
        "SELECT COUNT(*) FROM viewer_sessions WHERE is_active = 1 AND last_heartbeat < ?",
        (clock.local(stale_after_seconds),),
    ).fetchone()[0]
    return int(active), int(stale)


def viewer_stats(conn: sqlite3.Connection, clock: LocalClock) -> dict[str, Any]:
    """The `data` object of GET /api/viewer/stats."""
    now_dt = clock.now()
    active_rows = conn.execute(_ACTIVE_SELECT + " ORDER BY vs.started_at").fetchall()
    sessions = [
        {
            "sessionId": row["session_id"],
            "cameraId": row["camera_id"],
            "cameraName": row["camera_name"],
            "ipAddress": row["ip_address"],
            "deviceType": row["device_type"],
            "startedAt": row["started_at"],
            "lastHeartbeat": row["last_heartbeat"],
            "durationSeconds": max(0, int((now_dt - clock.parse_local(row["started_at"])).total_seconds())),
        }
        for row in active_rows
    ]
    by_camera = [
        {"camera_id": row["camera_id"], "camera_name": row["camera_name"], "viewer_count": row["viewer_count"]}
        for row in conn.execute(
            """SELECT vs.camera_id, c.name AS camera_name, COUNT(*) AS viewer_count FROM viewer_sessions vs
               LEFT JOIN cameras c ON c.id = vs.camera_id WHERE vs.is_active = 1
               GROUP BY vs.camera_id ORDER BY vs.camera_id"""
        )
    ]
    midnight = now_dt.strftime("%Y-%m-%d 00:00:00")
    today = conn.execute(
        """SELECT COUNT(*) AS total, COUNT(DISTINCT ip_address) AS unique_viewers,
                  COALESCE(SUM(duration_seconds), 0) AS watch_time
           FROM viewer_session_history WHERE started_at >= ?""",
        (midnight,),
    ).fetchone()
    total = int(today["total"]) + len(sessions)
    watch_time = int(today["watch_time"])
    return {
        "activeViewers": len(sessions),
        "activeSessions": sessions,
        "viewersByCamera": by_camera,
        "today": {
            "totalSessions": total,
            "uniqueViewers": int(today["unique_viewers"]),
            "totalWatchTime": watch_time,
            "averageWatchTime": round(watch_time / today["total"]) if today["total"] else 0,
        },
    }
