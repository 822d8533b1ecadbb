"""Viewer sessions as the backend keeps them: start, heartbeat, stop, and the sweep that ends silent ones."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from testbed.localtime import LocalClock


def device_type(user_agent: str) -> str:
    """Rough device class from a User-Agent, as the backend records it."""
    lowered = user_agent.lower()
    if "mobile" in lowered or "android" in lowered or "iphone" in lowered:
        return "mobile"
    if "tablet" in lowered or "ipad" in lowered:
        return "tablet"
    return "desktop"


def camera_exists(conn: sqlite3.Connection, camera_id: int) -> bool:
    """True when an enabled camera has this id."""
    row = conn.execute("SELECT 1 FROM cameras WHERE id = ? AND enabled = 1", (camera_id,)).fetchone()
    return row is not None


def start_session(
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


def _end(conn: sqlite3.Connection, clock: LocalClock, rows: list[sqlite3.Row]) -> int:
    """End the given active sessions and copy each into viewer_session_history."""
    now = clock.local()
    now_dt = clock.parse_local(now)
    for row in rows:
        duration = max(0, int((now_dt - clock.parse_local(row["started_at"])).total_seconds()))
        conn.execute(
            "UPDATE viewer_sessions SET is_active = 0, ended_at = ?, duration_seconds = ? WHERE id = ?",
            (now, duration, row["id"]),
        )
        conn.execute(
            """INSERT INTO viewer_session_history (session_id, camera_id, camera_name, ip_address, user_agent,
                   device_type, started_at, ended_at, duration_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                row["session_id"],
                row["camera_id"],
                row["camera_name"],
                row["ip_address"],
                row["user_agent"],
                row["device_type"],
                row["started_at"],
                now,
                duration,
            ),
        )
    return len(rows)


_ACTIVE_SELECT = """SELECT vs.*, c.name AS camera_name FROM viewer_sessions vs
    LEFT JOIN cameras c ON c.id = vs.camera_id WHERE vs.is_active = 1"""


def stop_session(conn: sqlite3.Connection, clock: LocalClock, session_id: str) -> bool:
    """End one active session; False when it was not active."""
    rows = conn.execute(_ACTIVE_SELECT + " AND vs.session_id = ?", (session_id,)).fetchall()
    return _end(conn, clock, rows) > 0


def end_stale_sessions(conn: sqlite3.Connection, clock: LocalClock, *, timeout_seconds: float) -> int:
    """The backend's sweep: end active sessions whose last heartbeat is older than the timeout."""
    cutoff = clock.local(timeout_seconds)
    rows = conn.execute(_ACTIVE_SELECT + " AND vs.last_heartbeat < ?", (cutoff,)).fetchall()
    return _end(conn, clock, rows)


def end_all_sessions(conn: sqlite3.Connection, clock: LocalClock) -> int:
    """End every active session the way the sweep does."""
    return _end(conn, clock, conn.execute(_ACTIVE_SELECT).fetchall())


def end_stale_playback(conn: sqlite3.Connection, clock: LocalClock, *, timeout_seconds: float) -> int:
    """The backend's playback sweep: end silent playback sessions and copy them to history."""
    now = clock.local()
    rows = conn.execute(
        """SELECT p.*, c.name AS camera_name FROM playback_viewer_sessions p
           LEFT JOIN cameras c ON c.id = p.camera_id WHERE p.is_active = 1 AND p.last_heartbeat < ?""",
        (clock.local(timeout_seconds),),
    ).fetchall()
    for row in rows:
        conn.execute("UPDATE playback_viewer_sessions SET is_active = 0, ended_at = ? WHERE id = ?", (now, row["id"]))
        conn.execute(
            """INSERT INTO playback_viewer_session_history (session_id, camera_id, camera_name, segment_filename,
                   ip_address, user_agent, started_at, ended_at, duration_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                row["session_id"],
                row["camera_id"],
                row["camera_name"],
                row["segment_filename"],
                row["ip_address"],
                row["user_agent"],
                row["started_at"],
                now,
                row["duration_seconds"],
            ),
        )
    return len(rows)


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
