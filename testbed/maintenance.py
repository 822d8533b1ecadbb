"""The backend's own periodic cleanups: the 6-hourly history archive and the daily log retention."""

from __future__ import annotations

import sqlite3

from testbed.localtime import LocalClock

DAY = 86_400.0
HISTORY_DAYS = 90
SECURITY_LOG_DAYS = 90
AUDIT_LOG_DAYS = 90
RESTART_LOG_DAYS = 30

_HISTORY_COLUMNS = "id, session_id, camera_id, camera_name, ip_address, user_agent, device_type, started_at, "
_HISTORY_COLUMNS += "ended_at, duration_seconds"
_PLAYBACK_COLUMNS = "id, session_id, camera_id, camera_name, segment_filename, ip_address, user_agent, started_at, "
_PLAYBACK_COLUMNS += "ended_at, duration_seconds"


def archive_history(conn: sqlite3.Connection, clock: LocalClock) -> dict[str, int]:
    """Move history older than 90 days into the archive tables (OperationalError if one is missing)."""
    cutoff = clock.local(HISTORY_DAYS * DAY)
    moved = {}
    for source, target, columns in (
        ("viewer_session_history", "viewer_session_history_archive", _HISTORY_COLUMNS),
        ("playback_viewer_session_history", "playback_viewer_session_history_archive", _PLAYBACK_COLUMNS),
    ):
        conn.execute(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {source} WHERE started_at < ?", (cutoff,))
        moved[source] = conn.execute(f"DELETE FROM {source} WHERE started_at < ?", (cutoff,)).rowcount
    return moved


def prune_logs(conn: sqlite3.Connection, clock: LocalClock) -> dict[str, int]:
    """Daily retention: security and audit logs after 90 days, restart logs after 30 (UTC columns)."""
    pruned = {}
    for table, days in (
        ("security_logs", SECURITY_LOG_DAYS),
        ("audit_logs", AUDIT_LOG_DAYS),
        ("restart_logs", RESTART_LOG_DAYS),
    ):
        pruned[table] = conn.execute(f"DELETE FROM {table} WHERE created_at < ?", (clock.utc(days * DAY),)).rowcount
    return pruned
