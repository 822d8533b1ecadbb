"""The HLS prune action on real files: TARGET.md's rule, links never followed, re-checks, refusals."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from strategies.actions.hls import prune_stale
from strategies.base import StrategyError
from tests.harness import unwritable

STALE_AGE = 60.0
NOW = time.time()
OLD = NOW - 600
SEG = b"\x00" * 4096


def write(path: Path, data: bytes = SEG, mtime: float = OLD) -> Path:
    """A file with the given content and modification time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def playlist(directory: Path, prefix: str, numbers: range, mtime: float = NOW) -> None:
    """A media playlist referencing the init segment and the given segments, like MediaMTX writes."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:9", f'#EXT-X-MAP:URI="{prefix}_video_init.mp4"']
    for n in numbers:
        lines += ["#EXTINF:2.00000,", f"{prefix}_video_seg{n}.mp4"]
    write(directory / "video_stream.m3u8", ("\n".join(lines) + "\n").encode(), mtime)
    write(directory / "index.m3u8", b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nvideo_stream.m3u8\n", mtime)


def live_stream(root: Path, name: str = "live") -> Path:
    """A live stream: fresh playlists, its init, referenced segments (some old), a file being written."""
    d = root / name
    playlist(d, "cur", range(3, 6))
    write(d / "cur_video_init.mp4", mtime=OLD)  # the init of a live run is as old as the run
    for n in range(3, 6):
        write(d / f"cur_video_seg{n}.mp4", mtime=OLD if n == 3 else NOW)
    write(d / "cur_video_seg6.mp4.tmp", mtime=OLD)
    return d


def names(directory: Path) -> set[str]:
    """Entry names of a directory."""
    return {e.name for e in os.scandir(directory)}


def test_prunes_only_stale_unreferenced_files(tmp_path: Path) -> None:
    """Old unreferenced segments go; playlists, referenced, fresh, being-written and live init files stay."""
    root = tmp_path / "hls"
    live = live_stream(root)
    old_run = [write(live / f"old_video_seg{n}.mp4") for n in range(4)]
    write(live / "old_video_seg9.mp4", mtime=NOW - 5)  # unreferenced but young
    write(live / "old_video_init.mp4")  # an init segment in a live stream's directory is never pruned
    stopped = root / "stopped"
    gone = [write(stopped / "prev_video_init.mp4"), *(write(stopped / f"prev_video_seg{n}.mp4") for n in range(3))]
    result = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert result.removed == len(old_run) + len(gone)
    assert result.removed_bytes == (len(old_run) + len(gone)) * len(SEG)
    assert result.vanished == 0
    assert names(live) == {
        "index.m3u8",
        "video_stream.m3u8",
        "cur_video_init.mp4",
        "cur_video_seg3.mp4",
        "cur_video_seg4.mp4",
        "cur_video_seg5.mp4",
        "cur_video_seg6.mp4.tmp",
        "old_video_seg9.mp4",
        "old_video_init.mp4",
    }
    # a stream that stopped has no live playlist: its init segment is stale like the rest
    assert names(stopped) == set()


def test_stopped_stream_with_an_old_playlist_keeps_what_the_playlist_references(tmp_path: Path) -> None:
    """An old playlist still protects the files it names; its unreferenced neighbours go."""
    d = tmp_path / "hls" / "cam"
    playlist(d, "run", range(2), mtime=OLD)
    kept = [write(d / "run_video_init.mp4"), write(d / "run_video_seg0.mp4"), write(d / "run_video_seg1.mp4")]
    write(d / "other_video_seg7.mp4")
    result = prune_stale(tmp_path / "hls", stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert result.removed == 1
    assert all(p.exists() for p in kept)
    assert not (d / "other_video_seg7.mp4").exists()


def test_links_are_never_followed_and_outside_files_survive(tmp_path: Path) -> None:
    """A linked stream directory and a linked file are left alone, and so are their old targets."""
    root = tmp_path / "hls"
    outside = tmp_path / "outside"
    victim = write(outside / "must-survive.mp4")
    write(outside / "keep" / "old.mp4")
    live = live_stream(root)
    (root / "link-dir").symlink_to(outside, target_is_directory=True)
    (live / "old_video_seg99.mp4").symlink_to(victim)
    os.utime(live / "old_video_seg99.mp4", (OLD, OLD), follow_symlinks=False)
    result = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert result.removed == 0
    assert victim.read_bytes() == SEG
    assert (outside / "keep" / "old.mp4").exists()
    assert (live / "old_video_seg99.mp4").is_symlink()


def test_a_root_that_is_a_link_is_refused(tmp_path: Path) -> None:
    """The configured root itself must be a real directory, not a link to one."""
    real = tmp_path / "real"
    write(real / "cam" / "x_video_seg1.mp4")
    (tmp_path / "hls").symlink_to(real, target_is_directory=True)
    with pytest.raises(StrategyError, match="symbolic link"):
        prune_stale(tmp_path / "hls", stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert (real / "cam" / "x_video_seg1.mp4").exists()


def test_a_missing_root_is_an_error(tmp_path: Path) -> None:
    """A root that does not exist is reported, not created."""
    with pytest.raises(StrategyError, match="does not exist"):
        prune_stale(tmp_path / "absent", stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert not (tmp_path / "absent").exists()


def test_playlists_are_read_again_and_vanished_files_are_fine(tmp_path: Path) -> None:
    """Between finding and removing, a file that became referenced is kept and one that vanished is counted."""
    root = tmp_path / "hls"
    d = root / "cam"
    playlist(d, "cur", range(1), mtime=OLD)
    write(d / "cur_video_init.mp4")
    write(d / "cur_video_seg0.mp4")
    adopted = write(d / "a_video_seg1.mp4")
    rotated = write(d / "b_video_seg1.mp4")
    plain = write(d / "c_video_seg1.mp4")
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second pass starts: the muxer has moved on meanwhile
            playlist(d, "a", range(1, 2), mtime=OLD)
            rotated.unlink()
        return NOW

    result = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=clock)
    assert adopted.exists()
    assert not plain.exists()
    assert result.vanished == 1
    assert result.kept == {"referenced": 1}
    # only what the first pass found is removed: the files the new playlist dropped wait for the next round
    assert result.removed == 1
    assert (d / "cur_video_seg0.mp4").exists()


def test_at_most_max_files_go_oldest_first(tmp_path: Path) -> None:
    """With more stale files than allowed, the oldest go and the result says some are left."""
    d = tmp_path / "hls" / "cam"
    files = [write(d / f"x_video_seg{n}.mp4", mtime=OLD - n) for n in range(5)]
    result = prune_stale(tmp_path / "hls", stale_age=STALE_AGE, max_files=2, now=lambda: NOW)
    assert result.removed == 2
    assert result.limited is True and result.candidates == 5
    assert [p.exists() for p in files] == [True, True, True, False, False]


def test_an_unwritable_directory_refuses_before_anything_is_removed(tmp_path: Path) -> None:
    """Permission denied in one stream directory: an error naming it, and no file removed anywhere."""
    root = tmp_path / "hls"
    first = [write(root / "a" / f"x_video_seg{n}.mp4") for n in range(3)]
    locked_dir = root / "b"
    locked = [write(locked_dir / f"y_video_seg{n}.mp4") for n in range(2)]
    with unwritable(locked_dir), pytest.raises(StrategyError, match=r"permission denied.*nothing was removed"):
        prune_stale(root, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert all(p.exists() for p in first + locked)


def test_files_directly_in_the_root_are_not_touched(tmp_path: Path) -> None:
    """Only stream directories are pruned; stray files in the root are someone else's."""
    root = tmp_path / "hls"
    stray = write(root / "stray.mp4")
    result = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert result.removed == 0 and stray.exists()
