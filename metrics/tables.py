"""The backend tables the daemon dates: which column dates a row, in which clock, and what retention applies.

One list serves sampling (row counts and the oldest row, metrics/sqlite.py), the database strategy's table
findings and its retention pruning, so the three cannot read a column in different clocks. The time bases
are those the backend's code writes (see metrics/backendtime.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from metrics.backendtime import TimeBase


class Retention(StrEnum):
    """Which retention period applies to a table's rows."""

    NONE = "none"  # watched only: the backend cleans it (or it must never be pruned)
    DAYS = "days"  # strategies.database.retention_days
    ARCHIVE = "archive"  # strategies.database.archive_retention_days


@dataclass(frozen=True, slots=True, kw_only=True)
class TableSpec:
    """One dated table: ``column`` in ``time_base``; ``expiry`` when the column is a future expiry time."""

    table: str
    column: str
    time_base: TimeBase
    retention: Retention = Retention.DAYS
    expiry: bool = False
    only_where: str | None = None
    needs_columns: tuple[str, ...] = ()

    @property
    def archive(self) -> bool:
        """Whether the longer archive retention applies."""
        return self.retention is Retention.ARCHIVE

    @property
    def pruned(self) -> bool:
        """Whether retention pruning may delete this table's rows."""
        return self.retention is not Retention.NONE


TABLES: tuple[TableSpec, ...] = (
    # ended sessions only: a live one is never pruned
    TableSpec(
        table="viewer_sessions",
        column="started_at",
        time_base=TimeBase.LOCAL,
        only_where='"is_active" = 0',
        needs_columns=("is_active",),
    ),
    # the backend archives it itself every 6 hours; watched for that job falling behind
    TableSpec(table="viewer_session_history", column="started_at", time_base=TimeBase.LOCAL, retention=Retention.NONE),
    TableSpec(
        table="viewer_session_history_archive",
        column="started_at",
        time_base=TimeBase.LOCAL,
        retention=Retention.ARCHIVE,
    ),
    TableSpec(
        table="playback_viewer_sessions",
        column="started_at",
        time_base=TimeBase.LOCAL,
        only_where='"is_active" = 0',
        needs_columns=("is_active",),
    ),
    TableSpec(
        table="playback_viewer_session_history_archive",
        column="started_at",
        time_base=TimeBase.LOCAL,
        retention=Retention.ARCHIVE,
    ),
    # written with toUtcSql(): UTC text
    TableSpec(table="playback_token_sessions", column="expires_at", time_base=TimeBase.UTC, expiry=True),
    TableSpec(table="playback_token_audit_logs", column="created_at", time_base=TimeBase.UTC),
    # written with new Date().toISOString(): ISO UTC text
    TableSpec(table="login_attempts", column="attempt_time", time_base=TimeBase.UTC),
    TableSpec(table="token_blacklist", column="expires_at", time_base=TimeBase.UTC, expiry=True),
    TableSpec(table="camera_source_lifecycle_events", column="created_at", time_base=TimeBase.UTC),
    TableSpec(table="recording_maintenance_events", column="created_at", time_base=TimeBase.UTC),
)
BY_TABLE: dict[str, TableSpec] = {spec.table: spec for spec in TABLES}
