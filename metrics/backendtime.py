"""The backend's clocks: its configured timezone, and the texts it stores times as.

The backend writes times in three ways. Viewer-session columns hold its local wall time
(``YYYY-MM-DD HH:MM:SS`` in the zone of the ``system_settings`` row ``timezone``, which an admin can change
at runtime; ``WIB``, ``WITA`` and ``WIT`` stand for ``Asia/Jakarta``, ``Asia/Makassar`` and
``Asia/Jayapura``, and a missing row means ``Asia/Jakarta``). ``CURRENT_TIMESTAMP`` columns and
``playback_token_sessions`` hold UTC in the same text form. ``login_attempts``, ``token_blacklist`` and
``camera_source_lifecycle_events`` hold JavaScript ISO texts in UTC (``2026-12-04T05:00:00.000Z``).
``parse`` reads any of these in the column's own time base; ``BackendZone`` reads the zone.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SQL_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_ZONE = "Asia/Jakarta"
# the backend's own names (timezoneService.js), with their fixed offsets for hosts without zone data
ALIASES: dict[str, tuple[str, float]] = {
    "WIB": ("Asia/Jakarta", 7.0),
    "WITA": ("Asia/Makassar", 8.0),
    "WIT": ("Asia/Jayapura", 9.0),
}
_FIXED = {name: hours for name, hours in ALIASES.values()}


class TimeBase(StrEnum):
    """The clock a column's texts are written in."""

    LOCAL = "local"  # the backend's configured timezone
    UTC = "utc"  # UTC, as ``YYYY-MM-DD HH:MM:SS`` or as an ISO text with ``Z``


@dataclass(frozen=True, slots=True, kw_only=True)
class Zone:
    """A resolved backend timezone: its name, the tzinfo to use, and where it came from."""

    name: str
    tz: tzinfo
    source: str  # "database", "default" (no row: the backend's own default) or "fallback" (configured offset)

    def now_local(self, now_utc: datetime | None = None) -> datetime:
        """The backend's local wall time (naive), as it writes its session columns."""
        base = now_utc if now_utc is not None else datetime.now(UTC)
        return base.astimezone(self.tz).replace(tzinfo=None)

    def local_text(self, now_utc: datetime | None = None) -> str:
        """``now_local`` as the backend stores it."""
        return self.now_local(now_utc).strftime(SQL_FORMAT)


def fixed_zone(offset_hours: float) -> Zone:
    """A zone at a fixed offset from UTC (the configured ``backend.timezone_offset_hours``)."""
    sign = "+" if offset_hours >= 0 else "-"
    return Zone(
        name=f"UTC{sign}{abs(offset_hours):g}",
        tz=timezone(timedelta(hours=offset_hours)),
        source="fallback",
    )


def resolve_zone(value: str | None, fallback_offset_hours: float) -> Zone:
    """The zone the backend uses for a ``system_settings.timezone`` value (None: no row)."""
    if value is None or not value.strip():
        name, source = DEFAULT_ZONE, "default"
    else:
        name, source = value.strip(), "database"
    if name.upper() in ALIASES:
        name = ALIASES[name.upper()][0]
    try:
        return Zone(name=name, tz=ZoneInfo(name), source=source)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    if name in _FIXED:  # a host without zone data still knows the backend's own three zones
        return Zone(name=name, tz=timezone(timedelta(hours=_FIXED[name])), source=source)
    zone = fixed_zone(fallback_offset_hours)
    return Zone(name=f"{zone.name} (unknown zone {name!r})", tz=zone.tz, source="fallback")


def read_zone_setting(conn: sqlite3.Connection) -> str | None:
    """The ``system_settings`` row ``timezone`` (None when the row or the table is missing)."""
    try:
        row = conn.execute("SELECT setting_value FROM system_settings WHERE setting_key = 'timezone'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return str(row[0]) if row is not None and row[0] is not None else None


class BackendZone:
    """The backend's timezone, read from its database at each look and kept when it cannot be read."""

    def __init__(self, fallback_offset_hours: float) -> None:
        self._fallback = fallback_offset_hours
        self._value: str | None = None
        self.current: Zone = resolve_zone(None, fallback_offset_hours)
        self.changes = 0  # how often the row changed since the first read

    def read(self, conn: sqlite3.Connection) -> Zone:
        """Read the row on this connection (one indexed lookup); a changed value takes effect at once."""
        value = read_zone_setting(conn)
        if value != self._value:
            self.changes += 1
            self._value = value
            self.current = resolve_zone(value, self._fallback)
        return self.current


def parse(text: object, base: TimeBase, zone: Zone) -> datetime | None:
    """A stored time as an aware UTC datetime, read in its column's time base; None when it is not one.

    Texts that carry their own zone (``Z``, ``+07:00``) are read as such whatever the column; the others are
    read in ``base``: the backend's zone for local columns, UTC for UTC columns.
    """
    if not isinstance(text, str) or len(text.strip()) < 19:
        return None
    value = text.strip().replace(" ", "T", 1)
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone.tz if base is TimeBase.LOCAL else UTC)
    return moment.astimezone(UTC)


def sql_text(moment: datetime) -> str:
    """An aware or naive moment as ``YYYY-MM-DD HH:MM:SS`` (no conversion)."""
    return moment.strftime(SQL_FORMAT)


def cutoff_text(base: TimeBase, zone: Zone, now_utc: datetime, days: float) -> str:
    """The ``YYYY-MM-DD HH:MM:SS`` text a column's times older than ``days`` fall below, in its own base.

    Compare it with ``datetime(column)``: SQLite turns an ISO text with ``Z`` into the same UTC form.
    """
    moment = zone.now_local(now_utc) if base is TimeBase.LOCAL else now_utc.astimezone(UTC).replace(tzinfo=None)
    return sql_text(moment - timedelta(days=days))
