"""A fake MediaMTX HLS muxer writing fMP4 segments into the HLS directory.

File naming imitates MediaMTX 1.9 (gohlslib) with `hlsDirectory` set, one directory per
stream path (the camera's stream_key):

- `index.m3u8`                      multivariant playlist, points at the media playlist
- `video_stream.m3u8`               media playlist: the last `segment_count` segments
- `<prefix>_video_init.mp4`         init segment (`<prefix>` is 12 random hex characters per muxer run)
- `<prefix>_video_seg<N>.mp4`       numbered media segments
- `<prefix>_video_seg<N>.mp4.tmp`   the segment being written; renamed to its final name when complete

MediaMTX itself serves playlists from memory; the stand-in also writes them to disk so a
pruner can tell referenced files from stale ones (the pruner's rule). Rotated-out segments
are deleted by the writer, as MediaMTX does. A new muxer run (after `mediamtx_up`) starts
with a new prefix, so the previous run's files are left unreferenced, as after an unclean
MediaMTX restart.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

MULTIVARIANT = "index.m3u8"
MEDIA_PLAYLIST = "video_stream.m3u8"
TEMP_SUFFIX = ".tmp"
_URI_ATTR = re.compile(r'URI="([^"]+)"')


def _box(kind: bytes, payload: bytes) -> bytes:
    """One ISO BMFF box."""
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def init_segment_bytes() -> bytes:
    """A small init segment: ftyp plus an (empty) moov."""
    ftyp = _box(b"ftyp", b"iso5" + struct.pack(">I", 512) + b"iso5iso6mp41")
    return ftyp + _box(b"moov", _box(b"mvhd", bytes(100)))


def media_segment_head(sequence: int) -> bytes:
    """Start of a media segment: moof with its sequence number."""
    return _box(b"moof", _box(b"mfhd", struct.pack(">II", 0, sequence)))


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, then rename over `path`."""
    temp = path.with_name(path.name + TEMP_SUFFIX)
    temp.write_bytes(data)
    os.replace(temp, path)


