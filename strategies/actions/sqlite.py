"""Writes to the backend's SQLite file: WAL checkpoints, PRAGMA optimize and quick_check, each short and busy-aware.

The two openers every action uses live here: ``writing`` opens the existing file read-write (never creating
one), ``reading`` read-only (``metrics.sqlite.read_database``). Neither creates ``-wal``/``-shm``: while the
backend has the database closed a write waits (StrategyDeferred) instead of creating them as the daemon's
user, which would lock the backend out of its own database. A database that is not usable (missing, a
directory, unreadable, not SQLite) defers the action too: it is a source problem, not the strategy failing,
and must not open its breaker. No transaction is held; a busy database is reported, not waited out.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from metrics.errors import SamplingError
from metrics.sqlite import (
    SIDECARS,
    inspect_database,
    is_busy,
    is_not_a_database,
    open_read_write,
    read_database,
)
from strategies.base import StrategyDeferred, StrategyError

log = structlog.get_logger("strategy.sqlite")


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointResult:
    """The outcome of ``PRAGMA wal_checkpoint``: whether it was blocked, and the WAL size after."""

    mode: str
    busy: bool
    log_frames: int
    checkpointed_frames: int
    wal_bytes_after: int


def wal_bytes(path: Path) -> int:
    """Current size of the database's WAL file (0 when there is none)."""
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


def hand_over_sidecars(path: Path) -> list[str]:
    """Give ``-wal``/``-shm`` files this process created back to the database's group and mode.

    They can only be ours if the backend closed the database in the instant between the check and the
    open; left as they are, the backend could no longer write. Returns the files handed over.
    """
    try:
        info = inspect_database(path)
    except SamplingError:
        return []
    me = os.geteuid()
    if me in (0, info.stat.st_uid):
        return []  # as root SQLite gives them to the database's owner itself; as the owner they are fine
    fixed: list[str] = []
    for suffix in SIDECARS:
        name = f"{info.path}{suffix}"
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            continue
        if st.st_uid != me or not stat.S_ISREG(st.st_mode):
            continue
        try:
            os.chown(name, -1, info.stat.st_gid)
            os.chmod(name, stat.S_IMODE(info.stat.st_mode) & 0o666)
        except OSError as exc:
            log.warning("database_sidecar_not_handed_over", file=name, error=exc.strerror)
            continue
        fixed.append(name)
    if fixed:
        log.warning("database_sidecar_handed_over", files=fixed, group=info.stat.st_gid)
    return fixed


@contextmanager
def reading(path: Path, busy_timeout_ms: int, *, row_factory: bool = False) -> Iterator[sqlite3.Connection]:
    """A read-only connection for an action; an unusable or closed-and-changing database defers the action."""
    try:
        with read_database(path, busy_timeout_ms, row_factory=row_factory) as conn:
            yield conn
    except SamplingError as exc:
        raise StrategyDeferred(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        if is_not_a_database(exc):
            raise StrategyDeferred(f"database {path} is damaged or not a SQLite database: {exc}") from None
        raise
    finally:
        hand_over_sidecars(path)


@contextmanager
def writing(path: Path, busy_timeout_ms: int, *, row_factory: bool = False) -> Iterator[sqlite3.Connection]:
    """A read-write connection to the existing file; never creates it, nor its ``-wal``/``-shm``."""
    try:
        info = inspect_database(path)
    except SamplingError as exc:
        raise StrategyDeferred(str(exc)) from None
    if info.closed_by_backend:
        raise StrategyDeferred(
            f"the backend has {path} closed (no -wal/-shm files): writing now would create them as the daemon's "
            "user and lock the backend out of its database; waiting until it opens it again"
        )
    try:
        conn = open_read_write(path, busy_timeout_ms, row_factory=row_factory)
    except sqlite3.Error as exc:
        raise StrategyError(f"cannot open {path} for writing: {exc}") from None
    try:
        yield conn
    except sqlite3.DatabaseError as exc:
        if is_not_a_database(exc):
            raise StrategyDeferred(f"database {path} is damaged or not a SQLite database: {exc}") from None
        raise
    finally:
        conn.close()
        hand_over_sidecars(path)


def checkpoint(path: Path, mode: str, busy_timeout_ms: int) -> CheckpointResult:
    """Run ``PRAGMA wal_checkpoint(MODE)`` (PASSIVE, FULL, RESTART or TRUNCATE) once."""
    if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
        raise ValueError(f"unknown checkpoint mode {mode}")
    with writing(path, busy_timeout_ms) as conn:
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.OperationalError as exc:
            raise StrategyError(f"checkpoint {mode} failed: {exc}") from None
    busy, log_frames, done = (int(x) for x in row)
    return CheckpointResult(
        mode=mode, busy=bool(busy), log_frames=log_frames, checkpointed_frames=done, wal_bytes_after=wal_bytes(path)
    )


def optimize(path: Path, busy_timeout_ms: int) -> None:
    """Run ``PRAGMA optimize`` (cheap: it analyses only what needs it)."""
    with writing(path, busy_timeout_ms) as conn:
        try:
            conn.execute("PRAGMA optimize")
        except sqlite3.OperationalError as exc:
            raise StrategyError(f"PRAGMA optimize failed: {exc}") from None


def quick_check(path: Path, busy_timeout_ms: int, max_problems: int = 10) -> list[str]:
    """Run ``PRAGMA quick_check(N)`` on a read-only connection: an empty list means the file is sound."""
    with reading(path, busy_timeout_ms) as conn:
        try:
            rows = [str(r[0]) for r in conn.execute(f"PRAGMA quick_check({int(max_problems)})")]
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
                # a lock held past the busy timeout says nothing about the file: try again on the next schedule
                raise StrategyError(f"database busy: quick_check could not read it ({exc})") from None
            # a file too damaged to be checked is itself the finding
            return [f"quick_check could not run: {exc}"]
    return [] if rows == ["ok"] else rows
