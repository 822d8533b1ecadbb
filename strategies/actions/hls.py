"""Prune stale HLS files by TARGET.md's rule, re-checking every file just before it goes.

A file is stale when no playlist in its directory references it and it is older than the configured
age; playlists, init segments of live streams and files still being written are never touched.

Everything goes through directory descriptors opened with ``O_NOFOLLOW``: a symbolic link (as the root,
as a stream directory, or as a file) is never followed, and nothing outside the root can be reached even
if a directory is swapped for a link while we work. Only regular files one level below the root (the
stream directories) are removed. Two passes: the first finds the candidates and checks that every
directory holding one is writable, so a permission problem is reported before anything is removed; the
second re-reads each directory's playlists and ``lstat``s each file again immediately before unlinking it.
A file that vanishes in between (MediaMTX rotated it) is fine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from metrics.hls import DirectoryView, keep_reason, playlist_references
from strategies.base import StrategyError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
MAX_PLAYLIST_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    """What a prune did: files and bytes removed, files that vanished meanwhile, files the re-check kept."""

    removed: int
    removed_bytes: int
    vanished: int
    kept: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    directories: int
    candidates: int
    limited: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class _Candidate:
    name: str
    size: int
    mtime: float


def _open_root(root: Path) -> int:
    try:
        return os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise StrategyError(f"HLS directory {root} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StrategyError(f"HLS directory {root} is a symbolic link or not a directory; not pruning") from None
        raise StrategyError(f"cannot open HLS directory {root}: {exc.strerror}") from None


@contextlib.contextmanager
def _stream_dirs(root_fd: int) -> Iterator[list[tuple[str, int]]]:
    """Open every real subdirectory of the root (links are skipped); close them all afterwards."""
    opened: list[tuple[str, int]] = []
    try:
        with os.scandir(root_fd) as it:
            names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        for name in sorted(names):
            try:
                opened.append((name, os.open(name, _DIR_FLAGS, dir_fd=root_fd)))
            except OSError:
                # replaced by a link or removed since the listing: not ours to touch
                continue
        yield opened
    finally:
        for _, fd in opened:
            os.close(fd)


def _read_playlist(name: str, dir_fd: int) -> str | None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(MAX_PLAYLIST_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def read_directory(dir_fd: int, stale_age: float, now: float) -> tuple[DirectoryView, list[tuple[str, os.stat_result]]]:
    """Read a stream directory now: its playlists' references, whether one is live, and every entry's lstat."""
    entries: list[tuple[str, os.stat_result]] = []
    refs: set[str] = set()
    live = False
    with os.scandir(dir_fd) as it:
        names = [e.name for e in it]
    for name in names:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        entries.append((name, st))
        if name.endswith(".m3u8") and stat.S_ISREG(st.st_mode):
            text = _read_playlist(name, dir_fd)
            if text is None:
                continue
            refs |= playlist_references(text)
            if now - st.st_mtime < stale_age:
                live = True
    return DirectoryView(references=frozenset(refs), live=live), entries


def find_candidates(dir_fd: int, stale_age: float, now: float) -> list[_Candidate]:
    """The stale files of one stream directory, oldest first."""
    view, entries = read_directory(dir_fd, stale_age, now)
    found = [
        _Candidate(name=name, size=st.st_size, mtime=st.st_mtime)
        for name, st in entries
        if keep_reason(name, st, view, stale_age, now) is None
    ]
    return sorted(found, key=lambda c: c.mtime)


def prune_stale(root: Path, *, stale_age: float, max_files: int, now: Callable[[], float] = time.time) -> PruneResult:
    """Remove up to ``max_files`` stale files under ``root`` (blocking; run it in a worker thread).

    Raises StrategyError, having removed nothing, when the root is missing or a link, or a directory
    holding stale files is not writable; raises StrategyError naming what was already removed when an
    unlink fails for another reason than the file being gone.
    """
    root_fd = _open_root(root)
    try:
        with _stream_dirs(root_fd) as dirs:
            plan: list[tuple[str, int, list[_Candidate]]] = []
            budget = max_files
            total = 0
            for name, fd in dirs:
                found = find_candidates(fd, stale_age, now())
                total += len(found)
                if found and budget > 0:
                    plan.append((name, fd, found[:budget]))
                    budget -= min(budget, len(found))
            refused = [
                (name, len(c)) for name, _fd, c in plan if not os.access(name, os.W_OK | os.X_OK, dir_fd=root_fd)
            ]
            if refused:
                where = ", ".join(f"{root / name} ({n} stale)" for name, n in refused)
                raise StrategyError(f"permission denied: cannot remove files in {where}; nothing was removed")
            return _remove(root, plan, stale_age=stale_age, now=now, total=total, max_files=max_files)
    finally:
        os.close(root_fd)


def _remove(
    root: Path,
    plan: list[tuple[str, int, list[_Candidate]]],
    *,
    stale_age: float,
    now: Callable[[], float],
    total: int,
    max_files: int,
) -> PruneResult:
    removed = removed_bytes = vanished = 0
    kept: Counter[str] = Counter()
    for dir_name, fd, candidates in plan:
        # the playlists are read again right before this directory's files go: MediaMTX may have moved on
        view, _ = read_directory(fd, stale_age, now())
        for cand in candidates:
            try:
                st = os.stat(cand.name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                vanished += 1
                continue
            reason = keep_reason(cand.name, st, view, stale_age, now())
            if reason is not None:
                kept[str(reason)] += 1
                continue
            try:
                os.unlink(cand.name, dir_fd=fd)
            except FileNotFoundError:
                vanished += 1
                continue
            except OSError as exc:
                raise StrategyError(
                    f"cannot remove {root / dir_name / cand.name}: {exc.strerror}; "
                    f"{removed} stale files ({removed_bytes} bytes) were removed before it"
                ) from None
            removed += 1
            removed_bytes += st.st_size
    return PruneResult(
        removed=removed,
        removed_bytes=removed_bytes,
        vanished=vanished,
        kept=MappingProxyType(dict(kept)),
        directories=len(plan),
        candidates=total,
        limited=total > max_files,
    )