def playlist_references(directory: Path) -> set[str]:
    """File names referenced by any playlist in `directory` (URIs and URI="..." attributes)."""
    names: set[str] = set()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return names
    for entry in entries:
        if not entry.name.endswith(".m3u8") or not entry.is_file(follow_symlinks=False):
            continue
        try:
            text = Path(entry.path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if not line:
                continue
            if line.startswith("#"):
                names.update(os.path.basename(uri) for uri in _URI_ATTR.findall(line))
            else:
                names.add(os.path.basename(line.split("?", 1)[0]))
    return names


@dataclass(frozen=True, slots=True, kw_only=True)
class HlsScan:
    """Figures of the HLS tree, computed without following symbolic links."""

    total_bytes: int
    files: int
    stale_files: int
    stale_bytes: int


def scan_hls(root: Path, *, stale_age_seconds: float, now: float | None = None) -> HlsScan:
    """Count files and stale files (unreferenced by their directory's playlists and old enough)."""
    current = time.time() if now is None else now
    total = files = stale = stale_bytes = 0
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        referenced = playlist_references(directory)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
                continue
            if not entry.is_file(follow_symlinks=False):
                continue  # symlinks and specials: never counted, never followed
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += info.st_size
            files += 1
            name = entry.name
            if name.endswith(".m3u8") or name.endswith(TEMP_SUFFIX) or name in referenced:
                continue
            if info.st_mtime < current - stale_age_seconds:
                stale += 1
                stale_bytes += info.st_size
    return HlsScan(total_bytes=total, files=files, stale_files=stale, stale_bytes=stale_bytes)


@dataclass(slots=True)
class _Segment:
    """A finished segment as listed in the media playlist."""

    name: str
    started: float


@dataclass(slots=True)
class _Muxer:
    """State of one stream's muxer run."""

    stream_key: str
    directory: Path
    prefix: str
    next_id: int = 0
    deleted: int = 0
    segments: deque[_Segment] = field(default_factory=deque)
    pending: str | None = None
    pending_started: float = 0.0

    @property
    def init_name(self) -> str:
        """Init segment file name."""
        return f"{self.prefix}_video_init.mp4"

    def segment_name(self, number: int) -> str:
        """File name of segment `number`."""
        return f"{self.prefix}_video_seg{number}.mp4"


class HlsWriter:
    """Writes a new segment per live stream every `segment_seconds` and rotates old ones out."""

    def __init__(self, root: Path, *, segment_seconds: float, segment_count: int, segment_bytes: int) -> None:
        """Nothing is written until streams are set and the writer runs."""
        self.root = root
        self.segment_seconds = segment_seconds
        self.segment_count = segment_count
        self.segment_bytes = segment_bytes
        self._muxers: dict[str, _Muxer] = {}
        self._wanted: list[str] = []
        self._paused = False
        self._lock = threading.Lock()
        # Read from the event loop without taking the lock a tick may hold for a while.
        self._live: tuple[str, ...] = ()
        self.bytes_written: dict[str, int] = {}
        self.ready_since: dict[str, str] = {}

    def live_keys(self) -> list[str]:
        """Stream keys with a running muxer."""
        return list(self._live)

    def set_streams(self, stream_keys: Iterable[str]) -> None:
        """Declare which streams are live; muxers start on the next tick."""
        with self._lock:
            self._wanted = list(stream_keys)

    def pause(self) -> None:
        """Stop every muxer, leaving finished files behind (MediaMTX stopped uncleanly)."""
        with self._lock:
            self._paused = True
            for muxer in self._muxers.values():
                self._drop_pending(muxer)
            self._muxers.clear()
            self._live = ()
            self.ready_since.clear()

    def resume(self) -> None:
        """Start fresh muxer runs (new prefixes) on the next tick."""
        with self._lock:
            self._paused = False

    def tick(self) -> None:
        """Advance every live stream by one segment (blocking file I/O)."""
        with self._lock:
            if self._paused:
                return
            self.root.mkdir(parents=True, exist_ok=True)
            for key in [key for key in self._muxers if key not in self._wanted]:
                self._drop_pending(self._muxers.pop(key))
                self.ready_since.pop(key, None)
            for key in self._wanted:
                muxer = self._muxers.get(key)
                if muxer is None:
                    self._muxers[key] = self._start(key)
                else:
                    self._advance(muxer)
            self._live = tuple(self._muxers)

    def remove_orphans(self) -> int:
        """Delete files an earlier muxer run left in the live directories; return how many."""
        removed = 0
        with self._lock:
            for muxer in self._muxers.values():
                for entry in os.scandir(muxer.directory):
                    name = entry.name
                    if name.endswith(".m3u8") or name.startswith(muxer.prefix + "_"):
                        continue
                    if entry.is_file(follow_symlinks=False):
                        os.unlink(entry.path)
                        removed += 1
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        """Tick on a fixed schedule until `stop` is set."""
        deadline = time.monotonic()
        while not stop.is_set():
            await asyncio.to_thread(self.tick)
            deadline += self.segment_seconds
            delay = deadline - time.monotonic()
            if delay < 0:
                # Fell behind (slow disk or a stopped process): resynchronise instead of bursting.
                deadline = time.monotonic()
                delay = 0.0
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                continue

    def _start(self, key: str) -> _Muxer:
        """Begin a muxer run: init segment, a first finished segment, playlists, a pending segment."""
        directory = self.root / key
        # MediaMTX creates each stream directory with os.MkdirAll(dir, 0o755): no group write, whatever the umask
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        muxer = _Muxer(stream_key=key, directory=directory, prefix=secrets.token_hex(6))
        write_atomic(directory / muxer.init_name, init_segment_bytes())
        self.ready_since[key] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self._begin_pending(muxer, started=time.time() - self.segment_seconds)
        self._advance(muxer)
        return muxer

    def _advance(self, muxer: _Muxer) -> None:
        """Finish the pending segment, publish it, delete the rotated-out one, begin the next."""
        if muxer.pending is not None:
            temp = muxer.directory / (muxer.pending + TEMP_SUFFIX)
            rest = self.segment_bytes - self.segment_bytes // 2
            with temp.open("ab") as handle:
                handle.write(b"\x00" * rest)
            os.replace(temp, muxer.directory / muxer.pending)
            muxer.segments.append(_Segment(name=muxer.pending, started=muxer.pending_started))
            self.bytes_written[muxer.stream_key] = self.bytes_written.get(muxer.stream_key, 0) + self.segment_bytes
            muxer.pending = None
        while len(muxer.segments) > self.segment_count:
            old = muxer.segments.popleft()
            muxer.deleted += 1
            (muxer.directory / old.name).unlink(missing_ok=True)
        self._write_playlists(muxer)
        self._begin_pending(muxer, started=time.time())

    def _begin_pending(self, muxer: _Muxer, *, started: float) -> None:
        """Create the next segment under its temporary name, half written."""
        name = muxer.segment_name(muxer.next_id)
        muxer.next_id += 1
        head = media_segment_head(muxer.next_id)
        body = struct.pack(">I", 8 + self.segment_bytes) + b"mdat"
        data = head + body + b"\x00" * max(0, self.segment_bytes // 2 - len(head) - len(body))
        (muxer.directory / (name + TEMP_SUFFIX)).write_bytes(data)
        muxer.pending = name
        muxer.pending_started = started

    def _drop_pending(self, muxer: _Muxer) -> None:
        """Remove a half-written segment."""
        if muxer.pending is not None:
            (muxer.directory / (muxer.pending + TEMP_SUFFIX)).unlink(missing_ok=True)
            muxer.pending = None

    def _write_playlists(self, muxer: _Muxer) -> None:
        """Rewrite the multivariant and media playlists of a muxer."""
        seconds = self.segment_seconds
        bandwidth = int(8 * self.segment_bytes / seconds)
        multivariant = (
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n\n"
            f'#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},AVERAGE-BANDWIDTH={bandwidth},CODECS="avc1.64001f",'
            f"RESOLUTION=1280x720,FRAME-RATE=25.000\n{MEDIA_PLAYLIST}\n"
        )
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:9",
            f"#EXT-X-TARGETDURATION:{max(1, math.ceil(seconds))}",
            f"#EXT-X-MEDIA-SEQUENCE:{muxer.deleted}",
            f'#EXT-X-MAP:URI="{muxer.init_name}"',
        ]
        count = len(muxer.segments)
        for index, segment in enumerate(muxer.segments):
            if count - index <= 2:
                stamp = datetime.fromtimestamp(segment.started, UTC).isoformat(timespec="milliseconds")
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{stamp.replace('+00:00', 'Z')}")
            lines.append(f"#EXTINF:{seconds:.5f},")
            lines.append(segment.name)
        write_atomic(muxer.directory / MEDIA_PLAYLIST, ("\n".join(lines) + "\n").encode())
        write_atomic(muxer.directory / MULTIVARIANT, multivariant.encode())
