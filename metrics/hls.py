"""Walk MediaMTX's HLS directory: bytes, files, streams, and which files are stale.

A file is stale when no current playlist references it and it is older than the configured age. Only what
MediaMTX writes there is ever stale: its segment, part and init files (``segment_kind``); anything else is an
"unknown file", counted and left alone. Playlists, init segments of live streams and files being written are
never stale. The walk is shared by the scan (a sample) and the prune (strategies/actions/hls.py), so the two
cannot disagree:

- directories are opened with ``O_NOFOLLOW``: no symbolic link is followed, not the root, a stream directory
  or a file; a stream directory on another device than the root, or that is a mount point, is skipped;
- playlists (``*.m3u8``, any case) are read by one bounded, non-blocking, no-follow reader: a playlist larger
  than ``MAX_PLAYLIST_BYTES``, or that cannot be read whole (a FIFO, a link, no permission), protects its whole
  directory rather than letting what its unread part names be pruned;
- a playlist's references are resolved from its own directory, so ``../camB/x.ts`` protects ``camB/x.ts``.

See docs/SAFETY.md for MediaMTX's file names and the reasons behind each rule.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import math
import os
import posixpath
import re
import select
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlsplit

from config.safety import MOUNTINFO, mounts_text, parse_mounts
from metrics.errors import SamplingError
from metrics.snapshot import HlsSample

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_PLAYLIST_BYTES = 1024 * 1024
UNKNOWN_EXAMPLES = 5
# an unchanged stream directory is read again after this long anyway (a file rewritten in place)
REWALK_SECONDS = 60.0
# a stream directory's summary is kept only if the directory was this long unchanged when it was read
SETTLED_SECONDS = 2.0
_URI_ATTR = re.compile(r'URI="([^"]+)"')
_WRITING_SUFFIXES = (".tmp", ".partial", ".part")
# MediaMTX's hlsDirectory files (gohlslib): "<prefix>_seg<N>.mp4|.ts", "<prefix>_part<N>.mp4", "<prefix>_init.mp4"
# in MediaMTX 1.9 (gohlslib v1); "<prefix>_<stream>_..." from gohlslib v2 on. <prefix> is 12 lower-case hex
# characters, new for every muxer run.
_MEDIAMTX_FILE = re.compile(r"^[0-9a-f]{12}(?:_[A-Za-z0-9]+)?_(?P<kind>seg\d+\.(?:mp4|ts)|part\d+\.mp4|init\.mp4)$")


def segment_kind(name: str) -> str | None:
    """``segment``, ``part`` or ``init`` for a file name MediaMTX writes; None for anything else."""
    match = _MEDIAMTX_FILE.match(name)
    if match is None:
        return None
    kind = match.group("kind")
    return "init" if kind == "init.mp4" else "part" if kind.startswith("part") else "segment"


def is_playlist(name: str) -> bool:
    """Playlists are never touched; names are matched case-insensitively (``INDEX.M3U8``)."""
    return name.lower().endswith(".m3u8")


def is_writing(name: str) -> bool:
    """A MediaMTX file still being written carries a temporary suffix (``x_seg3.mp4.tmp``)."""
    for suffix in _WRITING_SUFFIXES:
        if name.endswith(suffix):
            return segment_kind(name[: -len(suffix)]) is not None
    return False


class KeepReason(StrEnum):
    """Why the rule keeps a file (the scan counts it as not stale; the prune leaves it in place)."""

    PLAYLIST = "playlist"
    WRITING = "being_written"
    REFERENCED = "referenced"
    FRESH = "fresh"
    LIVE_INIT = "live_init"
    NOT_REGULAR = "not_a_regular_file"
    UNKNOWN = "unknown_file"
    OTHER_DEVICE = "other_device"
    PROTECTED = "directory_protected"
    EMPTY = "already_empty"


def playlist_references(text: str) -> set[str]:
    """The references a playlist makes (segment lines and ``URI=`` attributes), as written, without query."""
    refs: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            refs.update(m.split("?")[0].split("#")[0] for m in _URI_ATTR.findall(line))
        else:
            refs.add(line.split("?")[0].split("#")[0])
    refs.discard("")
    return refs


def resolve_reference(stream: str, reference: str) -> set[tuple[str, str]]:
    """The (stream directory, file name) pairs one reference may mean, as seen from ``stream``'s playlist.

    Relative references resolve from the playlist's directory (``../camB/x.ts`` is ``camB/x.ts``). An absolute
    path or URL (``/hls/camB/x.ts``) is served from somewhere the daemon cannot see, so it protects the name in the
    playlist's own directory and in the directory its last path part names.
    """
    path = urlsplit(reference).path if "://" in reference else reference
    path = unquote(path)
    if path.startswith("/"):
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        if not parts:
            return set()
        found = {(stream, parts[-1])}
        if len(parts) >= 2:
            found.add((parts[-2], parts[-1]))
        return found
    parts = posixpath.normpath(posixpath.join(stream, path)).split("/")
    if len(parts) == 2 and parts[0] not in ("", ".", ".."):
        return {(parts[0], parts[1])}
    return set()


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaylistRead:
    """One playlist as read now: its references, or why it could not be read whole (then it protects its dir)."""

    references: frozenset[str]
    problem: str | None = None


def read_playlist(name: str, dir_fd: int, limit: int = MAX_PLAYLIST_BYTES) -> PlaylistRead:  # noqa: PLR0911 -- each way a playlist can be unreadable returns its own reason
    """Read a playlist through ``dir_fd``: no link followed, never blocking on a FIFO, never more than ``limit``."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return PlaylistRead(references=frozenset())  # replaced or removed since the listing: it names nothing now
    except OSError as exc:
        why = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
        return PlaylistRead(references=frozenset(), problem=f"playlist {name} {why}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return PlaylistRead(references=frozenset(), problem=f"playlist {name} is not a regular file")
        if st.st_size > limit:
            return PlaylistRead(references=frozenset(), problem=f"playlist {name} is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            return PlaylistRead(references=frozenset(), problem=f"playlist {name} is larger than {limit} bytes")
    except OSError as exc:
        return PlaylistRead(references=frozenset(), problem=f"playlist {name} cannot be read ({exc.strerror})")
    finally:
        os.close(fd)
    return PlaylistRead(references=frozenset(playlist_references(b"".join(chunks).decode("utf-8", "replace"))))


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryView:
    """What the playlists say about one stream directory: the names they reference, whether one is live, and
    why the whole directory is protected (a playlist that could not be read whole), if it is."""

    references: frozenset[str]
    live: bool
    protected: str | None = None


def keep_reason(name: str, st: os.stat_result, view: DirectoryView, stale_age: float, now: float) -> KeepReason | None:  # noqa: PLR0911 -- each reason to keep a file is one return
    """Why the rule keeps this file, or None when it is stale (from an lstat result)."""
    if is_playlist(name):
        return KeepReason.PLAYLIST
    if not stat.S_ISREG(st.st_mode):
        return KeepReason.NOT_REGULAR
    if is_writing(name):
        return KeepReason.WRITING
    kind = segment_kind(name)
    if kind is None:
        return KeepReason.UNKNOWN
    if view.protected is not None:
        return KeepReason.PROTECTED
    if name in view.references:
        return KeepReason.REFERENCED
    if now - st.st_mtime < stale_age:
        return KeepReason.FRESH
    if view.live and kind == "init":
        return KeepReason.LIVE_INIT
    return None


@dataclass(slots=True)
class Stream:
    """An opened stream directory (one level below the root)."""

    name: str
    fd: int
    st: os.stat_result
    # whether the daemon may unlink here; where it may not, a stale file is emptied instead (docs/SAFETY.md)
    writable: bool = True


@dataclass(slots=True)
class Protection:
    """What every playlist under the root protects, per stream directory."""

    references: dict[str, set[str]] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)
    protected: dict[str, str] = field(default_factory=dict)

    def view(self, stream: str) -> DirectoryView:
        """The view of one stream directory."""
        return DirectoryView(
            references=frozenset(self.references.get(stream, ())),
            live=stream in self.live,
            protected=self.protected.get(stream),
        )


def open_root(root: Path) -> int:
    """Open the HLS root (never through a link); SamplingError saying why not."""
    try:
        return os.open(root, DIR_FLAGS)
    except FileNotFoundError:
        raise SamplingError(f"HLS directory {root} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                link = stat.S_ISLNK(os.lstat(root).st_mode)
            except OSError:
                link = False
            if link:
                raise SamplingError(f"HLS directory {root} is a symbolic link; refusing to follow it") from None
            raise SamplingError(f"HLS directory {root} is not a directory") from None
        raise SamplingError(f"HLS directory {root}: {exc.strerror}") from None


class MountTable:
    """The mount table, read again only when the kernel says it changed.

    Reading ``/proc/self/mountinfo`` costs the kernel a walk over every mount at each read; an open mountinfo
    polls with POLLPRI once after any mount or unmount in the namespace (proc(5)). The table is read when it is
    first asked for, and again after such an event; a change that lands while it is being read raises the
    event again, so the next call reads it once more. Where the file cannot be kept open or polled it is read
    at every call.
    """

    def __init__(self, path: Path = MOUNTINFO) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._poll: select.poll | None = None
        self._text = ""

    def text(self) -> str:
        """The mount table's text now (empty when it cannot be read)."""
        with self._lock:
            try:
                if self._fd is None:
                    self._open()
                elif not self._changed():
                    return self._text
                self._text = self._read()
            except OSError:
                self._close()
                return mounts_text(self._path)
            return self._text

    def _open(self) -> None:
        fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        poll = select.poll()
        try:
            poll.register(fd, select.POLLPRI)
        except (OSError, ValueError):
            os.close(fd)
            raise
        self._fd, self._poll = fd, poll

    def _changed(self) -> bool:
        assert self._poll is not None
        return any(events & (select.POLLPRI | select.POLLERR) for _fd, events in self._poll.poll(0))

    def _read(self) -> str:
        assert self._fd is not None
        os.lseek(self._fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self._fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._poll = None, None

    def close(self) -> None:
        """Close the kept mountinfo (a later call opens it again)."""
        with self._lock:
            self._close()


MOUNT_TABLE = MountTable()


def mount_points_below(root: Path, table: MountTable = MOUNT_TABLE) -> frozenset[str]:
    """Paths (relative to the root) of mounts strictly inside it: never entered, never removed.

    The table is as the kernel lists it at this call; only its reading and parsing are reused while it has not
    changed.
    """
    return _points_below(os.path.realpath(root), table.text())


@functools.lru_cache(maxsize=8)
def _points_below(real_root: str, table: str) -> frozenset[str]:
    real = Path(real_root)
    return frozenset(
        str(point.relative_to(real))
        for point, _kind in parse_mounts(table)
        if point != real and point.is_relative_to(real)
    )


def _file_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PlaylistMemo:
    """What each playlist protected when it was last read whole, kept while the file stays exactly as it was.

    A playlist is read again unless its device, inode, size, modification and change time are all the ones it
    had when it was read. Writing a file sets both times to the present; setting its modification time back
    still sets its change time. Only a rewrite within the same clock tick as the read could leave all five
    equal, so a playlist is kept only when both its times were at least ``SETTLED_SECONDS`` old at that read:
    a live playlist, rewritten every segment, is read at every scan. A playlist that could not be read whole
    is never kept, nor one not seen at the last scan.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[tuple[int, int, int, int, int], frozenset[tuple[str, str]]]] = {}
        self._seen: dict[tuple[str, str], tuple[tuple[int, int, int, int, int], frozenset[tuple[str, str]]]] = {}

    def next_scan(self) -> None:
        """Start a scan: what the last one kept may be used; what this one does not see again is forgotten."""
        self._last, self._seen = self._seen, {}

    def get(self, stream: str, name: str, st: os.stat_result) -> frozenset[tuple[str, str]] | None:
        """The (stream directory, file name) pairs the playlist protects, if it is unchanged since it was read."""
        kept = self._last.get((stream, name))
        if kept is None or not stat.S_ISREG(st.st_mode) or kept[0] != _file_key(st):
            return None
        self._seen[(stream, name)] = kept
        return kept[1]

    def put(
        self, stream: str, name: str, st: os.stat_result, pairs: frozenset[tuple[str, str]], now_wall: float
    ) -> None:
        """Keep what a playlist read whole protects, if the file (as statted before the read) had settled."""
        if stat.S_ISREG(st.st_mode) and now_wall - max(st.st_mtime, st.st_ctime) >= SETTLED_SECONDS:
            self._seen[(stream, name)] = (_file_key(st), pairs)


class Walk:
    """One pass over the HLS root: the stream directories opened safely, their playlists, then their files."""

    def __init__(self, root: Path, root_fd: int) -> None:
        self.root = root
        self.root_fd = root_fd
        self.root_dev = os.fstat(root_fd).st_dev
        self.skipped: list[str] = []
        self.loose_files = 0
        self.loose_bytes = 0
        self.loose_unknown: list[str] = []
        self._mounts = mount_points_below(root)

    @contextlib.contextmanager
    def streams(self) -> Iterator[list[Stream]]:
        """Open every real stream directory on the root's device (no links, no mount points); close them after.

        A directory is told apart by the listing's entry type (no ``lstat``); everything else is decided on what
        was opened: a link or a non-directory swapped in since the listing fails the open, and the opened
        directory's own ``fstat`` says whether it is on the root's device.
        """
        opened: list[Stream] = []
        try:
            entries: list[tuple[str, os.stat_result | None]] = []
            with os.scandir(self.root_fd) as it:
                for entry in it:
                    try:
                        # the root's own files need their sizes; a directory (never a link here) needs nothing yet
                        is_dir = entry.is_dir(follow_symlinks=False)
                        entries.append((entry.name, None if is_dir else entry.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        continue  # removed since the listing
            for name, st in entries:
                if st is not None:
                    if stat.S_ISREG(st.st_mode):
                        # files directly in the root are never pruned; anything but a playlist is not MediaMTX's
                        self.loose_files += 1
                        self.loose_bytes += st.st_size
                        if not is_playlist(name):
                            self.loose_unknown.append(name)
                    continue
                if name in self._mounts:
                    self.skipped.append(f"{name} is another file system (a mount point)")
                    continue
                try:
                    fd = os.open(name, DIR_FLAGS, dir_fd=self.root_fd)
                except OSError:
                    continue  # replaced by a link or a file, or removed, since the listing: not ours to touch
                opened_st = os.fstat(fd)
                if opened_st.st_dev != self.root_dev:
                    os.close(fd)
                    self.skipped.append(f"{name} is another file system (a mount point)")
                    continue
                writable = os.access(name, os.W_OK | os.X_OK, dir_fd=self.root_fd)
                opened.append(Stream(name=name, fd=fd, st=opened_st, writable=writable))
            yield opened
        finally:
            for stream in opened:
                os.close(stream.fd)

    def protection(self, streams: list[Stream], stale_age: float, now: float) -> Protection:
        """Read every playlist of every stream directory: what each protects, where, and which streams are live."""
        found = Protection()
        for stream in streams:
            self.add_playlists(found, stream, stale_age, now)
        return found

    def add_playlists(  # noqa: PLR0913 -- one stream directory's playlists, with what the caller already knows
        self,
        found: Protection,
        stream: Stream,
        stale_age: float,
        now: float,
        *,
        names: list[str] | None = None,
        memo: PlaylistMemo | None = None,
    ) -> list[str] | None:
        """Read one stream directory's playlists into ``found``; the playlists' names (None if it cannot be listed).

        ``names``: the playlists' names when the caller knows the directory has not changed since it listed them.
        ``memo``: playlists read before, used again where the file has not changed since (see PlaylistMemo).
        """
        if names is None:
            try:
                with os.scandir(stream.fd) as it:
                    names = [e.name for e in it if is_playlist(e.name)]
            except OSError as exc:
                found.protected[stream.name] = f"cannot list {stream.name}: {exc.strerror}"
                return None
        for name in names:
            try:
                st = os.stat(name, dir_fd=stream.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            pairs = memo.get(stream.name, name, st) if memo is not None else None
            if pairs is None:
                read = read_playlist(name, stream.fd)
                if read.problem is not None:
                    found.protected[stream.name] = read.problem
                    continue
                pairs = frozenset(
                    pair for reference in read.references for pair in resolve_reference(stream.name, reference)
                )
                if memo is not None:
                    memo.put(stream.name, name, st, pairs, now)
            if now - st.st_mtime < stale_age:
                found.live.add(stream.name)
            for directory, file_name in pairs:
                found.references.setdefault(directory, set()).add(file_name)
        return names

    def files(self, stream: Stream) -> Iterator[tuple[str, os.stat_result]]:
        """Every entry of a stream directory with its lstat; entries on another device are reported as such."""
        with os.scandir(stream.fd) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield entry.name, st

    def classify(  # noqa: PLR0913 -- a file's facts from one directory walk
        self, stream: Stream, name: str, st: os.stat_result, view: DirectoryView, *, stale_age: float, now: float
    ) -> KeepReason | None:
        """The keep rule plus the walk's own: a file on another device, or mounted over, is never stale; nor is an
        empty one in a directory the daemon cannot write."""
        if st.st_dev != self.root_dev or f"{stream.name}/{name}" in self._mounts:
            return KeepReason.OTHER_DEVICE
        reason = keep_reason(name, st, view, stale_age, now)
        if reason is None and st.st_size == 0 and not stream.writable:
            # emptied already, and its name cannot be removed here: pruning it again frees nothing
            return KeepReason.EMPTY
        return reason


@dataclass(frozen=True, slots=True, kw_only=True)
class HlsScan:
    """The directory's figures, and what the scan had to leave alone and why."""

    sample: HlsSample
    protected: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


@dataclass(slots=True)
class _Tally:
    """The directory's figures as a scan adds them up, starting from the loose files at the root."""

    bytes: int
    files: int
    unknown: int
    examples: list[str]
    stale: int = 0
    stale_bytes: int = 0
    oldest: float | None = None

    @classmethod
    def of_loose(cls, walk: Walk) -> _Tally:
        """The root's own files, before any stream directory is counted."""
        return cls(
            bytes=walk.loose_bytes,
            files=walk.loose_files,
            unknown=len(walk.loose_unknown),
            examples=walk.loose_unknown[:UNKNOWN_EXAMPLES],
        )

    def age(self, age: float) -> None:
        """A segment this old: the oldest one so far is kept."""
        self.oldest = age if self.oldest is None else max(self.oldest, age)

    def scan(self, streams: int, protection: Protection, walk: Walk) -> HlsScan:
        """The sample and the account of what was left alone."""
        sample = HlsSample(
            bytes=self.bytes,
            files=self.files,
            streams=streams,
            oldest_segment_age_seconds=self.oldest,
            stale_files=self.stale,
            stale_bytes=self.stale_bytes,
            unknown_files=self.unknown,
            unknown_examples=tuple(self.examples),
            protected_directories=len(protection.protected),
        )
        return HlsScan(
            sample=sample,
            protected=tuple(f"{d}: {why}" for d, why in sorted(protection.protected.items())),
            skipped=tuple(walk.skipped),
        )


def walk_hls(
    root: Path,
    stale_age: float,
    now: float,
    visit: Callable[[Stream, str, os.stat_result, KeepReason | None], None] | None = None,
) -> HlsScan:
    """Scan the HLS root (blocking), calling ``visit`` for every file of every stream directory with its verdict."""
    root_fd = open_root(root)
    try:
        walk = Walk(root, root_fd)
        with walk.streams() as streams:
            protection = walk.protection(streams, stale_age, now)
            tally = _Tally.of_loose(walk)
            for stream in streams:
                view = protection.view(stream.name)
                try:
                    entries = walk.files(stream)
                    for name, st in entries:
                        if not stat.S_ISREG(st.st_mode):
                            if not stat.S_ISDIR(st.st_mode):
                                tally.unknown += 1
                            continue
                        reason = walk.classify(stream, name, st, view, stale_age=stale_age, now=now)
                        tally.files += 1
                        tally.bytes += st.st_size
                        if visit is not None:
                            visit(stream, name, st, reason)
                        if reason is KeepReason.UNKNOWN:
                            tally.unknown += 1
                            if len(tally.examples) < UNKNOWN_EXAMPLES:
                                tally.examples.append(f"{stream.name}/{name}")
                        elif not is_playlist(name):
                            tally.age(now - st.st_mtime)
                        if reason is None:
                            tally.stale += 1
                            tally.stale_bytes += st.st_size
                except OSError:
                    continue  # the directory went away while it was read
            return tally.scan(len(streams), protection, walk)
    finally:
        os.close(root_fd)


def scan_hls(root: Path, stale_age: float, now: float) -> HlsScan:
    """Scan the HLS root (blocking); raise SamplingError when it is missing, not a directory, or a link."""
    return walk_hls(root, stale_age, now)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSummary:
    """One stream directory's files as the scan counts them, with what ages them kept apart.

    ``candidates`` are the modification times (sorted) and sizes of the files that the rule calls stale once
    they are old enough, so the stale count at any later moment is a bisection, without reading the directory.
    """

    key: tuple[object, ...]
    walked_at: float
    # the directory had not changed for a while when it was read: an entry added in the same clock tick as
    # the read could leave its times as they were, so a summary read just after a change is not kept
    settled: bool
    files: int
    bytes: int
    unknown: int
    unknown_examples: tuple[str, ...]
    oldest_mtime: float | None
    candidate_mtimes: tuple[float, ...]
    candidate_bytes_before: tuple[int, ...]  # running sums: the bytes of the first i candidates

    def stale(self, cutoff: float) -> tuple[int, int]:
        """Files and bytes modified at or before ``cutoff`` among the candidates."""
        count = bisect.bisect_right(self.candidate_mtimes, cutoff)
        return count, self.candidate_bytes_before[count]


def summarise_stream(  # noqa: PLR0913 -- a stream's facts from one directory walk
    walk: Walk, stream: Stream, view: DirectoryView, *, key: tuple[object, ...], walked_at: float, now_wall: float
) -> StreamSummary:
    """Read one stream directory (one lstat per entry) into a StreamSummary; OSError if it goes away meanwhile."""
    files = total = unknown = 0
    examples: list[str] = []
    oldest: float | None = None
    candidates: list[tuple[float, int]] = []
    for name, st in walk.files(stream):
        if not stat.S_ISREG(st.st_mode):
            if not stat.S_ISDIR(st.st_mode):
                unknown += 1
            continue
        files += 1
        total += st.st_size
        # at an infinitely late moment nothing is fresh: what the rule then calls stale is a candidate
        reason = walk.classify(stream, name, st, view, stale_age=0.0, now=math.inf)
        if reason is KeepReason.UNKNOWN:
            unknown += 1
            if len(examples) < UNKNOWN_EXAMPLES:
                examples.append(f"{stream.name}/{name}")
            continue
        if not is_playlist(name):
            oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
        if reason is None:
            candidates.append((st.st_mtime, st.st_size))
    candidates.sort()
    running = [0]
    for _mtime, size in candidates:
        running.append(running[-1] + size)
    return StreamSummary(
        key=key,
        walked_at=walked_at,
        settled=now_wall - stream.st.st_mtime >= SETTLED_SECONDS,
        files=files,
        bytes=total,
        unknown=unknown,
        unknown_examples=tuple(examples),
        oldest_mtime=oldest,
        candidate_mtimes=tuple(mtime for mtime, _size in candidates),
        candidate_bytes_before=tuple(running),
    )


class HlsReader:
    """Samples the HLS directory and keeps the last scan's account of what it left alone.

    A stream directory whose entries cannot have changed (same inode, modification and change time, same
    playlist view) and where the daemon may unlink (so its own prune never empties a file in place) is not
    read again: its last summary is aged to the present instead. Files are added, removed and renamed only by
    changing their directory's times, so only a file rewritten in place could be missed: every directory is
    read again at least every ``rewalk_seconds``. The cost of a sample is then one stat per stream directory
    and per playlist, not one per file (100,000 files cost 0.7 s a sample otherwise); a playlist is read again
    only when it changed (``PlaylistMemo``).
    """

    name = "hls"

    def __init__(
        self,
        root: Path,
        stale_age_seconds: float,
        *,
        rewalk_seconds: float = REWALK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = root
        self._stale_age = stale_age_seconds
        self._rewalk = rewalk_seconds
        self._clock = clock
        self._streams: dict[str, StreamSummary] = {}
        self._playlists: dict[str, tuple[tuple[int, int, int, int], list[str]]] = {}
        self._playlist_memo = PlaylistMemo()
        self.last_scan: HlsScan | None = None

    @property
    def root(self) -> Path:
        """The configured HLS root."""
        return self._root

    def read(self, now_wall: float) -> HlsSample:
        """Scan once (blocking; run in a worker thread)."""
        scan = self._scan(now_wall)
        self.last_scan = scan
        return scan.sample

    def _scan(self, now: float) -> HlsScan:
        root_fd = open_root(self._root)
        try:
            walk = Walk(self._root, root_fd)
            with walk.streams() as streams:
                protection = self._protection(walk, streams, now)
                summaries = self._summaries(walk, streams, protection, now)
                opened = len(streams)
        finally:
            os.close(root_fd)
        cutoff = now - self._stale_age
        tally = _Tally.of_loose(walk)
        for summary in summaries:
            tally.bytes += summary.bytes
            tally.files += summary.files
            tally.unknown += summary.unknown
            tally.examples.extend(summary.unknown_examples[: max(0, UNKNOWN_EXAMPLES - len(tally.examples))])
            if summary.oldest_mtime is not None:
                tally.age(now - summary.oldest_mtime)
            count, size = summary.stale(cutoff)
            tally.stale += count
            tally.stale_bytes += size
        return tally.scan(opened, protection, walk)

    def _protection(self, walk: Walk, streams: list[Stream], now_wall: float) -> Protection:
        """Every playlist statted, and read again if it changed; the playlists' names listed again only in
        directories that changed."""
        found = Protection()
        known: dict[str, tuple[tuple[int, int, int, int], list[str]]] = {}
        self._playlist_memo.next_scan()
        for stream in streams:
            st = stream.st
            times = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
            kept = self._playlists.get(stream.name)
            names = kept[1] if kept is not None and kept[0] == times else None
            names = walk.add_playlists(found, stream, self._stale_age, now_wall, names=names, memo=self._playlist_memo)
            if names is not None and now_wall - st.st_mtime >= SETTLED_SECONDS:
                known[stream.name] = (times, names)
        self._playlists = known
        return found

    def _summaries(
        self, walk: Walk, streams: list[Stream], protection: Protection, now_wall: float
    ) -> list[StreamSummary]:
        """Each stream directory's summary: the kept one where nothing changed, else read now."""
        now = self._clock()
        kept: dict[str, StreamSummary] = {}
        for stream in streams:
            view = protection.view(stream.name)
            st = stream.st
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, stream.writable, view)
            summary = self._streams.get(stream.name)
            # where the daemon may not unlink, its prune empties files in place, which leaves the directory's
            # times as they were: such a directory is read every time
            if (
                summary is None
                or not stream.writable
                or not summary.settled
                or summary.key != key
                or now - summary.walked_at >= self._rewalk
            ):
                try:
                    summary = summarise_stream(walk, stream, view, key=key, walked_at=now, now_wall=now_wall)
                except OSError:
                    continue  # the directory went away while it was read
            kept[stream.name] = summary
        self._streams = kept
        return list(kept.values())
