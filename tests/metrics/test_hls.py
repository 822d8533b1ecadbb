"""Tests for metrics.hls: the pruning rule on real directory trees with dated files."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from metrics.errors import SamplingError
from metrics.hls import (
    MAX_PLAYLIST_BYTES,
    HlsReader,
    HlsScan,
    KeepReason,
    MountTable,
    is_writing,
    mount_points_below,
    playlist_references,
    resolve_reference,
    scan_hls,
    walk_hls,
)

STALE_AGE = 120.0
OLD = 600.0  # seconds; well past STALE_AGE
LIVE_KEY = "0b7c2a5e-1111-4d4e-9a55-2f1f6c0c0001"
STOPPED_KEY = "0b7c2a5e-2222-4d4e-9a55-2f1f6c0c0002"
LEFTOVER_KEY = "0b7c2a5e-3333-4d4e-9a55-2f1f6c0c0003"


@dataclass(frozen=True, slots=True, kw_only=True)
class Tree:
    """A built HLS root and what the test expects of it."""

    root: Path
    now: float
    stale: frozenset[Path]
    total_bytes: int
    files: int
    outside: Path


def put(path: Path, size: int, age: float, now: float, text: str | None = None) -> int:
    """Write a file of ``size`` bytes (or ``text``) dated ``age`` seconds before ``now``; return its size."""
    data = text.encode() if text is not None else b"\x00" * size
    path.write_bytes(data)
    os.utime(path, (now - age, now - age))
    return len(data)


def media_playlist(init: str, segments: list[str]) -> str:
    """An fMP4 media playlist as MediaMTX writes it."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:9", "#EXT-X-TARGETDURATION:2", f'#EXT-X-MAP:URI="{init}"']
    for name in segments:
        lines += ["#EXTINF:2.00000,", name]
    return "\n".join(lines) + "\n"


def verdicts(root: Path, stale_age: float, now: float) -> dict[Path, KeepReason | None]:
    """Every regular file of every stream directory with the rule's verdict (None: stale)."""
    seen: dict[Path, KeepReason | None] = {}
    walk_hls(
        root, stale_age, now, lambda stream, name, _st, reason: seen.__setitem__(root / stream.name / name, reason)
    )
    return seen


