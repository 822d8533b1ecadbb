"""Writes that delete or rewrite the backend's SQLite data: batched retention pruning and VACUUM.

Both are disruptive and opt-in. Pruning deletes, in short write transactions of a few hundred rows, only
rows of the tables the backend never cleans (metrics/tables.py) that are older than the retention period in
the column's own time base (session columns hold the backend's local time in the zone of its ``system_settings``
row, the others UTC, some as ISO texts). It never
touches ``telegram_archive_uploads`` (the only index of archived footage) nor a live session. A busy
database stops the run where it is: every committed batch is whole, the interrupted one is rolled back.
VACUUM runs under a deadline (an interrupted VACUUM is rolled back by SQLite) after checking free space.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from metrics import backendtime as bt
from metrics.backendtime import TimeBase, Zone
from metrics.sqlite import is_busy, table_columns
from metrics.tables import TABLES, TableSpec
from strategies.actions.sqlite import reading, wal_bytes, writing
from strategies.base import StrategyError

PROTECTED_TABLES = frozenset({"telegram_archive_uploads"})
# how often (in SQLite VM steps) a long statement checks its deadline
_PROGRESS_STEPS = 1000
# a short breath between batches so the backend's writer gets the lock in between
BATCH_PAUSE_SECONDS = 0.02


# One descriptor for sampling, findings and pruning (metrics/tables.py): a rule is a table spec that may be pruned.
RetentionRule = TableSpec
RULES: tuple[TableSpec, ...] = tuple(spec for spec in TABLES if spec.pruned and spec.table not in PROTECTED_TABLES)
RULES_BY_TABLE = {rule.table: rule for rule in RULES}


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidates:
    """How many rows a table holds and how many are past its cutoff."""

    table: str
    rows: int
    prunable: int
    cutoff: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    """What one table's pruning run did, and why it stopped early (None when it finished)."""

    table: str
    deleted: int
    batches: int
    stopped: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FileFigures:
    """Pages and sizes of the database file."""

    page_size: int
    page_count: int
    freelist_count: int
    file_bytes: int
    wal_bytes: int

    @property
    def freelist_ratio(self) -> float:
        """Share of pages on the freelist."""
        return self.freelist_count / self.page_count if self.page_count else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class VacuumResult:
    """The file before and after VACUUM, and whether the WAL could be truncated afterwards."""

    before: FileFigures
    after: FileFigures
    wal_truncated: bool


def cutoff_text(time_base: TimeBase, now_utc: datetime, days: float, zone: Zone) -> str:
    """The ``YYYY-MM-DD HH:MM:SS`` text that times older than ``days`` fall below, in the column's own base."""
    return bt.cutoff_text(time_base, zone, now_utc, days)


def backend_zone(path: Path, busy_timeout_ms: int, fallback_offset_hours: float) -> Zone:
    """The backend's timezone as its ``system_settings`` row says now (read-only)."""
    with _connection(path, busy_timeout_ms, write=False) as conn:
        try:
            return bt.resolve_zone(bt.read_zone_setting(conn), fallback_offset_hours)
        except sqlite3.OperationalError as exc:
            raise StrategyError(f"cannot read the backend's timezone: {exc}") from None


def parse_window(window: str) -> tuple[int, int]:
    """Minutes after midnight of the start and end of an ``HH:MM-HH:MM`` window."""
    try:
        start, end = window.split("-")
        start_h, start_m = (int(x) for x in start.split(":"))
        end_h, end_m = (int(x) for x in end.split(":"))
    except ValueError:
        raise ValueError(f"expected HH:MM-HH:MM, got {window!r}") from None
    if not (0 <= start_h < 24 and 0 <= end_h < 24 and 0 <= start_m < 60 and 0 <= end_m < 60):
        raise ValueError(f"expected HH:MM-HH:MM, got {window!r}")
    return start_h * 60 + start_m, end_h * 60 + end_m


def in_window(window: str, local: datetime) -> bool:
    """Whether a local time falls in the window; a window may wrap past midnight (``23:00-02:00``)."""
    start, end = parse_window(window)
    minute = local.hour * 60 + local.minute
    if start == end:
        return False
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


@contextmanager
def _connection(path: Path, busy_timeout_ms: int, *, write: bool) -> Iterator[sqlite3.Connection]:
    with writing(path, busy_timeout_ms) if write else reading(path, busy_timeout_ms) as conn:
        yield conn


@contextmanager
def _deadline(conn: sqlite3.Connection, deadline: float, clock: Callable[[], float]) -> Iterator[None]:
    """Abort the running statement (SQLite rolls it back) once the monotonic deadline has passed."""
    conn.set_progress_handler(lambda: 1 if clock() > deadline else 0, _PROGRESS_STEPS)
    try:
        yield
    finally:
        conn.set_progress_handler(None, 0)


def _condition(rule: RetentionRule) -> str:
    # typeof() keeps numbers (e.g. epoch seconds) out: in SQLite every number sorts below any text. datetime()
    # reads both forms the backend writes (``2026-12-04 05:00:00`` and ISO ``2026-12-04T05:00:00.000Z``, which
    # it turns into UTC) and is NULL for anything else, which is then never deleted.
    where = f'typeof("{rule.column}") = \'text\' AND datetime("{rule.column}") < ?'
    return f"{where} AND ({rule.only_where})" if rule.only_where else where


def _usable(conn: sqlite3.Connection, rule: RetentionRule) -> bool:
    if rule.table in PROTECTED_TABLES:
        return False
    columns = table_columns(conn, rule.table)
    return rule.column in columns and all(c in columns for c in rule.needs_columns)


