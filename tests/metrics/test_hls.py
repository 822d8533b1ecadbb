"""Tests for metrics.hls: the pruning rule on real directory trees with dated files."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from metrics.errors import SamplingError
from metrics.hls import HlsReader, is_writing, playlist_references, scan_hls

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
    segments = [f"aaaa_video_seg{n}.mp4" for n in range(10, 20)]
    add(live / "index.m3u8", 0, 1.0, text="#EXTM3U\nvideo_stream.m3u8\n")
    add(live / "video_stream.m3u8", 0, 1.0, text=media_playlist("aaaa_video_init.mp4", segments))
    # the live init was written when the muxer started, long ago, and is referenced
    add(live / "aaaa_video_init.mp4", 700, OLD)
    for index, name in enumerate(segments):
        add(live / name, 1000 + index, 2.0 * (10 - index))
    add(live / "aaaa_video_seg20.mp4.tmp", 500, OLD)  # being written (old only by clock skew)
    add(live / "aaaa_video_seg21.mp4.partial", 501, OLD)
    # a previous muxer run's files: unreferenced; old ones are stale, a young one is not yet
    add(live / "bbbb_video_seg3.mp4", 1100, OLD, is_stale=True)
    add(live / "bbbb_video_seg4.mp4", 1101, OLD + 5, is_stale=True)
    add(live / "bbbb_video_seg5.mp4", 1102, STALE_AGE / 2)
    # an init file in a live stream's directory is never touched, even when unreferenced
    add(live / "bbbb_video_init.mp4", 702, OLD)
    link = live / "cccc_video_seg1.mp4"
    link.symlink_to(victim)
    os.utime(link, (now - OLD, now - OLD), follow_symlinks=False)

    stopped = root / STOPPED_KEY
    stopped.mkdir()
    add(stopped / "dddd_video_init.mp4", 703, OLD, is_stale=True)
    for n in range(3):
        add(stopped / f"dddd_video_seg{n}.mp4", 1200 + n, OLD + n, is_stale=True)
    add(stopped / "dddd_video_seg3.mp4.tmp", 600, OLD)

    leftover = root / LEFTOVER_KEY
    leftover.mkdir()
    kept = ["eeee_video_seg7.mp4", "eeee_video_seg8.mp4"]
    add(leftover / "video_stream.m3u8", 0, OLD, text=media_playlist("eeee_video_init.mp4", kept))
    add(leftover / "eeee_video_init.mp4", 704, OLD)
    for n, name in enumerate(kept):
        add(leftover / name, 1300 + n, OLD)
    add(leftover / "eeee_video_seg6.mp4", 1302, OLD, is_stale=True)

    dir_link = root / "link-to-outside"
    dir_link.symlink_to(outside, target_is_directory=True)
    os.utime(dir_link, (now - OLD, now - OLD), follow_symlinks=False)
    add(root / "stray.txt", 42, OLD)  # a loose file at the root is counted, never judged stale
    return Tree(root=root, now=now, stale=frozenset(stale), total_bytes=total, files=files, outside=outside)


def test_stale_files_are_exactly_the_unreferenced_old_ones(tree: Tree) -> None:
    """Only unreferenced, old, finished files in stream directories are stale."""
    scan = scan_hls(tree.root, STALE_AGE, tree.now)
    assert {f.path for f in scan.stale} == tree.stale
    assert scan.sample.stale_files == len(tree.stale)
    assert scan.sample.stale_bytes == sum(p.stat().st_size for p in tree.stale)


def test_stale_entries_carry_size_and_mtime(tree: Tree) -> None:
    """Each stale file records the size and mtime it had when found, for a re-check before deleting."""
    scan = scan_hls(tree.root, STALE_AGE, tree.now)
    for found in scan.stale:
        st = os.lstat(found.path)
        assert (found.size, found.mtime) == (st.st_size, st.st_mtime)


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
    scan = scan_hls(tree.root, STALE_AGE, tree.now)
    paths = {f.path for f in scan.stale}
    assert tree.root / LIVE_KEY / "cccc_video_seg1.mp4" not in paths
    assert not any(p.is_symlink() for p in paths)
    assert all(tree.root in p.parents and not p.resolve().is_relative_to(tree.outside) for p in paths)


def test_files_being_written_are_never_stale(tree: Tree) -> None:
    """.tmp and .partial files are kept however old they look."""
    names = {f.path.name for f in scan_hls(tree.root, STALE_AGE, tree.now).stale}
    assert not any(is_writing(name) for name in names)
    assert is_writing("x.mp4.tmp") and is_writing("x.mp4.partial") and is_writing("x.part")
    assert not is_writing("x.mp4")


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
    """HlsReader returns the sample and keeps the stale list for the memory strategy."""
    reader = HlsReader(tree.root, STALE_AGE)
    assert reader.last_scan is None
    sample = reader.read(tree.now)
    assert reader.root == tree.root
    assert reader.last_scan is not None
    assert reader.last_scan.sample == sample
    assert {f.path for f in reader.last_scan.stale} == tree.stale


def test_playlist_references_reads_uris_and_segment_lines() -> None:
    """Segment lines and URI= attributes count, by base name, without query strings; tags do not."""
    text = (
        "#EXTM3U\n"
        '#EXT-X-MAP:URI="sub/init.mp4?x=1"\n'
        "#EXTINF:2.0,\n"
        "seg1.mp4?token=abc\n"
        "\n"
        "  http://host/path/seg2.mp4  \n"
        '#EXT-X-PART:DURATION=0.5,URI="part3.mp4"\n'
    )
    assert playlist_references(text) == {"init.mp4", "seg1.mp4", "seg2.mp4", "part3.mp4"}