def stale_paths(root: Path, stale_age: float, now: float) -> set[Path]:
    """The files the rule calls stale."""
    return {path for path, reason in verdicts(root, stale_age, now).items() if reason is None}


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """A live stream, a stopped one, one stopped with its playlist left behind, links and loose files."""
    now = time.time()
    root = tmp_path / "mediamtx-live"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "must-survive.mp4"
    put(victim, 999, OLD, now)
    stale: set[Path] = set()
    total = files = 0

    def add(path: Path, size: int, age: float, *, is_stale: bool = False, text: str | None = None) -> None:
        nonlocal total, files
        total += put(path, size, age, now, text)
        files += 1
        if is_stale:
            stale.add(path)

    live = root / LIVE_KEY
    live.mkdir()
    segments = [f"a0a0a0a0a0a0_video_seg{n}.mp4" for n in range(10, 20)]
    add(live / "index.m3u8", 0, 1.0, text="#EXTM3U\nvideo_stream.m3u8\n")
    add(live / "video_stream.m3u8", 0, 1.0, text=media_playlist("a0a0a0a0a0a0_video_init.mp4", segments))
    # the live init was written when the muxer started, long ago, and is referenced
    add(live / "a0a0a0a0a0a0_video_init.mp4", 700, OLD)
    for index, name in enumerate(segments):
        add(live / name, 1000 + index, 2.0 * (10 - index))
    add(live / "a0a0a0a0a0a0_video_seg20.mp4.tmp", 500, OLD)  # being written (old only by clock skew)
    add(live / "a0a0a0a0a0a0_video_seg21.mp4.partial", 501, OLD)
    # a previous muxer run's files: unreferenced; old ones are stale, a young one is not yet
    add(live / "b0b0b0b0b0b0_video_seg3.mp4", 1100, OLD, is_stale=True)
    add(live / "b0b0b0b0b0b0_video_seg4.mp4", 1101, OLD + 5, is_stale=True)
    add(live / "b0b0b0b0b0b0_video_seg5.mp4", 1102, STALE_AGE / 2)
    # an init file in a live stream's directory is never touched, even when unreferenced
    add(live / "b0b0b0b0b0b0_video_init.mp4", 702, OLD)
    link = live / "c0c0c0c0c0c0_video_seg1.mp4"
    link.symlink_to(victim)
    os.utime(link, (now - OLD, now - OLD), follow_symlinks=False)

    stopped = root / STOPPED_KEY
    stopped.mkdir()
    add(stopped / "d0d0d0d0d0d0_video_init.mp4", 703, OLD, is_stale=True)
    for n in range(3):
        add(stopped / f"d0d0d0d0d0d0_video_seg{n}.mp4", 1200 + n, OLD + n, is_stale=True)
    add(stopped / "d0d0d0d0d0d0_video_seg3.mp4.tmp", 600, OLD)

    leftover = root / LEFTOVER_KEY
    leftover.mkdir()
    kept = ["e0e0e0e0e0e0_video_seg7.mp4", "e0e0e0e0e0e0_video_seg8.mp4"]
    add(leftover / "video_stream.m3u8", 0, OLD, text=media_playlist("e0e0e0e0e0e0_video_init.mp4", kept))
    add(leftover / "e0e0e0e0e0e0_video_init.mp4", 704, OLD)
    for n, name in enumerate(kept):
        add(leftover / name, 1300 + n, OLD)
    add(leftover / "e0e0e0e0e0e0_video_seg6.mp4", 1302, OLD, is_stale=True)

    dir_link = root / "link-to-outside"
    dir_link.symlink_to(outside, target_is_directory=True)
    os.utime(dir_link, (now - OLD, now - OLD), follow_symlinks=False)
    add(root / "stray.txt", 42, OLD)  # a loose file at the root is counted, never judged stale
    return Tree(root=root, now=now, stale=frozenset(stale), total_bytes=total, files=files, outside=outside)


def test_stale_files_are_exactly_the_unreferenced_old_ones(tree: Tree) -> None:
    """Only unreferenced, old, finished files in stream directories are stale."""
    scan = scan_hls(tree.root, STALE_AGE, tree.now)
    assert stale_paths(tree.root, STALE_AGE, tree.now) == tree.stale
    assert scan.sample.stale_files == len(tree.stale)
    assert scan.sample.stale_bytes == sum(p.stat().st_size for p in tree.stale)


def test_totals_count_regular_files_and_stream_directories(tree: Tree) -> None:
    """Bytes and files cover every regular file; links add nothing; three stream directories."""
    sample = scan_hls(tree.root, STALE_AGE, tree.now).sample
    assert sample.bytes == tree.total_bytes
    assert sample.files == tree.files
    assert sample.streams == 3


def test_oldest_segment_age_is_reported(tree: Tree) -> None:
    """The oldest non-playlist file's age is the oldest segment age."""
    sample = scan_hls(tree.root, STALE_AGE, tree.now).sample
    assert sample.oldest_segment_age_seconds == pytest.approx(OLD + 5, abs=0.01)


def test_symlinks_are_never_followed_nor_stale(tree: Tree) -> None:
    """Neither a linked directory nor a linked file is scanned, counted or marked stale."""
    paths = stale_paths(tree.root, STALE_AGE, tree.now)
    assert tree.root / LIVE_KEY / "c0c0c0c0c0c0_video_seg1.mp4" not in paths
    assert not any(p.is_symlink() for p in paths)
    assert all(tree.root in p.parents and not p.resolve().is_relative_to(tree.outside) for p in paths)


def test_files_being_written_are_never_stale(tree: Tree) -> None:
    """.tmp and .partial files are kept however old they look."""
    names = {p.name for p in stale_paths(tree.root, STALE_AGE, tree.now)}
    assert not any(is_writing(name) for name in names)
    seg = "a0a0a0a0a0a0_seg3.mp4"
    assert is_writing(f"{seg}.tmp") and is_writing(f"{seg}.partial") and is_writing(f"{seg}.part")
    assert not is_writing(seg) and not is_writing("notes.tmp")


