"""Backups of the backend's SQLite file, taken before retention pruning or VACUUM, and their restore.

A backup is SQLite's online backup (``Connection.backup``) of a read-only connection (``actions.sqlite.reading``,
which creates nothing next to the database): a consistent copy of every committed page, taken while the backend
keeps writing. It is written under a temporary name, switched to rollback-journal mode so the file stands alone,
checked with ``PRAGMA quick_check``, and only then renamed to ``<stem>-<UTC time>.db`` (mode 0600) in the backup
directory. The directory holds at most ``keep`` backups and ``max_bytes`` in all: older ones go to make room; when
even that is not enough, or the file system lacks the space, no backup is taken and the risky change is not made.

``restore`` is the one command that puts a backup back (``cctv-optimizer restore-backup``): it checks the backup,
refuses while a process has the database open (the backend must be stopped), keeps the current file next to the
backups, and copies the backup in through SQLite, so the database file keeps its owner, mode and inode.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from metrics.errors import SamplingError
from metrics.sqlite import inspect_database, open_read_only, open_read_write
from strategies.actions.sqlite import reading
from strategies.base import StrategyDeferred, StrategyError

# space kept free on the backup's file system beyond the backup itself
FREE_MARGIN_BYTES = 64 * 1024 * 1024
_STAMP = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True, slots=True, kw_only=True)
class Backup:
    """A finished backup: where it is, its size, and the older backups removed to make room."""

    path: Path
    bytes: int
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Room:
    """Whether a backup of ``needed`` bytes fits, which old backups would go for it, and why not when it does not."""

    needed: int
    free: int
    limit: int
    drop: tuple[Path, ...]
    problem: str | None


def backups_of(database: Path, directory: Path) -> list[Path]:
    """The backups of this database in the directory, oldest first (only names this module writes)."""
    pattern = re.compile(rf"^{re.escape(database.stem)}-(\d{{8}}T\d{{6}}Z)(?:-(\d+))?\.db$")
    found: list[tuple[str, int, str]] = []
    try:
        for entry in os.scandir(directory):
            match = pattern.match(entry.name)
            if match is not None and entry.is_file(follow_symlinks=False):
                found.append((match.group(1), int(match.group(2) or 1), entry.name))
    except FileNotFoundError:
        return []
    return [directory / name for _stamp, _n, name in sorted(found)]


def needed_bytes(database: Path) -> int:
    """The size a backup will have: every page of the database as the backend sees it (the WAL's included)."""
    with reading(database, 1000) as conn:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
    return page_size * page_count


def room_for(
    database: Path,
    directory: Path,
    *,
    keep: int,
    max_bytes: int,
    free_bytes: Callable[[Path], int] | None = None,
) -> Room:
    """Whether one more backup fits the count and size limits and the file system, dropping the oldest if need be."""
    needed = needed_bytes(database)
    existing = backups_of(database, directory)
    sizes = {p: p.stat().st_size for p in existing}
    drop: list[Path] = []
    kept = list(existing)
    while kept and (len(kept) + 1 > keep or sum(sizes[p] for p in kept) + needed > max_bytes):
        drop.append(kept.pop(0))
    probe = directory if directory.exists() else directory.parent
    free = (free_bytes or (lambda p: shutil.disk_usage(p).free))(probe) + sum(sizes[p] for p in drop)
    problem: str | None = None
    if needed > max_bytes:
        problem = f"the database needs {needed} bytes, more than the backup limit of {max_bytes}"
    elif free < needed + FREE_MARGIN_BYTES:
        problem = f"the backup needs {needed} bytes and {directory} has only {free} free (with old backups removed)"
    return Room(needed=needed, free=free, limit=max_bytes, drop=tuple(drop), problem=problem)


def take_backup(  # noqa: PLR0913 -- source, target, limits and clock of one backup
    database: Path,
    directory: Path,
    *,
    keep: int,
    max_bytes: int,
    busy_timeout_ms: int,
    wall: Callable[[], float] = time.time,
    free_bytes: Callable[[Path], int] | None = None,
) -> Backup:
    """Back the database up into ``directory`` within its limits (blocking); StrategyDeferred when there is no room."""
    room = room_for(database, directory, keep=keep, max_bytes=max_bytes, free_bytes=free_bytes)
    if room.problem is not None:
        raise StrategyDeferred(f"no room for a backup, so no change was made: {room.problem}")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StrategyError(f"cannot create the backup directory {directory}: {exc.strerror}") from None
    stamp = time.strftime(_STAMP, time.gmtime(wall()))
    target = directory / f"{database.stem}-{stamp}.db"
    n = 1
    while target.exists():
        n += 1
        target = directory / f"{database.stem}-{stamp}-{n}.db"
    partial = directory / f".{target.name}.partial"
    try:
        _copy(database, partial, busy_timeout_ms)
        os.replace(partial, target)
    except (OSError, sqlite3.Error) as exc:
        partial.unlink(missing_ok=True)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StrategyError(f"backup of {database} into {directory} failed ({why}); no change was made") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    removed: list[str] = []
    for old in room.drop:
        try:
            old.unlink()
            removed.append(old.name)
        except FileNotFoundError:
            continue
    return Backup(path=target, bytes=target.stat().st_size, removed=tuple(removed))


def _copy(database: Path, partial: Path, busy_timeout_ms: int) -> None:
    """SQLite's online backup into ``partial``, made a standalone rollback-journal file and checked."""
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    target = sqlite3.connect(partial, isolation_level=None)
    try:
        with reading(database, busy_timeout_ms) as source:
            source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
        check = target.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise sqlite3.DatabaseError(f"the copy failed its quick_check: {check}")
    finally:
        target.close()
    with open(partial, "rb") as fh:
        os.fsync(fh.fileno())


@dataclass(frozen=True, slots=True, kw_only=True)
class Restored:
    """What a restore did: the backup put in place, and where the replaced content was kept."""

    database: Path
    backup: Path
    kept: Path


def holders(database: Path, proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(pid, command) of the processes that have the database file open (those this user may look at)."""
    real = os.path.realpath(database)
    names = {real, f"{real}-wal", f"{real}-shm"}
    found: list[tuple[int, str]] = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = os.listdir(f"{entry.path}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{entry.path}/fd/{fd}") in names:
                    cmd = Path(f"{entry.path}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.append((int(entry.name), cmd.strip()))
                    break
            except OSError:
                continue
    return found


def restore(database: Path, backup: Path, *, keep_directory: Path, force: bool = False) -> Restored:
    """Put ``backup`` back into ``database`` (blocking); StrategyError saying why not, with nothing changed."""
    try:
        inspect_database(backup)
        owner = inspect_database(database).stat.st_uid
    except SamplingError as exc:
        raise StrategyError(str(exc)) from None
    if os.geteuid() not in (0, owner):
        # SQLite may create -wal/-shm next to the database: they must belong to the backend, not to this user
        raise StrategyError(f"run the restore as root or as the database's owner (uid {owner}); nothing was restored")
    try:
        source = open_read_only(backup, 5000)
    except sqlite3.Error as exc:
        raise StrategyError(f"cannot open {backup}: {exc}; nothing was restored") from None
    try:
        check = source.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise StrategyError(f"{backup} failed its quick_check ({check}); nothing was restored")
        if not force:
            busy = holders(database)
            if busy:
                who = ", ".join(f"{pid} ({cmd or '?'})" for pid, cmd in busy)
                raise StrategyError(
                    f"{database} is open by process {who}: stop the backend first (for example "
                    "pm2 stop rafnet-cctv-backend), or pass --force; nothing was restored"
                )
        # the content being replaced is kept next to the backups first: a restore never destroys data either
        stamp = time.strftime(_STAMP, time.gmtime())
        kept = keep_directory / f"{database.stem}-before-restore-{stamp}.db"
        keep_directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _copy(database, kept, 5000)
        target = open_read_write(database, 5000)
        try:
            mode = str(target.execute("PRAGMA journal_mode").fetchone()[0])
            source.backup(target)
            if mode.lower() == "wal":
                target.execute("PRAGMA journal_mode=WAL")
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise StrategyError(f"restoring {backup} into {database} failed: {exc}") from None
    finally:
        source.close()
    return Restored(database=database, backup=backup, kept=kept)
