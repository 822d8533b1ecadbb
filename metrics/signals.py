"""The signals: every number strategies detect on and the engine verifies against, in one table.

Each row says what a signal is called where a person reads it (the dashboard, the CLI), its unit, which source
measures it (or which strategy derives it from others), and the /metrics series that exports it, if any. Triggers
are checked against the table when the daemon starts (a misspelt signal never arms), the API and the CLI take
labels and units from it, and a test checks every row against what a full sample and /metrics really hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from config.units import Unit, unit_of
from metrics.source import Signal, Source
from metrics.sources import SOURCES

_P = "cctv_optimizer_"

BUILT_IN: tuple[Signal, ...] = (
    Signal("cpu_ratio", "Host CPU", Unit.RATIO, "host", _P + "cpu_used_ratio"),
    Signal("memory_used_ratio", "Host memory used", Unit.RATIO, "host", _P + "memory_used_ratio"),
    Signal("load_per_core", "Load per core (1 min)", Unit.COUNT, "host", _P + "load_per_core_ratio"),
    Signal("shm_used_ratio", "/dev/shm used", Unit.RATIO, "host", _P + "shm_used_ratio"),
    Signal(
        "psi_cpu_some",
        "CPU pressure (PSI some, 10 s)",
        Unit.PERCENT,
        "host",
        _P + 'pressure_some_ratio{resource="cpu"}',
    ),
    Signal(
        "psi_memory_some",
        "Memory pressure (PSI some, 10 s)",
        Unit.PERCENT,
        "host",
        _P + 'pressure_some_ratio{resource="memory"}',
    ),
    Signal("backend_rss_bytes", "Backend memory (RSS)", Unit.BYTES, "process", _P + "backend_resident_memory_bytes"),
    Signal("backend_cpu_ratio", "Backend CPU", Unit.RATIO, "process", _P + "backend_cpu_ratio"),
    Signal("backend_uptime_seconds", "Backend uptime", Unit.SECONDS, "process"),
    Signal(
        "tcp_established", "Established connections", Unit.COUNT, "tcp", _P + 'tcp_connections{state="established"}'
    ),
    Signal(
        "tcp_close_wait", "Connections in CLOSE_WAIT", Unit.COUNT, "tcp", _P + 'tcp_connections{state="close_wait"}'
    ),
    Signal("tcp_time_wait", "Connections in TIME_WAIT", Unit.COUNT, "tcp", _P + 'tcp_connections{state="time_wait"}'),
    Signal("backend_up", "Backend up", Unit.COUNT, "probe", _P + "backend_up"),
    Signal("probe_requests", "Probe requests", Unit.COUNT, "probe"),
    Signal("probe_errors", "Probe errors", Unit.COUNT, "probe"),
    Signal(
        "response_time_seconds", "Backend response time", Unit.SECONDS, "probe", _P + "backend_response_time_seconds"
    ),
    Signal("cache_hit_rate", "Cache hit rate", Unit.RATIO, "cache", _P + "backend_cache_hit_ratio"),
    Signal("cache_entries", "Cache entries", Unit.COUNT, "cache", _P + "backend_cache_entries"),
    Signal("cache_lookups", "Cache lookups", Unit.COUNT, "cache"),
    Signal("cache_removals", "Cache entries removed (invalidated, deleted, evicted)", Unit.COUNT, "cache"),
    Signal("cache_recent_hit_rate", "Cache hit rate (recent)", Unit.RATIO, "cache strategy"),
    Signal("cache_cleared", "Cache found emptied", Unit.COUNT, "cache strategy"),
    Signal("cache_junk_share", "Cache misses leaving a new entry (junk)", Unit.RATIO, "cache strategy"),
    Signal("wal_bytes", "Database WAL size", Unit.BYTES, "database", _P + "sqlite_wal_bytes"),
    Signal("database_bytes", "Database file size", Unit.BYTES, "database", _P + "sqlite_file_bytes"),
    Signal("freelist_ratio", "Database free pages", Unit.RATIO, "database", _P + "sqlite_freelist_ratio"),
    Signal(
        "database_probe_seconds", "Database probe query time", Unit.SECONDS, "database", _P + "sqlite_probe_seconds"
    ),
    Signal("hls_bytes", "HLS directory size", Unit.BYTES, "hls", _P + "hls_directory_bytes"),
    Signal("hls_stale_files", "Stale HLS files", Unit.COUNT, "hls", _P + "hls_stale_files"),
    Signal("sessions_active", "Active viewer sessions", Unit.COUNT, "database", _P + 'viewer_sessions{state="active"}'),
    Signal("sessions_stuck", "Stuck viewer sessions", Unit.COUNT, "database", _P + 'viewer_sessions{state="stuck"}'),
    Signal(
        "sessions_stale",
        "Viewer sessions past the backend's timeout",
        Unit.COUNT,
        "database",
        _P + 'viewer_sessions{state="stale"}',
    ),
    Signal("mediamtx_readers", "MediaMTX readers", Unit.COUNT, "mediamtx", _P + "mediamtx_readers"),
    Signal("own_rss_bytes", "Optimizer memory (RSS)", Unit.BYTES, "own", _P + "own_resident_memory_bytes"),
)


def table(sources: Iterable[type[Source[Any]]]) -> tuple[Signal, ...]:
    """The built-in rows, then those each of ``sources`` declares (its ``signals``), labelled with its name."""
    return BUILT_IN + tuple(
        dataclasses.replace(row, source=source.name) for source in sources for row in source.signals
    )


SIGNALS: tuple[Signal, ...] = table(SOURCES)

# a family of signals, one per table: the name is the prefix, then the table's name
PER_TABLE = Signal("table_oldest_days:", "Oldest row in", Unit.DAYS, "database")

BY_NAME: Mapping[str, Signal] = MappingProxyType({s.name: s for s in SIGNALS})


def signal(name: str) -> Signal | None:
    """The table's row for ``name`` (a per-table signal gets its family's, labelled with its table); None if none."""
    if name.startswith(PER_TABLE.name) and len(name) > len(PER_TABLE.name):
        table = name.removeprefix(PER_TABLE.name)
        return Signal(name, f"{PER_TABLE.label} {table}", PER_TABLE.unit, PER_TABLE.source)
    return BY_NAME.get(name)


def is_known_signal(name: str) -> bool:
    """Whether some source or strategy measures a signal of this name (a trigger on any other never arms)."""
    return signal(name) is not None


def signal_label(name: str) -> str:
    """A signal's readable name (``Database WAL size``); its identifier when the table has no row for it."""
    found = signal(name)
    return found.label if found is not None else name


def signal_unit(name: str) -> Unit:
    """A signal's unit; for a name the table does not hold, what the name implies (config.units.unit_of)."""
    found = signal(name)
    return found.unit if found is not None else unit_of(name)
