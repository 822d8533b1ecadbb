"""The backend's notion of time: local-time text in its configured zone, UTC text, ISO UTC stamps.

The backend (services/timeService.js, services/timezoneService.js) renders local time in the zone named by
the ``system_settings`` row ``timezone`` and reads that row on every call, so a change made at run time
applies to the next timestamp. Its admin page offers WIB, WITA and WIT, stored as their IANA names.
Columns have different bases (local text, UTC text, ISO UTC); see testbed/README.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_ZONE = "Asia/Jakarta"
# the backend's TIMEZONE_MAP (timezoneService.js): short names the admin page offers
ZONE_ALIASES = {"WIB": "Asia/Jakarta", "WITA": "Asia/Makassar", "WIT": "Asia/Jayapura"}
SHORT_NAMES = {value: key for key, value in ZONE_ALIASES.items()}
OFFSET_ZONES = {7.0: "Asia/Jakarta", 8.0: "Asia/Makassar", 9.0: "Asia/Jayapura"}


def zone_name(text: str) -> str:
    """The IANA name the backend stores for a zone given as WIB/WITA/WIT or an IANA name."""
    return ZONE_ALIASES.get(text.strip().upper(), text.strip())


def zone_for_offset(offset_hours: float) -> str:
    """A zone name for a whole-hour offset: the Indonesian zones for 7/8/9, else an Etc/GMT zone."""
    if offset_hours in OFFSET_ZONES:
        return OFFSET_ZONES[offset_hours]
    if offset_hours == int(offset_hours) and -14 <= offset_hours <= 12:
        hours = int(offset_hours)
        # POSIX sign: Etc/GMT-7 is UTC+7
        return "Etc/UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"
    raise ValueError(f"no zone for a UTC offset of {offset_hours} hours")


def load_zone(name: str) -> tzinfo:
    """The zone for an IANA name; ValueError when unknown (the backend's Intl would throw a RangeError)."""
    try:
        return ZoneInfo(zone_name(name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


class LocalClock:
    """Renders wall time the way the backend stores it (local ``YYYY-MM-DD HH:MM:SS`` in its zone).

    ``offset_hours`` picks the starting zone (7: Asia/Jakarta, the backend's default). Once a database is
    open, ``follow`` makes the clock read the zone from the ``system_settings`` row before each use, as the
    backend does.
    """

    def __init__(self, offset_hours: float = 7.0, *, zone: str | None = None) -> None:
        """Start in ``zone`` (an IANA name or WIB/WITA/WIT), else in the zone for ``offset_hours``."""
        self._zone_name = zone_name(zone) if zone else zone_for_offset(offset_hours)
        self._initial = self._zone_name
        self._tz = load_zone(self._zone_name)
        self._source: Callable[[], str | None] | None = None

    def follow(self, source: Callable[[], str | None]) -> None:
        """Read the zone name from ``source`` (the ``system_settings`` row) before each use."""
        self._source = source

    @property
    def zone(self) -> str:
        """The IANA name of the zone in force now."""
        self._refresh()
        return self._zone_name

    @property
    def initial_zone(self) -> str:
        """The zone chosen at construction (seeded into ``system_settings`` when it has no row)."""
        return self._initial

    def _refresh(self) -> None:
        """Pick up a changed ``timezone`` row; an unknown name keeps the previous zone."""
        if self._source is None:
            return
        name = self._source()
        if not name or name == self._zone_name:
            return
        try:
            self._tz = load_zone(name)
        except ValueError:
            return
        self._zone_name = zone_name(name)

    @property
    def tz(self) -> tzinfo:
        """The zone in force now."""
        self._refresh()
        return self._tz

    @property
    def offset_hours(self) -> float:
        """The zone's current UTC offset in hours."""
        offset = self.now().utcoffset()
        return offset.total_seconds() / 3600.0 if offset is not None else 0.0

    def now(self) -> datetime:
        """Current time, aware, in the local zone."""
        return datetime.now(self.tz)

    def local(self, seconds_ago: float = 0.0) -> str:
        """Local-time text for now minus ``seconds_ago`` (nowLocalSql)."""
        return (self.now() - timedelta(seconds=seconds_ago)).strftime(LOCAL_FORMAT)

    def utc(self, seconds_ago: float = 0.0) -> str:
        """UTC text ``YYYY-MM-DD HH:MM:SS``: SQLite's CURRENT_TIMESTAMP and the backend's toUtcSql."""
        return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime(LOCAL_FORMAT)

    def iso(self, seconds_ago: float = 0.0) -> str:
        """ISO 8601 UTC with milliseconds and ``Z`` (JavaScript's toISOString) for now minus ``seconds_ago``."""
        moment = datetime.now(UTC) - timedelta(seconds=seconds_ago)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def parse_local(self, text: str) -> datetime:
        """Parse a stored local-time text back into an aware datetime in the current zone."""
        return datetime.strptime(text[:19].replace("T", " "), LOCAL_FORMAT).replace(tzinfo=self.tz)

    def iso_utc(self) -> str:
        """ISO 8601 UTC of now, as /health's ``timestamp``."""
        return self.iso()

    def iso_local(self) -> str:
        """ISO 8601 local time with milliseconds and offset, as /health's ``timestampLocal``."""
        return self.now().isoformat(timespec="milliseconds")

    def timezone_name(self) -> str:
        """Zone label reported by /health, e.g. ``Asia/Jakarta (WIB, UTC+7)``."""
        name = self.zone
        hours = self.offset_hours
        offset = f"UTC{hours:+g}"
        short = SHORT_NAMES.get(name)
        return f"{name} ({short}, {offset})" if short else f"{name} ({offset})"


def local_seconds_between(start: str, end: str) -> int:
    """Whole seconds from one local-time text to another, never negative (diffLocalSqlSeconds)."""
    try:
        first = datetime.strptime(start[:19].replace("T", " "), LOCAL_FORMAT)
        last = datetime.strptime(end[:19].replace("T", " "), LOCAL_FORMAT)
    except ValueError:
        return 0
    return max(0, int((last - first).total_seconds()))
