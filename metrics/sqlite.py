"""Read-only statistics of the backend's SQLite file, and its viewer sessions.

Every read goes through ``read_database``: it checks what the file is first (a missing file, a directory,
an unreadable or non-SQLite file is a ``DatabaseUnavailable`` that says so), holds no transaction longer
than the few statements it needs, and never creates a file next to the database. SQLite's ``mode=ro``
would create ``-wal`` and ``-shm`` when the backend has the database closed, owned by the daemon's user,
and the backend could then no longer write ("attempt to write a readonly database"). So when the
database is in WAL mode and those files are absent, it is read as an immutable snapshot of the main file
(which then holds every committed page), and the read is thrown away if the file changed meanwhile.
(Should the backend close it in the instant between that check and the open, the files SQLite then creates get
the data directory's group through its setgid bit, as docs/SAFETY.md sets it up; the actions also hand them
back, strategies/actions/sqlite.py.)
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from metrics import backendtime as bt
from metrics.errors import SamplingError
from metrics.snapshot import DatabaseSample, SessionSample, TableStat
from metrics.tables import TableSpec

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
SIDECARS = ("-wal", "-shm")
# rows read (by rowid) to find a table's oldest value when no index starts with its time column
OLDEST_PROBE_ROWS = 1000


class DatabaseUnavailable(SamplingError):
    """The backend database cannot be used as it is (missing, a directory, unreadable, not SQLite, closed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseFile:
    """What the database file is right now: its stat, whether it is in WAL mode, whether the backend has it open."""

    path: Path
    stat: os.stat_result
    wal_mode: bool
    sidecars_present: bool

    @property
    def closed_by_backend(self) -> bool:
        """WAL mode without ``-wal``/``-shm``: nobody has it open, and opening it normally would create them."""
        return self.wal_mode and not self.sidecars_present


def inspect_database(path: Path) -> DatabaseFile:
    """Check that ``path`` is a readable SQLite file (reading only its header); raise DatabaseUnavailable why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DatabaseUnavailable(f"database {path} does not exist") from None
    except OSError as exc:
        raise DatabaseUnavailable(f"database {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DatabaseUnavailable(f"database {path} is a directory, not a SQLite file")
    if not stat.S_ISREG(st.st_mode):
        raise DatabaseUnavailable(f"database {path} is not a regular file")
    try:
        # O_NONBLOCK: a file swapped for a FIFO between the stat and the open must not hang the read
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except PermissionError:
        raise DatabaseUnavailable(
            f"database {path} cannot be read by the daemon's user (permission denied): see docs/SAFETY.md"
        ) from None
    except OSError as exc:
        raise DatabaseUnavailable(f"database {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DatabaseUnavailable(f"database {path} is not a regular file")
        header = os.read(fd, HEADER_BYTES)
    except OSError as exc:
        raise DatabaseUnavailable(f"database {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if not header:
        raise DatabaseUnavailable(f"database {path} is empty (the backend has not created it yet)")
    if header[:16] != SQLITE_MAGIC:
        raise DatabaseUnavailable(f"database {path} is not a SQLite database (its header is wrong)")
    if len(header) < HEADER_BYTES:
        raise DatabaseUnavailable(f"database {path} is truncated ({len(header)} bytes)")
    # bytes 18 and 19 are the write and read format versions: 2 means WAL
    wal_mode = header[18] == 2 or header[19] == 2
    present = all(os.path.exists(f"{path}{suffix}") for suffix in SIDECARS)
    return DatabaseFile(path=path, stat=st, wal_mode=wal_mode, sidecars_present=present)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def _connect(path: Path, query: str, busy_timeout_ms: int, *, row_factory: bool, shared: bool) -> sqlite3.Connection:
    # quoted: a path holding "?", "#" or "%" would otherwise be read as URI syntax
    uri = f"file:{urllib.parse.quote(str(path))}?{query}"
    conn = sqlite3.connect(
        uri, uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=not shared
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    except sqlite3.Error:
        conn.close()
        raise
    if row_factory:
        conn.row_factory = sqlite3.Row
    return conn


def open_read_only(
    path: Path, busy_timeout_ms: int, *, immutable: bool = False, row_factory: bool = False, shared: bool = False
) -> sqlite3.Connection:
    """A read-only connection to the existing file; sqlite3.Error if there is none or it cannot be opened.

    ``immutable`` reads the main file as a snapshot: no lock, no ``-wal``/``-shm`` created, nothing in a WAL
    seen. ``shared`` lets other threads use the connection (the caller serialises them).
    """
    query = "mode=ro&immutable=1" if immutable else "mode=ro"
    return _connect(path, query, busy_timeout_ms, row_factory=row_factory, shared=shared)


def open_read_write(
    path: Path, busy_timeout_ms: int, *, row_factory: bool = False, shared: bool = False
) -> sqlite3.Connection:
    """A read-write connection to the existing file, never creating it; sqlite3.Error if there is none."""
    return _connect(path, "mode=rw", busy_timeout_ms, row_factory=row_factory, shared=shared)


@contextmanager
def read_database(path: Path, busy_timeout_ms: int, *, row_factory: bool = False) -> Iterator[sqlite3.Connection]:
    """A read-only connection that creates no file; raises DatabaseUnavailable for a file that is not usable.

    While the backend has the database open (``-wal`` and ``-shm`` exist) this is an ordinary ``mode=ro``
    connection. When the database is in WAL mode and closed, it reads the main file as an immutable
    snapshot and raises SamplingError at the end if the file changed during the read, so the caller's
    result is dropped rather than trusted.
    """
    info = inspect_database(path)
    snapshot = info.closed_by_backend
    try:
        conn = open_read_only(path, busy_timeout_ms, immutable=snapshot, row_factory=row_factory)
    except sqlite3.DatabaseError as exc:
        raise DatabaseUnavailable(f"cannot open database {path}: {exc}") from None
    try:
        yield conn
    finally:
        conn.close()
    if snapshot:
        try:
            after = os.stat(path)
        except OSError:
            after = None
        if after is None or not _same_file(info.stat, after):
            raise SamplingError(f"database {path} changed while it was read (the backend opened it); read again")


def is_not_a_database(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error says the file is damaged or not a database at all (not a transient lock)."""
    text = str(exc)
    return "not a database" in text or "malformed" in text or "file is encrypted" in text


def table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """The column names of ``table`` (empty when it does not exist)."""
    return {str(r[1]) for r in conn.execute(f'PRAGMA table_info("{table}")')}


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error means another connection holds the lock (the backend's writer, usually)."""
    return "locked" in str(exc) or "busy" in str(exc)


class DatabaseReader:
    """Samples file sizes, pages, freelist, probe latency, viewer sessions and (slowly) table ages of the backend DB.

    The backend's timezone is read from its ``system_settings`` row at every sample (one indexed lookup), so
    a change an admin makes at runtime applies to the next sample; ``timezone_offset_hours`` is used only
    when that row names a zone this host does not know.
    """

    name = "database"

    def __init__(  # noqa: PLR0913 -- keyword-only collaborators and settings of one object
        self,
        path: Path,
        *,
        busy_timeout_ms: int = 200,
        timezone_offset_hours: float = 7.0,
        stuck_session_seconds: float = 120.0,
        session_timeout_seconds: float = 15.0,
        table_interval_seconds: float = 300.0,
        tables: Iterable[TableSpec] = (),
    ) -> None:
        self._path = path
        self._busy_ms = busy_timeout_ms
        self.zone = bt.BackendZone(timezone_offset_hours)
        self._stuck = stuck_session_seconds
        self._timeout = session_timeout_seconds
        self._table_interval = table_interval_seconds
        self._tables = tuple(tables)
        self._table_stats: MappingProxyType[str, TableStat] = MappingProxyType({})
        self._tables_read_at: float | None = None
        self._tables_zone: str | None = None
        self.last_sessions: SessionSample | None = None

    @property
    def tables(self) -> tuple[TableSpec, ...]:
        """The dated tables whose statistics this reader samples."""
        return self._tables

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def read(self, now: float) -> DatabaseSample:
        """Take one sample (blocking; run in a worker thread)."""
        busy = False
        started = time.perf_counter()
        try:
            with read_database(self._path, self._busy_ms) as conn:
                file_bytes = os.stat(self._path).st_size
                try:
                    wal_bytes = os.stat(f"{self._path}-wal").st_size
                except FileNotFoundError:
                    wal_bytes = 0
                try:
                    started = time.perf_counter()
                    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
                    freelist = conn.execute("PRAGMA freelist_count").fetchone()[0]
                    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                    probe = time.perf_counter() - started
                    zone = self.zone.read(conn)
                    self.last_sessions = self._sessions(conn, zone)
                    # read again at once when the zone changed: local-time columns then date differently
                    if self._tables and (
                        self._tables_read_at is None
                        or now - self._tables_read_at >= self._table_interval
                        or zone.name != self._tables_zone
                    ):
                        self._table_stats = MappingProxyType(self._read_tables(conn, zone))
                        self._tables_read_at = now
                        self._tables_zone = zone.name
                except sqlite3.DatabaseError as exc:
                    if not is_busy(exc):
                        raise
                    busy = True
                    # the sessions were not read this time; an older count must not pass for a fresh one
                    self.last_sessions = None
                    probe = time.perf_counter() - started
                    page_size = page_count = freelist = 0
                    mode = "unknown"
        except sqlite3.DatabaseError as exc:
            self.last_sessions = None
            if is_not_a_database(exc):
                raise DatabaseUnavailable(f"database {self._path} is damaged or not a SQLite database: {exc}") from None
            raise SamplingError(f"database {self._path}: {exc}") from None
        except OSError as exc:
            self.last_sessions = None
            raise SamplingError(f"database {self._path}: {exc.strerror}") from None
        except SamplingError:
            self.last_sessions = None
            raise
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
            timezone=self.zone.current.name,
        )

    def _sessions(self, conn: sqlite3.Connection, zone: bt.Zone) -> SessionSample | None:
        """Active viewer sessions: how many are past the backend's timeout (stale) and past the stuck limit.

        The comparison is the backend's own (``datetime(last_heartbeat) < datetime(now, '-15 seconds')``, with
        ``now`` its local time in its configured zone), so the daemon counts what its sweep would end.
        """
        now_text = zone.local_text()
        try:
            row = conn.execute(
                "SELECT count(*), min(last_heartbeat),"
                " sum(datetime(last_heartbeat) < datetime(?, ?)), sum(datetime(last_heartbeat) < datetime(?, ?))"
                " FROM viewer_sessions WHERE is_active = 1",
                (now_text, f"-{self._timeout:g} seconds", now_text, f"-{self._stuck:g} seconds"),
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise
            return None
        oldest_age: float | None = None
        oldest = bt.parse(row[1], bt.TimeBase.LOCAL, zone)
        if oldest is not None:
            oldest_age = (datetime.now(UTC) - oldest).total_seconds()
        return SessionSample(
            active=int(row[0]),
            stuck=int(row[3] or 0),
            oldest_heartbeat_age_seconds=oldest_age,
            stale=int(row[2] or 0),
            timezone=zone.name,
        )

    def _read_tables(self, conn: sqlite3.Connection, zone: bt.Zone) -> dict[str, TableStat]:
        """Row counts and oldest times of the dated tables, each read in its column's own time base, in reads that
        do not grow with the tables.

        Rows are the rowid span (two index look-ups, not a scan): exact while rows are only deleted oldest
        first, as retention does, an upper bound otherwise. The oldest value is ``min(column)`` through an
        index that starts with the column, else the least among the first ``OLDEST_PROBE_ROWS`` rows by rowid
        (these tables are appended to in time order).
        """
        existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        out: dict[str, TableStat] = {}
        for spec in self._tables:
            table, column = spec.table, spec.column
            if table not in existing:
                continue
            try:
                # one aggregate per statement: SQLite looks a lone min() or max() up, but scans for both at once
                low = conn.execute(f'SELECT min(rowid) FROM "{table}"').fetchone()[0]
                high = conn.execute(f'SELECT max(rowid) FROM "{table}"').fetchone()[0]
                rows = 0 if low is None else int(high) - int(low) + 1
            except sqlite3.OperationalError as exc:
                if is_busy(exc):
                    raise
                rows = int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])  # a WITHOUT ROWID table
            oldest = None
            # SQLite reads a double-quoted unknown column as a string literal, so min() would return the
            # column's name: with another schema, report no age
            if rows and column in table_columns(conn, table):
                oldest = _oldest(conn, table, column)
            text = str(oldest) if oldest is not None else None
            moment = bt.parse(text, spec.time_base, zone)
            out[table] = TableStat(
                rows=rows, oldest=text, oldest_epoch=moment.timestamp() if moment is not None else None
            )
        return out


def _oldest(conn: sqlite3.Connection, table: str, column: str) -> object:
    """The least value of ``column``: by an index that starts with it, else among the first rows by rowid."""
    if _leads_an_index(conn, table, column):
        return conn.execute(f'SELECT min("{column}") FROM "{table}"').fetchone()[0]
    try:
        return conn.execute(
            f'SELECT min("{column}") FROM (SELECT "{column}" FROM "{table}" ORDER BY rowid LIMIT ?)',
            (OLDEST_PROBE_ROWS,),
        ).fetchone()[0]
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise
        return None  # a WITHOUT ROWID table: no cheap oldest value


def _leads_an_index(conn: sqlite3.Connection, table: str, column: str) -> bool:
    """Whether an index of ``table`` starts with ``column`` (so ``min(column)`` is one look-up)."""
    row = conn.execute(
        "SELECT 1 FROM pragma_index_list(?) AS l, pragma_index_info(l.name) AS i WHERE i.seqno = 0 AND i.name = ?",
        (table, column),
    ).fetchone()
    return row is not None
