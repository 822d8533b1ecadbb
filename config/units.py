"""How figures are shown to people: one place for units, used by config messages, strategies, the CLI and the API.

Bytes use IEC units (KiB, MiB, GiB), times milliseconds or seconds and larger units as they grow, ratios are
shown as percentages, whole numbers as whole numbers, and a time of day always names its clock. The unit of a
setting or a signal follows from its name (``_bytes``, ``_seconds``, ``_ms``, ``_ratio``, ``_days``), the
convention the Prometheus metrics follow too; ``unit_of`` holds that rule. The package is the lowest layer so
that every other one can use it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

KIB = 1024
_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


class Unit(StrEnum):
    """What a number measures; decides how it is written."""

    BYTES = "bytes"
    SECONDS = "seconds"
    MILLISECONDS = "milliseconds"
    RATIO = "ratio"
    PERCENT = "percent"
    DAYS = "days"
    HOURS = "hours"
    FACTOR = "factor"
    COUNT = "count"


# Suffixes (after any ``:qualifier``) and prefixes that name a unit; first match wins.
_SUFFIXES: tuple[tuple[str, Unit], ...] = (
    ("_bytes", Unit.BYTES),
    ("_seconds", Unit.SECONDS),
    ("_ms", Unit.MILLISECONDS),
    ("_ratio", Unit.RATIO),
    ("_rate", Unit.RATIO),
    ("_days", Unit.DAYS),
    ("_hours", Unit.HOURS),
    ("_factor", Unit.FACTOR),
)


def unit_of(name: str) -> Unit:
    """The unit a setting or signal name implies (``wal_bytes``, ``table_oldest_days:logins``, ``psi_cpu_some``)."""
    base = name.split(":", 1)[0].rsplit(".", 1)[-1]
    if base.startswith("psi_"):
        return Unit.PERCENT
    for suffix, unit in _SUFFIXES:
        if base.endswith(suffix):
            return unit
    return Unit.COUNT


def _trim(text: str) -> str:
    """``2.50`` -> ``2.5``, ``64.0`` -> ``64``."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def number(value: float, digits: int = 2) -> str:
    """A plain number: whole numbers as whole numbers (with thousands separators), others to ``digits`` places."""
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    return _trim(f"{value:,.{digits}f}")


def size(n: float) -> str:
    """Bytes in IEC units: ``512 B``, ``1.5 KiB``, ``26.8 MiB``, ``64 MiB``."""
    value = float(n)
    index = 0
    while abs(value) >= KIB and index < len(_IEC) - 1:
        value /= KIB
        index += 1
    if index == 0:
        return f"{round(value)} B"
    return f"{_trim(f'{value:.1f}')} {_IEC[index]}"


def duration(seconds: float) -> str:
    """A span of time: ``0.4 ms``, ``12 ms``, ``1.5 s``, ``45 s``, ``5 min 30 s``, ``2 h 10 min``, ``3 d 4 h``."""
    s = float(seconds)
    sign = "-" if s < 0 else ""
    s = abs(s)
    if s < 1.0:
        ms = s * 1000
        return f"{sign}{_trim(f'{ms:.1f}') if ms < 10 else f'{ms:.0f}'} ms"
    if s < 60:
        return f"{sign}{_trim(f'{s:.1f}') if s < 10 else f'{s:.0f}'} s"
    whole = round(s)
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{sign}{minutes} min" + (f" {rest} s" if rest else "")
    if whole < 86400:
        hours, rest = divmod(whole, 3600)
        return f"{sign}{hours} h" + (f" {rest // 60} min" if rest // 60 else "")
    days, rest = divmod(whole, 86400)
    return f"{sign}{days} d" + (f" {rest // 3600} h" if rest // 3600 else "")


def percent(ratio: float, digits: int = 1) -> str:
    """A ratio 0..1 as a percentage: ``0.812`` -> ``81.2 %``."""
    return f"{_trim(f'{ratio * 100:.{digits}f}')} %"


def days(n: float) -> str:
    """A number of days: ``1 day``, ``200 days``, ``1.5 days``."""
    text = _trim(f"{n:.1f}")
    return f"{text} day" if text == "1" else f"{text} days"


def value(v: float | None, unit: Unit) -> str:  # noqa: PLR0911 -- one format per unit
    """A figure in its unit, as a person reads it; ``-`` when there is none."""
    if v is None:
        return "-"
    if unit is Unit.BYTES:
        return size(v)
    if unit is Unit.SECONDS:
        return duration(v)
    if unit is Unit.MILLISECONDS:
        return duration(v / 1000)
    if unit is Unit.RATIO:
        return percent(v)
    if unit is Unit.PERCENT:
        return f"{_trim(f'{v:.1f}')} %"
    if unit is Unit.DAYS:
        return days(v)
    if unit is Unit.HOURS:
        return f"{number(v, 1)} h"
    if unit is Unit.FACTOR:
        return f"x{number(v)}"
    return number(v)


def named(name: str, v: float | None) -> str:
    """A signal's or setting's value in the unit its name implies."""
    return value(v, unit_of(name))


def change(name: str, before: float | None, after: float | None) -> str:
    """``before -> after`` in the unit the name implies: ``26.8 MiB -> 2.4 MiB``."""
    return f"{named(name, before)} -> {named(name, after)}"


def zone_name(offset_hours: float) -> str:
    """A fixed UTC offset as ``UTC+07:00`` (``UTC`` for zero)."""
    if offset_hours == 0:
        return "UTC"
    minutes = round(abs(offset_hours) * 60)
    return f"UTC{'+' if offset_hours > 0 else '-'}{minutes // 60:02d}:{minutes % 60:02d}"


def clock(wall: float, *, offset_hours: float | None = None, date: bool = True) -> str:
    """A moment with its zone named: the host's local zone, or a fixed offset (the backend's local time)."""
    if offset_hours is None:
        moment = datetime.fromtimestamp(wall, UTC).astimezone()
        zone = moment.tzname() or zone_name((moment.utcoffset() or timedelta()).total_seconds() / 3600)
    else:
        moment = datetime.fromtimestamp(wall, timezone(timedelta(hours=offset_hours)))
        zone = zone_name(offset_hours)
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S' if date else '%H:%M:%S')} {zone}"


def example(unit: Unit, v: float) -> str:
    """A setting's example value with what it means: ``30000 (30 s)``, ``67108864 (64 MiB)``, ``0.8 (80 %)``."""
    raw = number(v, 6).replace(",", "")
    if unit in (Unit.MILLISECONDS, Unit.SECONDS, Unit.BYTES, Unit.RATIO):
        return f"{raw} for {value(v, unit)}"
    return raw


UNIT_WORDS = {
    Unit.BYTES: "bytes",
    Unit.SECONDS: "seconds",
    Unit.MILLISECONDS: "milliseconds",
    Unit.PERCENT: "percent",
    Unit.DAYS: "days",
    Unit.HOURS: "hours",
}
