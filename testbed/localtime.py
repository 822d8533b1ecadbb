"""The backend's notion of time: local-time strings in a fixed offset, UTC ISO stamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"


class LocalClock:
    """Renders wall time the way the backend stores it (local `YYYY-MM-DD HH:MM:SS`)."""

    def __init__(self, offset_hours: float) -> None:
        """Fix the local offset, e.g. 7 for UTC+7 (the backend's default, Asia/Jakarta)."""
        self.offset_hours = offset_hours
        self.tz = timezone(timedelta(hours=offset_hours))

    def now(self) -> datetime:
        """Current time, aware, in the local offset."""
        return datetime.now(self.tz)

    def local(self, seconds_ago: float = 0.0) -> str:
        """Local-time string for now minus `seconds_ago`."""
        return (self.now() - timedelta(seconds=seconds_ago)).strftime(LOCAL_FORMAT)

    def utc(self, seconds_ago: float = 0.0) -> str:
        """UTC string in SQLite CURRENT_TIMESTAMP form, for columns the backend fills that way."""
        return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime(LOCAL_FORMAT)

    def parse_local(self, text: str) -> datetime:
        """Parse a stored local-time string back into an aware datetime."""
        return datetime.strptime(text, LOCAL_FORMAT).replace(tzinfo=self.tz)

    def iso_utc(self) -> str:
        """ISO 8601 UTC with milliseconds and `Z`, as JavaScript's toISOString() prints it."""
        return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def timezone_name(self) -> str:
        """Zone label reported by /health."""
        if self.offset_hours == 7:
            return "Asia/Jakarta"
        total_minutes = round(self.offset_hours * 60)
        sign = "+" if total_minutes >= 0 else "-"
        hours, minutes = divmod(abs(total_minutes), 60)
        return f"UTC{sign}{hours:02d}:{minutes:02d}"
