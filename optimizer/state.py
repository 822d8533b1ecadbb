"""The daemon's state: an embedded SQLite file (WAL mode) with history, journal, strategy state, baselines.

All methods block; callers run them in a worker thread. A corrupt file is moved aside and a fresh one
started. When the directory is read-only or full, writes fail softly: the store keeps going in memory,
``healthy`` turns False and ``last_error`` says why, so the daemon keeps running and reports it.

The file is watched (``verify()``, and before every write): deleted (its link count is 0), moved away, or
replaced by another file (another inode at the path), it is recreated at its path from the open connection,
which still holds every row, so nothing written before or after is lost. Until that has worked (say the
directory turned read-only) the store is unhealthy with the reason, and writes go on into the open file.
A file found in its place is kept aside as ``state.db.replaced-<time>``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from metrics.sqlite import open_read_only

SCHEMA_VERSION = 1
SIDECARS = ("-wal", "-shm")
# Writes to the decision history remembered with the lowest row id each may have changed (see history_changed_from).
HISTORY_CHANGES_KEPT = 1024
# What history_changed_from() answers when the history has not changed at all since a version.
UNCHANGED = 2**63
# A write's effect on the history: the row it inserted (its id is known after it ran) or every row (a delete).
NEW_ROW = -1
ANY_ROW = 0
# The newest history rows kept in memory for the summary (GET /performance-metrics shows ten).
RECENT_KEPT = 10
# The outcomes decision_stats() counts: an apply and what became of it.
COUNTED_OUTCOMES = ("applied", "failed", "timeout", "error")
HistoryStats = tuple[int, int, float, float | None]
log = structlog.get_logger("state")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    at REAL NOT NULL,
    strategy TEXT NOT NULL,
    trigger TEXT NOT NULL,
    mode TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    signals TEXT NOT NULL,
    thresholds TEXT NOT NULL,
    changes TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    duration_ms REAL NOT NULL,
    expected TEXT,
    verdict TEXT,
    verdict_detail TEXT
);
CREATE INDEX IF NOT EXISTS decisions_strategy ON decisions (strategy, id);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id INTEGER,
    strategy TEXT NOT NULL,
    plan TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    at REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_status ON journal (status);
CREATE TABLE IF NOT EXISTS strategy_state (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS baselines (
    signal TEXT NOT NULL,
    hour INTEGER NOT NULL,
    value REAL NOT NULL,
    samples INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (signal, hour)
);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionRecord:
    """One row of the decision history."""

    id: int
    run_id: str
    at: float
    strategy: str
    trigger: str
    mode: str
    action: str
    reason: str
    signals: Mapping[str, Any]
    thresholds: Mapping[str, Any]
    changes: list[dict[str, Any]]
    outcome: str
    error: str | None
    duration_ms: float
    expected: Mapping[str, Any] | None
    verdict: str | None
    verdict_detail: Mapping[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the API."""
        return {
            "id": self.id,
            "runId": self.run_id,
            "timestamp": int(self.at * 1000),
            "strategy": self.strategy,
            "trigger": self.trigger,
            "mode": self.mode,
            "action": self.action,
            "reason": self.reason,
            "signals": dict(self.signals),
            "thresholds": dict(self.thresholds),
            "changes": self.changes,
            "outcome": self.outcome,
            "error": self.error,
            "durationMs": round(self.duration_ms, 3),
            "expected": dict(self.expected) if self.expected else None,
            "verdict": self.verdict,
            "verdictDetail": dict(self.verdict_detail) if self.verdict_detail else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    """A journal record: the plan about to be applied, and its status."""

    id: int
    decision_id: int | None
    strategy: str
    plan: Mapping[str, Any]
    status: str
    result: Mapping[str, Any] | None
    at: float


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


class StateStore:
    """The state database; thread-safe (one connection behind a lock)."""

    def __init__(
        self,
        directory: Path,
        *,
        retention_days: int = 30,
        max_history_rows: int = 20000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._dir = directory
        self._path = directory / "state.db"
        self._retention = retention_days * 86400.0
        self._max_rows = max_history_rows
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._inserts = 0
        self.version = 0
        """Bumped by every successful write: readers cache what they derived from the history by it."""
        # (version, lowest decision id the write at that version may have changed), oldest first
        self._history_changes: deque[tuple[int, int]] = deque(maxlen=HISTORY_CHANGES_KEPT)
        self._changes_lock = threading.Lock()
        self._changes_forgotten = 0  # the version of the newest change dropped from the log
        # decision_stats() and the newest rows (newest first) as they are now, when known (see history_summary)
        self._stats: HistoryStats | None = None
        self._recent: tuple[tuple[Any, ...], ...] | None = None
        self.summary_version = 0
        """Bumped whenever what history_summary() returns changes."""
        self.healthy = True
        self.last_error: str | None = None
        self.moved_aside: Path | None = None
        self._memory_fallback = False
        # a descriptor on the open file and the inodes of it and its -wal/-shm: to notice it deleted or replaced
        self._watch_fd: int | None = None
        self._inodes: dict[str, tuple[int, int]] = {}
        self.recreated = 0

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def open(self) -> None:
        """Open (creating or recovering) the database; never raises for a bad file or directory."""
        with self._lock:
            self._history_changed(ANY_ROW)
            try:
                self._dir.mkdir(parents=True, exist_ok=True)
                self._conn = self._open_checked()
                self._watch()
                return
            except OSError as exc:
                self._fallback(f"cannot use {self._dir}: {exc.strerror or exc}")
                return
            except sqlite3.DatabaseError as exc:
                problem = str(exc)
            if any(word in problem for word in ("not a database", "malformed", "corrupt")):
                # Outside the except clauses above, so that a failure to move the file aside (a read-only
                # directory) still ends in the in-memory fallback instead of escaping from open().
                try:
                    self.moved_aside = self._move_aside()
                    self._conn = self._open_checked()
                    self._watch()
                    return
                except (sqlite3.Error, OSError) as exc:
                    problem = f"{problem}; starting afresh failed: {exc}"
            if not os.access(self._dir, os.W_OK):
                # SQLite only says "unable to open database file"; the operator needs to know why
                problem = f"{problem} ({self._dir} is not writable)"
            self._fallback(f"cannot open {self._path}: {problem}")

    def _fallback(self, message: str) -> None:
        """Keep running on an in-memory database and say so."""
        self._history_changed(ANY_ROW)
        self.healthy = False
        self.last_error = message
        self._memory_fallback = True
        self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        if self._copy_readable_file(self._conn):
            # Open breakers, cooldowns and budgets must not be forgotten just because the directory turned
            # read-only: a strategy stopped for regressing would otherwise act again after a restart.
            self.last_error = f"{message}; running in memory from a copy of the last saved state"
        self._conn.executescript(_SCHEMA)

    def _copy_readable_file(self, target: sqlite3.Connection, source_path: Path | None = None) -> bool:
        """Copy a readable, intact state file into ``target``; False when there is none."""
        path = self._path if source_path is None else source_path
        try:
            if not path.is_file():
                return False
            source = open_read_only(path.resolve(), 5000, immutable=True, shared=True)
        except (OSError, sqlite3.Error):
            return False
        try:
            check = source.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                return False
            source.backup(target)
        except sqlite3.Error:
            return False
        finally:
            source.close()
        return True

    def _open_checked(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=5)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {result}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._wall()))
        target = self._path.with_name(f"state.db.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self._path.with_name(f"state.db.corrupt-{stamp}.{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self._path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{target}{suffix}"))
        return target

    def close(self) -> None:
        """Checkpoint and close."""
        with self._lock:
            if self._conn is not None:
                try:
                    if not self._memory_fallback:
                        self._ensure_file()
                        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
                self._conn.close()
                self._conn = None
            self._unwatch()

    # watching the file ---------------------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Remember which file is open (a descriptor on it, and its inode and its -wal/-shm's)."""
        self._unwatch()
        self._watch_fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        self._inodes = {}
        for suffix in ("", *SIDECARS):
            try:
                st = os.stat(f"{self._path}{suffix}")
            except FileNotFoundError:
                continue
            self._inodes[suffix] = (st.st_dev, st.st_ino)

    def _unwatch(self) -> None:
        if self._watch_fd is not None:
            os.close(self._watch_fd)
            self._watch_fd = None

    def _file_problem(self) -> str | None:
        """What happened to the open file, if anything: deleted, moved away, or replaced by another file."""
        if self._watch_fd is None or self._memory_fallback:
            return None
        held = os.fstat(self._watch_fd)
        if held.st_nlink == 0:
            return "was deleted"
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return "was moved away"
        if (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino):
            return "was replaced by another file"
        return None

    def verify(self) -> bool:
        """Check that the open file is still the one at its path, recreating it when not; True when it is."""
        with self._lock:
            return self._ensure_file()

    def _ensure_file(self) -> bool:
        """(Lock held.) Recreate the file at its path if it was deleted, moved or replaced; True when in place."""
        problem = self._file_problem()
        if problem is None:
            return True
        message = f"state database {self._path} {problem}"
        if self.healthy or self.last_error is None or not self.last_error.startswith(message):
            log.warning("state_database_lost", path=str(self._path), problem=problem)
        try:
            self._recreate(problem)
        except (OSError, sqlite3.Error) as exc:
            self.healthy = False
            if not self._memory_fallback:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self.last_error = f"{message}; cannot recreate it yet ({why}): the open file keeps every row meanwhile"
            return False
        self.recreated += 1
        self.healthy = True
        self.last_error = None
        log.warning("state_database_recreated", path=str(self._path), problem=problem)
        return True

    def _recreate(self, problem: str) -> None:
        """Copy the open database to a new file at its path and switch to it; the old one stays usable on failure."""
        assert self._conn is not None
        self._history_changed(ANY_ROW)
        # everything into the main (unlinked) file, so the copy is whole and the old -wal is empty
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._wall()))
        temp = self._dir / f".state.db.recreate-{os.getpid()}"
        for suffix in ("", "-journal", *SIDECARS):
            Path(f"{temp}{suffix}").unlink(missing_ok=True)
        copy = sqlite3.connect(temp, isolation_level=None)
        try:
            self._conn.backup(copy)
        finally:
            copy.close()
        if problem == "was replaced by another file" or self._path.exists():
            self._set_aside(stamp)
        self._conn.close()
        self._conn = None
        self._unwatch()
        try:
            os.link(temp, self._path)
            self._conn = self._open_checked()
            self._watch()
        except (OSError, sqlite3.Error):
            # the old connection is closed: keep going in memory from the copy rather than lose it
            self._fallback(f"state database {self._path} {problem} and could not be recreated")
            if self._conn is not None and not self._path.is_file():
                self._copy_readable_file(self._conn, temp)
            raise
        finally:
            temp.unlink(missing_ok=True)

    def _set_aside(self, stamp: str) -> None:
        """Keep a file (and its own -wal/-shm) found at the path as ``state.db.replaced-<stamp>``."""
        target = self._path.with_name(f"state.db.replaced-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self._path.with_name(f"state.db.replaced-{stamp}.{n}")
        for suffix in ("", *SIDECARS):
            name = Path(f"{self._path}{suffix}")
            try:
                st = os.stat(name)
            except FileNotFoundError:
                continue
            if suffix and self._inodes.get(suffix) == (st.st_dev, st.st_ino):
                continue  # ours: SQLite removes it when the old connection closes
            os.replace(name, Path(f"{target}{suffix}"))
        log.warning("state_database_replacement_kept", kept_as=str(target))

    def _write(
        self, sql: str, args: tuple[Any, ...] = (), *, history: int | None = None, row: tuple[Any, ...] = ()
    ) -> int | None:
        """Run one write; on failure mark the store unhealthy and return None.

        ``history``: for a write to the decision history, the lowest row id it may change (``NEW_ROW``: the row
        it inserts; ``ANY_ROW``: any), remembered for ``history_changed_from`` when it changed a row. ``row``: the
        inserted row's columns after its id, as a read gives them back.
        """
        with self._lock:
            if self._conn is None:
                return None
            recreated = self._ensure_file()
            try:
                cur = self._conn.execute(sql, args)
            except sqlite3.Error as exc:
                self.healthy = False
                self.last_error = f"state write failed: {exc}"
                return None
            if history is not None and cur.rowcount != 0:
                inserted = (cur.lastrowid, *row) if history == NEW_ROW and row and cur.lastrowid else None
                self._history_changed((cur.lastrowid or ANY_ROW) if history == NEW_ROW else history, inserted)
            else:
                self.version += 1
            if not self._memory_fallback and recreated:
                self.healthy = True
                self.last_error = None
            return cur.lastrowid

    def _history_changed(self, lowest: int, inserted: tuple[Any, ...] | None = None) -> None:
        """(Store lock held.) A new version at which rows of the history from id ``lowest`` on may have changed;
        ``inserted``: the whole row, when the change was that row's insertion."""
        with self._changes_lock:
            self.version += 1
            changes = self._history_changes
            if len(changes) == changes.maxlen:
                self._changes_forgotten = changes[0][0]
            changes.append((self.version, lowest))
            # the summary follows a new row; anything else (a verdict, a delete, a new file) makes it unknown
            self.summary_version += 1
            if inserted is None or self._recent is None:
                self._stats = self._recent = None
                return
            self._recent = (inserted, *self._recent[: RECENT_KEPT - 1])
            if inserted[self._OUTCOME] in COUNTED_OUTCOMES:
                self._stats = None

    def history_summary(self) -> tuple[int, HistoryStats, tuple[tuple[Any, ...], ...]] | None:
        """(``summary_version``, ``decision_stats()``, the newest rows as ``decision_rows`` gives them, newest first)
        as they are now, without reading the database; None when not known (then read them and offer them back
        with ``offer_history_summary``).

        New rows keep it known: a round's rows cost no read. A row changed later (an apply's outcome, a verdict),
        a new apply (the counted figures) and a delete make it unknown until the next read.
        """
        with self._changes_lock:
            if self._stats is None or self._recent is None:
                return None
            return self.summary_version, self._stats, self._recent

    def offer_history_summary(
        self, version: int, stats: HistoryStats, recent: list[tuple[Any, ...]] | tuple[tuple[Any, ...], ...]
    ) -> None:
        """Keep a summary read at ``version`` (``decision_stats()`` and ``recent_rows(RECENT_KEPT)``) unless the
        history was written since."""
        with self._changes_lock:
            changes = self._history_changes
            if version < self._changes_forgotten or (changes and changes[-1][0] > version):
                return  # the history was written since
            if self._stats == stats and self._recent == tuple(recent):
                return
            self._stats, self._recent = stats, tuple(recent[:RECENT_KEPT])
            self.summary_version += 1

    def history_changed_from(self, version: int) -> int:
        """The lowest decision row id that a write since ``version`` may have changed; ``UNCHANGED`` when no
        write since then touched the history (other tables' writes do not count), 0 when that is not known.

        A page of rows all below that id is the same now as it was at ``version``.
        """
        with self._changes_lock:
            if version >= self.version:
                return UNCHANGED
            if version < self._changes_forgotten:
                return ANY_ROW  # some of the writes since then are no longer remembered
            lowest = UNCHANGED
            for at, low in reversed(self._history_changes):
                if at <= version:
                    break
                lowest = min(lowest, low)
            return lowest

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._conn is None:
                return []
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                self.last_error = f"state read failed: {exc}"
                return []

    # decisions -------------------------------------------------------------------------------------------------

    def add_decision(  # noqa: PLR0913 -- a history row's columns
        self,
        *,
        run_id: str,
        strategy: str,
        trigger: str,
        mode: str,
        action: str,
        reason: str,
        signals: Mapping[str, Any],
        thresholds: Mapping[str, Any],
        changes: list[dict[str, Any]],
        outcome: str,
        error: str | None,
        duration_ms: float,
        expected: Mapping[str, Any] | None,
    ) -> int | None:
        """Insert a decision row; returns its id."""
        values = (
            run_id,
            self._wall(),
            strategy,
            trigger,
            mode,
            action,
            reason,
            _dumps(signals),
            _dumps(thresholds),
            _dumps(changes),
            outcome,
            error,
            float(duration_ms),
            _dumps(expected) if expected else None,
        )
        row_id = self._write(
            "INSERT INTO decisions (run_id, at, strategy, trigger, mode, action, reason, signals, thresholds, changes,"
            " outcome, error, duration_ms, expected) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
            history=NEW_ROW,
            row=(*values, None, None),  # no verdict yet
        )
        self._inserts += 1
        if self._inserts % 100 == 0:
            self.trim()
        return row_id

    def update_decision(  # noqa: PLR0913 -- a history row's columns
        self,
        decision_id: int,
        *,
        outcome: str | None = None,
        error: str | None = None,
        changes: list[dict[str, Any]] | None = None,
        duration_ms: float | None = None,
        verdict: str | None = None,
        verdict_detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Fill in what is known later: the outcome of an apply, or the verdict after the settle time."""
        sets: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("outcome", outcome),
            ("error", error),
            ("changes", _dumps(changes) if changes is not None else None),
            ("duration_ms", duration_ms),
            ("verdict", verdict),
            ("verdict_detail", _dumps(verdict_detail) if verdict_detail is not None else None),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        if sets:
            self._write(
                f"UPDATE decisions SET {', '.join(sets)} WHERE id = ?", (*args, decision_id), history=decision_id
            )

    _COLUMNS = (
        "id, run_id, at, strategy, trigger, mode, action, reason, signals, thresholds, changes, outcome, error,"
        " duration_ms, expected, verdict, verdict_detail"
    )
    # where a row's outcome is
    _OUTCOME = [column.strip() for column in _COLUMNS.split(",")].index("outcome")

    @staticmethod
    def _record(row: tuple[Any, ...]) -> DecisionRecord:
        return DecisionRecord(
            id=row[0],
            run_id=row[1],
            at=row[2],
            strategy=row[3],
            trigger=row[4],
            mode=row[5],
            action=row[6],
            reason=row[7],
            signals=_loads(row[8]) or {},
            thresholds=_loads(row[9]) or {},
            changes=_loads(row[10]) or [],
            outcome=row[11],
            error=row[12],
            duration_ms=row[13],
            expected=_loads(row[14]),
            verdict=row[15],
            verdict_detail=_loads(row[16]),
        )

    def decisions(self, *, after: int = 0, limit: int = 100, strategy: str | None = None) -> list[DecisionRecord]:
        """Decisions with id > after, oldest first."""
        return [self._record(r) for r in self.decision_rows(after=after, limit=limit, strategy=strategy)]

    def decision_rows(self, *, after: int = 0, limit: int = 100, strategy: str | None = None) -> list[tuple[Any, ...]]:
        """The rows ``decisions()`` makes its records of, as stored (columns in ``_COLUMNS`` order)."""
        if strategy is None:
            return self._read(f"SELECT {self._COLUMNS} FROM decisions WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        return self._read(
            f"SELECT {self._COLUMNS} FROM decisions WHERE id > ? AND strategy = ? ORDER BY id LIMIT ?",
            (after, strategy, limit),
        )

    def recent_decisions(self, limit: int = 10) -> list[DecisionRecord]:
        """The newest decisions, newest first."""
        return [self._record(r) for r in self.recent_rows(limit)]

    def recent_rows(self, limit: int = 10) -> list[tuple[Any, ...]]:
        """The rows ``recent_decisions()`` makes its records of, as stored."""
        return self._read(f"SELECT {self._COLUMNS} FROM decisions ORDER BY id DESC LIMIT ?", (limit,))

    def decision(self, decision_id: int) -> DecisionRecord | None:
        """One decision by id."""
        rows = self._read(f"SELECT {self._COLUMNS} FROM decisions WHERE id = ?", (decision_id,))
        return self._record(rows[0]) if rows else None

    def decision_stats(self) -> HistoryStats:
        """(count of applied attempts, successes, mean duration ms, wall time of the last one)."""
        rows = self._read(
            "SELECT count(*), sum(outcome = 'applied'), avg(duration_ms), max(at) FROM decisions"
            f" WHERE outcome IN ({', '.join('?' * len(COUNTED_OUTCOMES))})",
            COUNTED_OUTCOMES,
        )
        if not rows or rows[0][0] == 0:
            return 0, 0, 0.0, None
        count, ok, avg, last = rows[0]
        return int(count), int(ok or 0), float(avg or 0.0), last

    def trim(self) -> None:
        """Apply retention: age and row-count limits on history and finished journal records."""
        cutoff = self._wall() - self._retention
        self._write("DELETE FROM decisions WHERE at < ?", (cutoff,), history=ANY_ROW)
        self._write(
            "DELETE FROM decisions WHERE id <= (SELECT max(id) FROM decisions) - ?",
            (self._max_rows,),
            history=ANY_ROW,
        )
        self._write("DELETE FROM journal WHERE status != 'intent' AND updated < ?", (cutoff,))
        # finished records are bounded like the history, so a high action budget cannot grow the file for a month
        self._write(
            "DELETE FROM journal WHERE status != 'intent' AND id <= (SELECT max(id) FROM journal) - ?",
            (self._max_rows,),
        )

    # journal ---------------------------------------------------------------------------------------------------

    def journal_intent(self, *, decision_id: int | None, strategy: str, plan: Mapping[str, Any]) -> int | None:
        """Record that a plan is about to be applied (before any write)."""
        now = self._wall()
        return self._write(
            "INSERT INTO journal (decision_id, strategy, plan, status, at, updated) VALUES (?, ?, ?, 'intent', ?, ?)",
            (decision_id, strategy, _dumps(plan), now, now),
        )

    def journal_finish(self, entry_id: int, status: str, result: Mapping[str, Any] | None = None) -> None:
        """Close a journal record: done, failed, reverted or reconciled."""
        self._write(
            "UPDATE journal SET status = ?, result = coalesce(?, result), updated = ? WHERE id = ?",
            (status, _dumps(result) if result is not None else None, self._wall(), entry_id),
        )

    def journal(self, status: str | None = None) -> list[JournalEntry]:
        """Journal records, optionally with one status."""
        if status is None:
            rows = self._read("SELECT id, decision_id, strategy, plan, status, result, at FROM journal ORDER BY id")
        else:
            rows = self._read(
                "SELECT id, decision_id, strategy, plan, status, result, at FROM journal WHERE status = ? ORDER BY id",
                (status,),
            )
        return [
            JournalEntry(
                id=r[0],
                decision_id=r[1],
                strategy=r[2],
                plan=_loads(r[3]) or {},
                status=r[4],
                result=_loads(r[5]),
                at=r[6],
            )
            for r in rows
        ]

    # strategy state and baselines ----------------------------------------------------------------------------------

    def save_strategy(self, name: str, data: Mapping[str, Any]) -> None:
        """Persist one strategy's learned state."""
        self._write(
            "INSERT INTO strategy_state (name, data) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET data = excluded.data",
            (name, _dumps(data)),
        )

    def load_strategies(self) -> dict[str, dict[str, Any]]:
        """All persisted strategy states."""
        return {name: _loads(data) or {} for name, data in self._read("SELECT name, data FROM strategy_state")}

    def save_baseline(self, signal: str, hour: int, value: float, samples: int) -> None:
        """Persist a learned baseline (hour -1: all hours)."""
        self._write(
            "INSERT INTO baselines (signal, hour, value, samples, updated) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(signal, hour) DO UPDATE SET value = excluded.value, samples = excluded.samples,"
            " updated = excluded.updated",
            (signal, hour, value, samples, self._wall()),
        )

    def load_baselines(self) -> dict[tuple[str, int], tuple[float, int]]:
        """All persisted baselines: (signal, hour) -> (value, samples)."""
        return {(r[0], r[1]): (r[2], r[3]) for r in self._read("SELECT signal, hour, value, samples FROM baselines")}

    def baseline_times(self) -> dict[tuple[str, int], float]:
        """When each persisted baseline was last saved (wall time): (signal, hour) -> updated."""
        return {(r[0], r[1]): r[2] for r in self._read("SELECT signal, hour, updated FROM baselines")}


class HistoryReader:
    """Reads the decision history over read-only connections of its own, one per thread: never the store's lock.

    The API's history reads can be many and slow (a full page of rows, the whole-table counts); behind the
    store's one lock they held up the writes a round makes. A reader thread gets its own connection on first
    use (WAL lets it read while the store writes); when the store runs in memory, or a read-only connection
    cannot be had, the read goes through the store as before.
    """

    _COLUMNS = StateStore._COLUMNS
    _record = staticmethod(StateStore._record)

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._closed = False

    @property
    def version(self) -> int:
        """The store's write version (what readers cache by)."""
        return self._store.version

    def decisions(self, *, after: int = 0, limit: int = 100, strategy: str | None = None) -> list[DecisionRecord]:
        """Decisions with id > after, oldest first."""
        return StateStore.decisions(self, after=after, limit=limit, strategy=strategy)  # type: ignore[arg-type]

    def decision_rows(self, *, after: int = 0, limit: int = 100, strategy: str | None = None) -> list[tuple[Any, ...]]:
        """The rows ``decisions()`` makes its records of, as stored."""
        return StateStore.decision_rows(self, after=after, limit=limit, strategy=strategy)  # type: ignore[arg-type]

    def recent_decisions(self, limit: int = 10) -> list[DecisionRecord]:
        """The newest decisions, newest first."""
        return StateStore.recent_decisions(self, limit)  # type: ignore[arg-type]

    def recent_rows(self, limit: int = 10) -> list[tuple[Any, ...]]:
        """The newest rows, newest first, as stored."""
        return StateStore.recent_rows(self, limit)  # type: ignore[arg-type]

    def decision_stats(self) -> HistoryStats:
        """(count of applied attempts, successes, mean duration ms, wall time of the last one)."""
        return StateStore.decision_stats(self)  # type: ignore[arg-type]

    def _connection(self) -> sqlite3.Connection | None:
        store = self._store
        if self._closed or store._memory_fallback or store._conn is None:
            return None
        generation = store.recreated
        held: tuple[sqlite3.Connection, int] | None = getattr(self._local, "conn", None)
        if held is not None and held[1] == generation:
            return held[0]
        if held is not None:
            self._drop(held[0])
        try:
            conn = open_read_only(store.path.resolve(), 5000, shared=True)
            conn.execute("PRAGMA query_only=1")
        except (OSError, sqlite3.Error):
            return None
        with self._guard:
            self._opened.append(conn)
        self._local.conn = (conn, generation)
        return conn

    def _drop(self, conn: sqlite3.Connection) -> None:
        self._local.conn = None
        with self._guard:
            if conn in self._opened:
                self._opened.remove(conn)
        conn.close()

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._connection()
        if conn is None:
            return self._store._read(sql, args)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.Error:
            # the file went away or changed under us: read through the store this time, reconnect next time
            self._drop(conn)
            return self._store._read(sql, args)

    def close(self) -> None:
        """Close every connection this reader opened."""
        with self._guard:
            self._closed = True
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
