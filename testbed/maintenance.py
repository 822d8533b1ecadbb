"""The backend's own periodic cleanups: the 6-hourly history archive and the daily log retention."""

from __future__ import annotations

import sqlite3

from testbed.localtime import LocalClock

DAY = 86_400.0
HISTORY_DAYS = 90
SECURITY_LOG_DAYS = 90
AUDIT_LOG_DAYS = 90
RESTART_LOG_DAYS = 30

_HISTORY_COLUMNS = (
    "id, camera_id, camera_name, ip_address, user_agent, device_type, started_at, ended_at, duration_seconds, "
    "created_at"
)
_PLAYBACK_COLUMNS = (
    "id, camera_id, camera_name, segment_filename, segment_started_at, playback_access_mode, ip_address, "
    "user_agent, device_type, admin_user_id, admin_username, started_at, ended_at, duration_seconds, created_at"
)


def archive_history(conn: sqlite3.Connection, clock: LocalClock) -> dict[str, int]:
    """archiveOldHistory: copy history older than 90 local days into the archives, then delete it there.

    Compared with SQLite's ``datetime()`` on the local-time ``started_at``; rows already archived (same id)
    are not copied twice. OperationalError when an archive table is missing.
    """
    cutoff = clock.local(HISTORY_DAYS * DAY)
    moved = {}
    for source, target, columns in (
        ("viewer_session_history", "viewer_session_history_archive", _HISTORY_COLUMNS),
        ("playback_viewer_session_history", "playback_viewer_session_history_archive", _PLAYBACK_COLUMNS),
    ):
        conn.execute(
            f"""INSERT INTO {target} ({columns}, archived_at) SELECT {columns}, CURRENT_TIMESTAMP FROM {source}
                WHERE datetime(started_at) < datetime(?)
                AND NOT EXISTS (SELECT 1 FROM {target} archive WHERE archive.id = {source}.id)""",
            (cutoff,),
        )
        moved[source] = conn.execute(
            f"DELETE FROM {source} WHERE datetime(started_at) < datetime(?)", (cutoff,)
        ).rowcount
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