def test_a_larger_age_leaves_nothing_stale(tree: Tree) -> None:
    """With a stale age above every file's age, nothing is stale."""
    assert scan_hls(tree.root, OLD * 10, tree.now).sample.stale_files == 0


def test_empty_root_gives_zeros(tmp_path: Path) -> None:
    """An empty HLS root is a valid sample with no files, streams or oldest age."""
    sample = scan_hls(tmp_path, STALE_AGE, time.time()).sample
    assert (sample.bytes, sample.files, sample.streams, sample.stale_files) == (0, 0, 0, 0)
    assert sample.oldest_segment_age_seconds is None


def test_missing_root_is_a_sampling_error(tmp_path: Path) -> None:
    """A root that does not exist raises SamplingError naming it."""
    with pytest.raises(SamplingError, match="does not exist"):
        scan_hls(tmp_path / "absent", STALE_AGE, time.time())


def test_root_that_is_a_symlink_is_refused(tree: Tree, tmp_path: Path) -> None:
    """A root that is itself a symbolic link is refused, not followed."""
    link = tmp_path / "link-root"
    link.symlink_to(tree.root, target_is_directory=True)
    with pytest.raises(SamplingError, match="symbolic link"):
        scan_hls(link, STALE_AGE, tree.now)


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    """A root that is a regular file raises SamplingError."""
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(SamplingError, match="not a directory"):
        scan_hls(path, STALE_AGE, time.time())


def test_reader_keeps_the_last_scan(tree: Tree) -> None:
    """HlsReader returns the sample and keeps the last scan's account of what it left alone."""
    reader = HlsReader(tree.root, STALE_AGE)
    before = reader.last_scan
    assert before is None
    sample = reader.read(tree.now)
    assert reader.root == tree.root
    assert reader.last_scan is not None
    assert reader.last_scan.sample == sample
    assert reader.last_scan.protected == ()


def test_playlist_references_reads_uris_and_segment_lines() -> None:
    """Segment lines and URI= attributes count, as written but without query strings; tags do not."""
    text = (
        "#EXTM3U\n"
        '#EXT-X-MAP:URI="sub/init.mp4?x=1"\n'
        "#EXTINF:2.0,\n"
        "seg1.mp4?token=abc\n"
        "\n"
        "  http://host/path/seg2.mp4  \n"
        '#EXT-X-PART:DURATION=0.5,URI="part3.mp4"\n'
    )
    assert playlist_references(text) == {"sub/init.mp4", "seg1.mp4", "http://host/path/seg2.mp4", "part3.mp4"}


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("x_seg1.ts", {("camA", "x_seg1.ts")}),
        ("./x_seg1.ts", {("camA", "x_seg1.ts")}),
        ("../camB/x_seg1.ts", {("camB", "x_seg1.ts")}),
        ("../camB/../camC/x_seg1.ts", {("camC", "x_seg1.ts")}),
        ("../../etc/passwd", set()),
        ("sub/x_seg1.ts", set()),
        ("/hls/camB/x_seg1.ts", {("camA", "x_seg1.ts"), ("camB", "x_seg1.ts")}),
        ("http://host:8888/camB/x_seg1.ts", {("camA", "x_seg1.ts"), ("camB", "x_seg1.ts")}),
        ("x%5Fseg1.ts", {("camA", "x_seg1.ts")}),
    ],
)
def test_references_resolve_from_the_playlists_directory(reference: str, expected: set[tuple[str, str]]) -> None:
    """Relative references resolve from the playlist's directory; absolute ones protect in both candidate places."""
    assert resolve_reference("camA", reference) == expected


