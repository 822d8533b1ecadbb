"""Prune stale HLS files (metrics/hls.py's rule), re-checking every file just before it goes.

The walk (metrics/hls.py) is the scan's own: directories opened with ``O_NOFOLLOW``, nothing on another device
or under a mount point, playlists read by the bounded non-blocking reader (an unreadable or oversized one
protects its directory), references resolved across sibling directories, and only MediaMTX's segment, part and
init files ever stale. The root itself must still resolve to where it did when the configuration was checked.

Two passes. The first finds the candidates (at most ``max_files``, oldest first, kept in a bounded heap so a
directory of 100,000 files costs no more memory than the limit) and checks that each directory holding one can
be written, so a permission problem is reported before anything is removed. The second re-reads the playlists
and, right before each directory's files go, that directory's playlists again, then ``lstat``s each file once
more (same device, still stale) immediately before removing it. A file or directory that vanished in between
(MediaMTX rotated it, or removed a stopped stream's directory) is fine, and is never reported as a permission
problem.

MediaMTX creates its stream directories with mode 0755, so the daemon's user can never unlink in them; with
MediaMTX under ``UMask=0002`` and a shared group the files themselves are group-writable (docs/SAFETY.md). In a
directory the daemon cannot write, a stale file it can write is emptied instead (truncated to zero bytes
through a descriptor opened without following links and checked to be the same file): its RAM is freed, the
empty name stays until MediaMTX or a reboot removes it, and an empty stale file there is no longer a candidate.
"""

from __future__ import annotations

import errno
import heapq
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from metrics.errors import SamplingError
from metrics.hls import DirectoryView, Protection, Stream, Walk, open_root
from strategies.base import StrategyError

_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    """What a prune did: files removed (or emptied where only that is allowed), files gone meanwhile, files kept."""

    removed: int
    removed_bytes: int
    vanished: int
    kept: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    directories: int
    candidates: int
    limited: bool
    emptied: int = 0
    emptied_bytes: int = 0


# A candidate: (-mtime, sequence, stream index, name, size, inode). A plain tuple on purpose: tuples of numbers and
# strings leave the garbage collector's care at its first pass, so 100,000 of them never trigger the full
# collection that would hold the GIL (and the event loop) for tens of milliseconds; the negated mtime makes the
# min-heap's top the newest candidate, the one to drop when a older one turns up.
_Candidate = tuple[float, int, int, str, int, int]


