"""Read-only statistics of the backend's SQLite file, and its viewer sessions.

Every read opens the file with ``mode=ro`` and a short busy timeout, holds no transaction longer than
the few statements it needs, and closes it again: the daemon must never stand in the backend's way.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from metrics.errors import SamplingError
from metrics.snapshot import DatabaseSample, SessionSample, TableStat

LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"


def connect_readonly(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open the database read-only (no file is created when it is missing)."""
    if not path.is_file():
        raise SamplingError(f"database {path} does not exist")
    try:
        # quoted: a path holding "?", "#" or "%" would otherwise be read as URI syntax
        uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise SamplingError(f"cannot open database {path}: {exc}") from None
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


def local_now(offset_hours: float, now: datetime | None = None) -> datetime:
    """The backend's local wall time (naive), as its session timestamps are written."""
    base = now if now is not None else datetime.now(UTC)
    return (base.astimezone(UTC) + timedelta(hours=offset_hours)).replace(tzinfo=None)


def local_text(moment: datetime) -> str:
    """Format a naive local time the way the backend stores it."""
    return moment.strftime(LOCAL_FORMAT)


def table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """The column names of ``table`` (empty when it does not exist)."""
    return {str(r[1]) for r in conn.execute(f'PRAGMA table_info("{table}")')}


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error means another connection holds the lock (the backend's writer, usually)."""
    return "locked" in str(exc) or "busy" in str(exc)


class DatabaseReader:
    """Samples file sizes, pages, freelist, probe latency and (slowly) table ages of the backend DB."""

    name = "database"

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int = 200,
        timezone_offset_hours: float = 7.0,
        stuck_session_seconds: float = 120.0,
        table_interval_seconds: float = 300.0,
        tables: Iterable[tuple[str, str]] = (),
    ) -> None:
        self._path = path
        self._busy_ms = busy_timeout_ms
        self._offset = timezone_offset_hours
        self._stuck = stuck_session_seconds
        self._table_interval = table_interval_seconds
        self._tables = tuple(tables)
        self._table_stats: MappingProxyType[str, TableStat] = MappingProxyType({})
        self._tables_read_at: float | None = None
        self.last_sessions: SessionSample | None = None

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def read(self, now: float) -> DatabaseSample:
        """Take one sample (blocking; run in a worker thread)."""
        try:
            file_bytes = os.stat(self._path).st_size
        except OSError as exc:
            raise SamplingError(f"database {self._path}: {exc.strerror}") from None
        try:
            wal_bytes = os.stat(f"{self._path}-wal").st_size
        except FileNotFoundError:
            wal_bytes = 0
        except OSError as exc:
            raise SamplingError(f"WAL of {self._path}: {exc.strerror}") from None
        conn = connect_readonly(self._path, self._busy_ms)
        busy = False
        try:
            started = time.perf_counter()
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            freelist = conn.execute("PRAGMA freelist_count").fetchone()[0]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            probe = time.perf_counter() - started
            self.last_sessions = self._sessions(conn)
            if self._tables and (self._tables_read_at is None or now - self._tables_read_at >= self._table_interval):
                self._table_stats = MappingProxyType(self._read_tables(conn))
                self._tables_read_at = now
        except sqlite3.DatabaseError as exc:
            if is_busy(exc):
                busy = True
                # the sessions were not read this time; an older count must not pass for a fresh one
                self.last_sessions = None
                probe = time.perf_counter() - started
                page_size = page_count = freelist = 0
                mode = "unknown"
            else:
                raise SamplingError(f"database {self._path}: {exc}") from None
        finally:
            conn.close()
        return DatabaseSample(
            file_bytes=file_bytes,
            wal_bytes=wal_bytes,
            page_size=int(page_size),
            page_count=int(page_count),
            freelist_count=int(freelist),
            journal_mode=str(mode),
            probe_seconds=probe,
            busy=busy,
            tables=self._table_stats,
        )

    def _sessions(self, conn: sqlite3.Connection) -> SessionSample | None:
        """Active viewer sessions and how many have a heartbeat older than the stuck limit."""
        try:
            row = conn.execute(
                "SELECT count(*), min(last_heartbeat) FROM viewer_sessions WHERE is_active = 1"
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise
            return None
        now_local = local_now(self._offset)
        cutoff = local_text(now_local - timedelta(seconds=self._stuck))
        stuck = conn.execute(
            "SELECT count(*) FROM viewer_sessions WHERE is_active = 1 AND last_heartbeat < ?", (cutoff,)
        ).fetchone()[0]
        oldest_age: float | None = None
        if row[1]:
            try:
                oldest_age = (now_local - datetime.strptime(str(row[1])[:19], LOCAL_FORMAT)).total_seconds()
            except ValueError:
                oldest_age = None
        return SessionSample(active=int(row[0]), stuck=int(stuck), oldest_heartbeat_age_seconds=oldest_age)

    def _read_tables(self, conn: sqlite3.Connection) -> dict[str, TableStat]:
        """Row counts and oldest timestamps of the tables the backend never cleans."""
        existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        out: dict[str, TableStat] = {}
        for table, column in self._tables:
            if table not in existing:
                continue
            columns = table_columns(conn, table)
            if column in columns:
                row = conn.execute(f'SELECT count(*), min("{column}") FROM "{table}"').fetchone()
            else:
                # SQLite reads a double-quoted unknown column as a string literal, so min() would
                # return the column's name: with another schema, count the rows and report no age
                row = (conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0], None)
            out[table] = TableStat(rows=int(row[0]), oldest=str(row[1]) if row[1] is not None else None)
        return out