def test_files_mediamtx_does_not_write_are_unknown_never_stale(tmp_path: Path) -> None:
    """Old, unreferenced files with other names are counted as unknown (with a few names), never stale."""
    now = time.time()
    root = tmp_path / "hls"
    (root / "cam").mkdir(parents=True)
    for name in ("cctv.db", "cctv.db-wal", "admin-password", "index.html"):
        put(root / "cam" / name, 10, OLD, now)
    put(root / "cam" / "a0a0a0a0a0a0_seg1.ts", 10, OLD, now)
    put(root / "loose.pid", 3, OLD, now)
    sample = scan_hls(root, STALE_AGE, now).sample
    assert (sample.stale_files, sample.unknown_files) == (1, 5)
    assert set(sample.unknown_examples) <= {"loose.pid", "cam/cctv.db", "cam/cctv.db-wal", "cam/admin-password"} | {
        "cam/index.html"
    }
    assert len(sample.unknown_examples) == 5
    assert verdicts(root, STALE_AGE, now)[root / "cam" / "cctv.db"] is KeepReason.UNKNOWN


def scan_in_thread(root: Path, now: float) -> HlsScan | BaseException:
    """Scan in a thread and give up after a while: a scan that hangs must fail the test, not block it."""
    box: list[HlsScan | BaseException] = []

    def target() -> None:
        try:
            box.append(scan_hls(root, STALE_AGE, now))
        except BaseException as exc:
            box.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert box, "the scan hung"
    return box[0]


