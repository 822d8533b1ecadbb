"""Scan MediaMTX's HLS directory: bytes, files, streams, and which files are stale by TARGET.md's rule.

A file is stale when no current playlist in its directory references it and it is older than the
configured age. Playlists, init segments of live streams and files being written are never stale.
Symbolic links are never followed: not the root, not a stream directory, not a file.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from metrics.errors import SamplingError
from metrics.snapshot import HlsSample

_URI_ATTR = re.compile(r'URI="([^"]+)"')
_WRITING_SUFFIXES = (".tmp", ".partial", ".part")


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleFile:
    """A file the pruning rule allows to delete, with what it looked like when found."""

    path: Path
    size: int
    mtime: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HlsScan:
    """The directory's figures and its stale files."""

    sample: HlsSample
    stale: tuple[StaleFile, ...]


def playlist_references(text: str) -> set[str]:
    """Names of the files a playlist refers to (segment lines and URI= attributes), base names only."""
    refs: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            refs.update(os.path.basename(m.split("?")[0]) for m in _URI_ATTR.findall(line))
        else:
            refs.add(os.path.basename(line.split("?")[0]))
    return refs


def is_writing(name: str) -> bool:
    """Files still being written carry a temporary suffix."""
    return name.endswith(_WRITING_SUFFIXES)


class KeepReason(StrEnum):
    """Why TARGET.md's rule keeps a file (the scan counts it as not stale; the prune leaves it in place)."""

    PLAYLIST = "playlist"
    WRITING = "being_written"
    REFERENCED = "referenced"
    FRESH = "fresh"
    LIVE_INIT = "live_init"
    NOT_REGULAR = "not_a_regular_file"


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryView:
    """A stream directory's playlists as read now: the names they reference and whether one is live."""

    references: frozenset[str]
    live: bool


def keep_reason(name: str, st: os.stat_result, view: DirectoryView, stale_age: float, now: float) -> KeepReason | None:
    """Why TARGET.md's rule keeps this file, or None when it is stale (from an lstat result)."""
    if not stat.S_ISREG(st.st_mode):
        return KeepReason.NOT_REGULAR
    if name.endswith(".m3u8"):
        return KeepReason.PLAYLIST
    if is_writing(name):
        return KeepReason.WRITING
    if name in view.references:
        return KeepReason.REFERENCED
    if now - st.st_mtime < stale_age:
        return KeepReason.FRESH
    if view.live and "init" in name:
        return KeepReason.LIVE_INIT
    return None


def stream_stale_files(directory: Path, stale_age: float, now: float) -> tuple[list[StaleFile], int, int, float]:
    """Scan one stream directory: (stale files, bytes, file count, oldest segment age)."""
    files: list[tuple[str, os.stat_result]] = []
    refs: set[str] = set()
    live = False
    with os.scandir(directory) as it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            files.append((entry.name, st))
            if entry.name.endswith(".m3u8"):
                try:
                    refs |= playlist_references(Path(entry.path).read_text(encoding="utf-8", errors="replace"))
                except OSError:
                    continue
                if now - st.st_mtime < stale_age:
                    live = True
    view = DirectoryView(references=frozenset(refs), live=live)
    stale: list[StaleFile] = []
    total = 0
    oldest = 0.0
    for name, st in files:
        total += st.st_size
        if name.endswith(".m3u8"):
            continue
        oldest = max(oldest, now - st.st_mtime)
        if keep_reason(name, st, view, stale_age, now) is None:
            stale.append(StaleFile(path=directory / name, size=st.st_size, mtime=st.st_mtime))
    return stale, total, len(files), oldest


def scan_hls(root: Path, stale_age: float, now: float) -> HlsScan:
    """Scan the HLS root (blocking); raise SamplingError when it is missing, not a directory, or a link."""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise SamplingError(f"HLS directory {root} does not exist") from None
    except OSError as exc:
        raise SamplingError(f"HLS directory {root}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise SamplingError(f"HLS directory {root} is a symbolic link; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise SamplingError(f"HLS directory {root} is not a directory")
    stale: list[StaleFile] = []
    total = files = streams = 0
    oldest: float | None = None
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise SamplingError(f"HLS directory {root}: {exc.strerror}") from None
    for entry in entries:
        try:
            est = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(est.st_mode):
            try:
                s, b, n, o = stream_stale_files(Path(entry.path), stale_age, now)
            except OSError:
                continue
            streams += 1
            stale.extend(s)
            total += b
            files += n
            if n:
                oldest = o if oldest is None else max(oldest, o)
        elif stat.S_ISREG(est.st_mode):
            total += est.st_size
            files += 1
    sample = HlsSample(
        bytes=total,
        files=files,
        streams=streams,
        oldest_segment_age_seconds=oldest,
        stale_files=len(stale),
        stale_bytes=sum(f.size for f in stale),
    )
    return HlsScan(sample=sample, stale=tuple(stale))


class HlsReader:
    """Samples the HLS directory and keeps the last list of stale files for the memory strategy."""

    name = "hls"

    def __init__(self, root: Path, stale_age_seconds: float) -> None:
        self._root = root
        self._stale_age = stale_age_seconds
        self.last_scan: HlsScan | None = None

    @property
    def root(self) -> Path:
        """The configured HLS root."""
        return self._root

    def read(self, now_wall: float) -> HlsSample:
        """Scan once (blocking; run in a worker thread)."""
        scan = scan_hls(self._root, self._stale_age, now_wall)
        self.last_scan = scan
        return scan.sample