def _stream_state(root_fd: int, stream: Stream) -> bool | None:
    """Whether the daemon may unlink in this stream directory; None when the directory is gone or replaced."""
    try:
        st = os.stat(stream.name, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if (st.st_dev, st.st_ino) != (stream.st.st_dev, stream.st.st_ino) or os.fstat(stream.fd).st_nlink == 0:
        return None
    return os.access(stream.name, os.W_OK | os.X_OK, dir_fd=root_fd)


def _file_writable(stream: Stream, name: str) -> bool:
    try:
        return os.access(name, os.W_OK, dir_fd=stream.fd, follow_symlinks=False)
    except OSError:
        return False


def prune_stale(
    root: Path,
    *,
    stale_age: float,
    max_files: int,
    now: Callable[[], float] = time.time,
    expected_root: Path | None = None,
) -> PruneResult:
    """Remove (or empty) up to ``max_files`` stale files under ``root`` (blocking; run it in a worker thread).

    ``expected_root`` is the root's real path as checked with the configuration: a root that resolves elsewhere
    now (a parent swapped for a link) is refused. Raises StrategyError, having removed nothing, when the root is
    missing, a link or elsewhere, or a directory holding stale files allows neither; raises StrategyError naming
    what was already removed when a removal fails for another reason than the file being gone.
    """
    if expected_root is not None and Path(os.path.realpath(root)) != expected_root:
        raise StrategyError(
            f"HLS directory {root} now resolves to {os.path.realpath(root)}, not {expected_root} as checked at "
            "start; not pruning"
        )
    try:
        root_fd = open_root(root)
    except SamplingError as exc:
        raise StrategyError(f"{exc}; not pruning") from None
    try:
        walk = Walk(root, root_fd)
        with walk.streams() as streams:
            heap, total = _candidates(walk, streams, stale_age=stale_age, now=now(), limit=max_files)
            plan = _by_directory(heap)
            modes, gone = _check_permissions(walk, streams, plan)
            return _remove(
                walk, streams, plan, modes, gone, stale_age=stale_age, now=now, total=total, max_files=max_files
            )
    finally:
        os.close(root_fd)


def _candidates(
    walk: Walk, streams: list[Stream], *, stale_age: float, now: float, limit: int
) -> tuple[list[_Candidate], int]:
    """The ``limit`` oldest stale files (a bounded max-heap) and how many stale files there are in all."""
    protection = walk.protection(streams, stale_age, now)
    heap: list[_Candidate] = []
    total = 0
    for index, stream in enumerate(streams):
        view = protection.view(stream.name)
        try:
            for name, st in walk.files(stream):
                if walk.classify(stream, name, st, view, stale_age=stale_age, now=now) is not None:
                    continue
                total += 1
                item = (-st.st_mtime, total, index, name, st.st_size, st.st_ino)
                if len(heap) < limit:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
        except OSError:
            continue  # the directory went away while it was read
    return heap, total


def _by_directory(heap: list[_Candidate]) -> dict[int, list[_Candidate]]:
    """Candidates grouped by stream directory, oldest first (popped one by one: no long sort holds the loop)."""
    newest_first = [heapq.heappop(heap) for _ in range(len(heap))]
    plan: dict[int, list[_Candidate]] = {}
    for candidate in reversed(newest_first):
        _newness, _seq, stream, _name, _size, _ino = candidate
        plan.setdefault(stream, []).append(candidate)
    return plan


def _check_permissions(
    walk: Walk, streams: list[Stream], plan: dict[int, list[_Candidate]]
) -> tuple[dict[int, str], set[int]]:
    """Per directory: ``unlink`` or ``empty``; the directories that vanished. StrategyError when one allows neither."""
    modes: dict[int, str] = {}
    gone: set[int] = set()
    refused: list[str] = []
    for index, candidates in plan.items():
        stream = streams[index]
        writable = _stream_state(walk.root_fd, stream)
        if writable is None:
            gone.add(index)
        elif writable:
            modes[index] = "unlink"
        elif any(_file_writable(stream, name) for _n, _q, _s, name, _z, _i in candidates):
            modes[index] = "empty"
        elif _stream_state(walk.root_fd, stream) is None:
            gone.add(index)  # removed while its files were checked: not a permission problem
        else:
            mode = stat.S_IMODE(stream.st.st_mode)
            refused.append(f"{walk.root / stream.name} ({len(candidates)} stale; directory mode {mode:04o})")
    if refused:
        raise StrategyError(
            f"permission denied: cannot remove or empty the stale files in {', '.join(refused)}; nothing was "
            "removed. Give the daemon's group write access to MediaMTX's files (docs/SAFETY.md)"
        )
    return modes, gone


def _remove(  # noqa: PLR0913 -- one unlink and the checks before it
    walk: Walk,
    streams: list[Stream],
    plan: dict[int, list[_Candidate]],
    modes: dict[int, str],
    gone: set[int],
    *,
    stale_age: float,
    now: Callable[[], float],
    total: int,
    max_files: int,
) -> PruneResult:
    removed = removed_bytes = emptied = emptied_bytes = 0
    vanished = sum(len(plan[i]) for i in gone)
    kept: Counter[str] = Counter()
    # the playlists are read again before anything goes, and each directory's once more right before its files go
    protection = walk.protection(streams, stale_age, now())
    for index, candidates in plan.items():
        if index in gone:
            continue
        stream = streams[index]
        view = _fresh_view(walk, stream, protection, stale_age, now())
        for _newness, _seq, _stream, name, _size, _ino in candidates:
            try:
                st = os.stat(name, dir_fd=stream.fd, follow_symlinks=False)
            except FileNotFoundError:
                vanished += 1
                continue
            reason = walk.classify(stream, name, st, view, stale_age=stale_age, now=now())
            if reason is not None:
                kept[str(reason)] += 1
                continue
            try:
                if modes[index] == "unlink":
                    os.unlink(name, dir_fd=stream.fd)
                    removed += 1
                    removed_bytes += st.st_size
                elif _empty(stream, name, st):
                    emptied += 1
                    emptied_bytes += st.st_size
                else:
                    kept["not_writable"] += 1
            except FileNotFoundError:
                vanished += 1
            except OSError as exc:
                if exc.errno == errno.EACCES and _stream_state(walk.root_fd, stream) is None:
                    vanished += 1  # the directory went away mid-prune: not a permission problem
                    break
                raise StrategyError(
                    f"cannot remove {walk.root / stream.name / name}: {exc.strerror}; {removed} stale files "
                    f"({removed_bytes} bytes) were removed and {emptied} emptied before it"
                ) from None
    return PruneResult(
        removed=removed,
        removed_bytes=removed_bytes,
        emptied=emptied,
        emptied_bytes=emptied_bytes,
        vanished=vanished,
        kept=MappingProxyType(dict(kept)),
        directories=len(plan),
        candidates=total,
        limited=total > max_files,
    )


def _fresh_view(walk: Walk, stream: Stream, protection: Protection, stale_age: float, now: float) -> DirectoryView:
    """The directory's view from every playlist, with its own playlists read again just now."""
    own = Protection()
    walk.add_playlists(own, stream, stale_age, now)
    before = protection.view(stream.name)
    again = own.view(stream.name)
    return DirectoryView(
        references=before.references | again.references,
        live=before.live or again.live,
        protected=again.protected or before.protected,
    )


def _empty(stream: Stream, name: str, checked: os.stat_result) -> bool:
    """Truncate a stale file to zero bytes through a descriptor that is provably the file just checked."""
    try:
        fd = os.open(name, _WRITE_FLAGS, dir_fd=stream.fd)
    except PermissionError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino):
            return False
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    return True