@pytest.mark.parametrize("kind", ["fifo", "link-to-fifo", "link-to-file"])
def test_a_playlist_that_is_no_regular_file_never_hangs_and_protects_its_directory(tmp_path: Path, kind: str) -> None:
    """A playlist swapped for a FIFO or a link (to a FIFO) is not opened through: the scan finishes at once and
    keeps that directory's files; the source stays truthful instead of hanging behind an ok /health."""
    now = time.time()
    root = tmp_path / "hls"
    cam = root / "cam"
    cam.mkdir(parents=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "real.m3u8"
    put(target, 0, 1.0, now, text="#EXTM3U\n")
    playlist = cam / "stream.m3u8"
    if kind == "fifo":
        os.mkfifo(playlist)
    else:
        playlist.symlink_to(fifo if kind == "link-to-fifo" else target)
    put(cam / "a0a0a0a0a0a0_seg1.ts", 10, OLD, now)
    result = scan_in_thread(root, now)
    assert isinstance(result, HlsScan)
    assert result.sample.stale_files == 0 and result.sample.protected_directories == 1
    assert "stream.m3u8" in result.protected[0]


def test_a_huge_playlist_is_never_read_into_memory(tmp_path: Path) -> None:
    """A 300 MB playlist (sparse, so it costs no disk) is judged by its size: the scan allocates well under 1 MiB
    for it, instead of the 600 MB the old read_text() took, and its directory is protected."""
    now = time.time()
    root = tmp_path / "hls"
    cam = root / "cam"
    cam.mkdir(parents=True)
    with (cam / "stream.m3u8").open("wb") as fh:
        fh.write(b"#EXTM3U\n")
        fh.truncate(300 * 1024 * 1024)
    put(cam / "a0a0a0a0a0a0_seg1.ts", 10, OLD, now)
    tracemalloc.start()
    try:
        sample = scan_hls(root, STALE_AGE, now).sample
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_PLAYLIST_BYTES
    assert (sample.stale_files, sample.protected_directories) == (0, 1)


def test_a_playlist_just_over_the_bound_protects_what_its_tail_names(tmp_path: Path) -> None:
    """Read in full up to the bound; one byte more and the directory is protected rather than its tail pruned."""
    now = time.time()
    root = tmp_path / "hls"
    cam = root / "cam"
    cam.mkdir(parents=True)
    head = "#EXTM3U\n#EXTINF:2,\n"
    tail = "a0a0a0a0a0a0_seg9.ts\n"
    put(cam / "a0a0a0a0a0a0_seg9.ts", 10, OLD, now)
    put(cam / "a0a0a0a0a0a0_seg8.ts", 10, OLD, now)
    padding = "#" * (MAX_PLAYLIST_BYTES - len(head) - len(tail) - 1) + "\n"
    put(cam / "stream.m3u8", 0, 1.0, now, text=head.replace("#EXTINF:2,\n", padding + "#EXTINF:2,\n") + tail)
    at_bound = scan_hls(root, STALE_AGE, now).sample
    assert (cam / "stream.m3u8").stat().st_size == MAX_PLAYLIST_BYTES
    assert (at_bound.stale_files, at_bound.protected_directories) == (1, 0)  # seg9 referenced, seg8 stale
    put(cam / "stream.m3u8", 0, 1.0, now, text="#" + (cam / "stream.m3u8").read_text())
    over = scan_hls(root, STALE_AGE, now).sample
    assert (over.stale_files, over.protected_directories) == (0, 1)


def settled_tree(root: Path, now: float) -> None:
    """Two stream directories unchanged for ten minutes: one live-ish with a playlist, one stopped."""
    live = root / "camA"
    stopped = root / "camB"
    live.mkdir(parents=True)
    stopped.mkdir()
    names = [f"0a1b2c3d4e5f_seg{n}.mp4" for n in range(30)]
    for n, name in enumerate(names):
        put(live / name, 100 + n, OLD - n, now)
    put(live / "0a1b2c3d4e5f_init.mp4", 50, OLD, now)
    put(live / "fresh_0a1b2c3d4e5f", 7, 10, now)  # not MediaMTX's: an unknown file
    put(live / "index.m3u8", 0, 5, now, text=media_playlist("0a1b2c3d4e5f_init.mp4", names[-3:]))
    for n in range(20):
        put(stopped / f"ffffffffffff_seg{n}.mp4", 200, 30 + n, now)  # fresh now, stale in STALE_AGE
    for directory in (live, stopped, root):
        os.utime(directory, (now - OLD, now - OLD))


def test_reader_does_not_read_unchanged_stream_directories_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second sample of an unchanged HLS root lists no stream directory again, and says what a full scan says."""
    from metrics import hls

    now = time.time()
    settled_tree(tmp_path / "hls", now)
    listed: list[str] = []
    files = hls.Walk.files

    def counting(self: hls.Walk, stream: hls.Stream) -> Any:
        listed.append(stream.name)
        return files(self, stream)

    monkeypatch.setattr(hls.Walk, "files", counting)
    scans: list[str] = []
    scandir = os.scandir

    def counting_scandir(path: Any) -> Any:
        scans.append(str(path))
        return scandir(path)

    reader = HlsReader(tmp_path / "hls", STALE_AGE)
    assert reader.read(now) == walk_hls(tmp_path / "hls", STALE_AGE, now).sample
    listed.clear()
    monkeypatch.setattr("metrics.hls.os.scandir", counting_scandir)
    later = now + 1.0
    assert reader.read(later) == scan_hls(tmp_path / "hls", STALE_AGE, later).sample
    # what the reader listed: the root only, neither stream directory for its files nor for its playlists;
    # the full scan (its own root, two directories for playlists, two for files) comes after it
    assert len(scans) == 1 + 1 + 2 + 2, scans
    assert listed.count("camA") == listed.count("camB") == 1


def test_reader_follows_changes_and_ageing_like_a_full_scan(tmp_path: Path) -> None:
    """Files added and removed, files ageing past the stale age, and files rewritten in place all show."""
    now = time.time()
    root = tmp_path / "hls"
    settled_tree(root, now)
    clock = [1000.0]
    reader = HlsReader(root, STALE_AGE, clock=lambda: clock[0])

    def agrees(at: float) -> None:
        assert reader.read(at) == scan_hls(root, STALE_AGE, at).sample

    agrees(now)
    agrees(now + STALE_AGE + 60)  # camB's segments have aged past the stale age, camB unchanged
    put(root / "camB" / "ffffffffffff_seg99.mp4", 300, OLD, now)  # added: camB's times change
    agrees(now + 1)
    for name in ("0a1b2c3d4e5f_seg0.mp4", "0a1b2c3d4e5f_seg1.mp4"):
        (root / "camA" / name).unlink()  # pruned
    agrees(now + 2)
    for directory in (root / "camA", root / "camB"):
        os.utime(directory, (now - OLD, now - OLD))
    agrees(now + 3)
    with (root / "camB" / "ffffffffffff_seg0.mp4").open("ab") as grown:
        grown.write(b"\0" * 1000)  # rewritten in place: its directory's times stay
    os.utime(root / "camB", (now - OLD, now - OLD))
    clock[0] += 61.0  # past the re-read interval
    agrees(now + 4)


def counting_playlist_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every playlist the HLS code opens and reads from now on."""
    from metrics import hls

    reads: list[str] = []
    real = hls.read_playlist

    def counting(name: str, dir_fd: int, limit: int = MAX_PLAYLIST_BYTES) -> Any:
        reads.append(name)
        return real(name, dir_fd, limit)

    monkeypatch.setattr(hls, "read_playlist", counting)
    return reads


def test_reader_reads_an_unchanged_settled_playlist_only_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A playlist unchanged since a read made when it had settled is not opened again; the samples stay exact."""
    root = tmp_path / "hls"
    now = time.time()
    settled_tree(root, now)
    reads = counting_playlist_reads(monkeypatch)
    reader = HlsReader(root, STALE_AGE)
    later = now + 10.0  # the playlist's times (its change time is now) are settled by then
    assert reader.read(later) == scan_hls(root, STALE_AGE, later).sample
    reads.clear()
    assert reader.read(later + 1) == walk_hls(root, STALE_AGE, later + 1).sample
    # the full walk above reads it; the reader did not
    assert reads == ["index.m3u8"]


def test_reader_reads_a_playlist_again_when_it_changed_or_had_not_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rewrite of the same size with its modification time set back still shows (its change time moved); a
    playlist read while it was fresh is read again at the next scan."""
    root = tmp_path / "hls"
    now = time.time()
    settled_tree(root, now)
    playlist = root / "camA" / "index.m3u8"
    reads = counting_playlist_reads(monkeypatch)
    reader = HlsReader(root, STALE_AGE)
    # read just after it was written (its change time is now): not kept, read again
    assert reader.read(now) == scan_hls(root, STALE_AGE, now).sample
    reads.clear()
    before = reader.read(now + 10.0)
    assert reads == ["index.m3u8"]
    segments = [f"0a1b2c3d4e5f_seg{n}.mp4" for n in (27, 28, 29)]
    same_size = media_playlist("0a1b2c3d4e5f_init.mp4", [segments[0], segments[0], segments[2]])
    assert len(same_size) == playlist.stat().st_size
    st = playlist.stat()
    playlist.write_text(same_size)
    os.utime(playlist, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = reader.read(now + 11.0)
    assert after == scan_hls(root, STALE_AGE, now + 11.0).sample
    assert after.stale_files == before.stale_files + 1  # seg28 is no longer referenced
    # replaced by something that cannot be read: the directory is protected at once, not served from memory
    playlist.unlink()
    os.mkfifo(playlist)
    assert reader.read(now + 12.0) == scan_hls(root, STALE_AGE, now + 12.0).sample
    assert reader.read(now + 12.0).protected_directories == 1


def test_a_mount_made_or_removed_inside_the_root_is_seen_at_the_next_walk(tmp_path: Path) -> None:
    """The mount table is kept between walks; a bind mount inside the root, and its removal, still show at once."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    root, outside = tmp_path / "hls", tmp_path / "recordings"
    (root / "mounted").mkdir(parents=True)
    outside.mkdir()
    table = MountTable()
    try:
        assert mount_points_below(root, table) == frozenset()
        done = subprocess.run(["mount", "--bind", str(outside), str(root / "mounted")], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
        try:
            assert mount_points_below(root, table) == frozenset({"mounted"})
            assert mount_points_below(root, table) == frozenset({"mounted"})
        finally:
            subprocess.run(["umount", str(root / "mounted")], capture_output=True, check=False)
        assert mount_points_below(root, table) == frozenset()
    finally:
        table.close()


def test_a_mount_table_that_cannot_be_read_lists_no_mounts(tmp_path: Path) -> None:
    """A missing mountinfo reads as empty (as before it was kept open), and says so at every call."""
    table = MountTable(tmp_path / "no-mountinfo")
    assert table.text() == ""
    assert mount_points_below(tmp_path, table) == frozenset()