def count_candidates(  # noqa: PLR0913 -- a prune's table, column, time base, cutoff and limits
    path: Path,
    rules: Sequence[RetentionRule],
    cutoffs: dict[str, str],
    busy_timeout_ms: int,
    *,
    max_seconds: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> list[Candidates]:
    """Count, read-only, the rows each rule would prune; tables or columns that are missing are skipped."""
    out: list[Candidates] = []
    with _connection(path, busy_timeout_ms, write=False) as conn:
        try:
            with _deadline(conn, clock() + max_seconds, clock):
                for rule in rules:
                    if not _usable(conn, rule):
                        continue
                    cutoff = cutoffs[rule.table]
                    total = int(conn.execute(f'SELECT count(*) FROM "{rule.table}"').fetchone()[0])
                    prunable = int(
                        conn.execute(
                            f'SELECT count(*) FROM "{rule.table}" WHERE {_condition(rule)}', (cutoff,)
                        ).fetchone()[0]
                    )
                    out.append(Candidates(table=rule.table, rows=total, prunable=prunable, cutoff=cutoff))
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise StrategyError(f"database busy: could not count prunable rows ({exc})") from None
            if "interrupted" in str(exc):
                raise StrategyError(f"counting prunable rows took longer than {max_seconds:g} s") from None
            raise StrategyError(f"counting prunable rows failed: {exc}") from None
    return out


def prune_table(  # noqa: PLR0913 -- a prune's table, column, time base, cutoff and limits
    path: Path,
    rule: RetentionRule,
    cutoff: str,
    *,
    batch_rows: int,
    max_rows: int,
    deadline: float,
    busy_timeout_ms: int,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], None] = time.sleep,
) -> PruneResult:
    """Delete the rule's rows older than ``cutoff`` in batches, each its own short write transaction.

    Stops at ``max_rows``, at the monotonic ``deadline``, or when the database is busy; a busy first
    batch raises StrategyError (nothing was deleted), a later one ends the run with what was committed.
    """
    if rule.table in PROTECTED_TABLES:
        raise StrategyError(f"{rule.table} is never pruned")
    deleted = batches = 0
    stopped: str | None = None
    statement = (
        f'DELETE FROM "{rule.table}" WHERE rowid IN '
        f'(SELECT rowid FROM "{rule.table}" WHERE {_condition(rule)} ORDER BY rowid LIMIT ?)'
    )
    with _connection(path, busy_timeout_ms, write=True) as conn:
        if not _usable(conn, rule):
            return PruneResult(table=rule.table, deleted=0, batches=0, stopped="table or column missing")
        while deleted < max_rows:
            if clock() >= deadline:
                stopped = "time budget spent"
                break
            limit = min(batch_rows, max_rows - deleted)
            try:
                conn.execute("BEGIN IMMEDIATE")
                with _deadline(conn, deadline, clock):
                    count = conn.execute(statement, (cutoff, limit)).rowcount
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if is_busy(exc):
                    if deleted == 0:
                        raise StrategyError(
                            f"database busy: the backend's writer held the lock for more than "
                            f"{busy_timeout_ms} ms; nothing was deleted from {rule.table}"
                        ) from None
                    stopped = "database busy"
                    break
                if "interrupted" in str(exc):
                    stopped = "time budget spent"
                    break
                raise StrategyError(f"pruning {rule.table} failed after {deleted} rows: {exc}") from None
            batches += 1
            deleted += count
            if count < limit:
                break
            pause(BATCH_PAUSE_SECONDS)
    if stopped is None and deleted >= max_rows:
        stopped = "row budget spent"
    return PruneResult(table=rule.table, deleted=deleted, batches=batches, stopped=stopped)


def file_figures(path: Path, busy_timeout_ms: int) -> FileFigures:
    """Pages, freelist and sizes, read through a read-only connection."""
    with _connection(path, busy_timeout_ms, write=False) as conn:
        try:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
            freelist = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        except sqlite3.OperationalError as exc:
            raise StrategyError(f"cannot read the database's pages: {exc}") from None
    return FileFigures(
        page_size=page_size,
        page_count=page_count,
        freelist_count=freelist,
        file_bytes=os.stat(path).st_size,
        wal_bytes=wal_bytes(path),
    )


def vacuum_space_needed(figures: FileFigures) -> int:
    """Bytes VACUUM may need: a copy of the used pages in a temporary file and another in the WAL."""
    # the temporary directory is usually on the same filesystem (or in RAM), so count both copies here
    used = (figures.page_count - figures.freelist_count) * figures.page_size
    return 2 * used + figures.wal_bytes


def vacuum(
    path: Path,
    *,
    busy_timeout_ms: int,
    max_seconds: float,
    clock: Callable[[], float] = time.monotonic,
    free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
) -> VacuumResult:
    """VACUUM under a deadline, then truncate the WAL it filled; raise StrategyError and change nothing on failure."""
    before = file_figures(path, busy_timeout_ms)
    needed = vacuum_space_needed(before)
    free = free_bytes(path.parent)
    if free < needed:
        raise StrategyError(f"not enough free space for VACUUM: needs about {needed} bytes, {free} free")
    with _connection(path, busy_timeout_ms, write=True) as conn:
        try:
            with _deadline(conn, clock() + max_seconds, clock):
                conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise StrategyError(
                    f"database busy: VACUUM could not get the write lock within {busy_timeout_ms} ms"
                ) from None
            if "interrupted" in str(exc):
                raise StrategyError(
                    f"VACUUM did not finish within {max_seconds:g} s and was rolled back; the file is unchanged"
                ) from None
            raise StrategyError(f"VACUUM failed: {exc}") from None
        try:
            busy = int(conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
        except sqlite3.OperationalError:
            busy = 1
    return VacuumResult(before=before, after=file_figures(path, busy_timeout_ms), wal_truncated=busy == 0)
