"""Writes to the backend's SQLite file: WAL checkpoints, PRAGMA optimize and quick_check, each short and busy-aware.

The connection opens the existing file read-write (never creating one), sets a short busy timeout, runs
one statement, and closes. No transaction is held; a busy database is reported, not waited out.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from metrics.sqlite import is_busy
from strategies.base import StrategyError


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


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    if not path.is_file():
        raise StrategyError(f"database {path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    except sqlite3.Error as exc:
        raise StrategyError(f"cannot open {path} for writing: {exc}") from None
    return conn


def checkpoint(path: Path, mode: str, busy_timeout_ms: int) -> CheckpointResult:
    """Run ``PRAGMA wal_checkpoint(MODE)`` (PASSIVE, FULL, RESTART or TRUNCATE) once."""
    if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
        raise ValueError(f"unknown checkpoint mode {mode}")
    conn = _connect(path, busy_timeout_ms)
    try:
        row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    except sqlite3.OperationalError as exc:
        raise StrategyError(f"checkpoint {mode} failed: {exc}") from None
    finally:
        conn.close()
    busy, log_frames, done = (int(x) for x in row)
    return CheckpointResult(
        mode=mode, busy=bool(busy), log_frames=log_frames, checkpointed_frames=done, wal_bytes_after=wal_bytes(path)
    )


def optimize(path: Path, busy_timeout_ms: int) -> None:
    """Run ``PRAGMA optimize`` (cheap: it analyses only what needs it)."""
    conn = _connect(path, busy_timeout_ms)
    try:
        conn.execute("PRAGMA optimize")
    except sqlite3.OperationalError as exc:
        raise StrategyError(f"PRAGMA optimize failed: {exc}") from None
    finally:
        conn.close()


def quick_check(path: Path, busy_timeout_ms: int, max_problems: int = 10) -> list[str]:
    """Run ``PRAGMA quick_check(N)`` on a read-only connection: an empty list means the file is sound."""
    if not path.is_file():
        raise StrategyError(f"database {path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise StrategyError(f"cannot open {path}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        rows = [str(r[0]) for r in conn.execute(f"PRAGMA quick_check({int(max_problems)})")]
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
            # a lock held past the busy timeout says nothing about the file: try again on the next schedule
            raise StrategyError(f"database busy: quick_check could not read it ({exc})") from None
        # a file too damaged to be checked is itself the finding
        return [f"quick_check could not run: {exc}"]
    finally:
        conn.close()
    return [] if rows == ["ok"] else rows
