"""The HLS prune action on real files: the stale rule, links never followed, re-checks, refusals."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from metrics.hls import MAX_PLAYLIST_BYTES
from strategies.actions.hls import prune_stale
from strategies.base import StrategyError
from tests.harness import unwritable

# MediaMTX names its files "<prefix>_...", the prefix 12 hex characters per muxer run: "c0c0c0c0c0c0" is the
# current run below, the others earlier ones
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


def playlist(directory: Path, prefix: str, numbers: range, mtime: float = NOW) -> Path:
    """A media playlist referencing the init segment and the given segments, like MediaMTX writes."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:9", f'#EXT-X-MAP:URI="{prefix}_video_init.mp4"']
    for n in numbers:
        lines += ["#EXTINF:2.00000,", f"{prefix}_video_seg{n}.mp4"]
    write(directory / "video_stream.m3u8", ("\n".join(lines) + "\n").encode(), mtime)
    return write(directory / "index.m3u8", b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nvideo_stream.m3u8\n", mtime)


def live_stream(root: Path, name: str = "live") -> Path:
    """A live stream: fresh playlists, its init, referenced segments (some old), a file being written."""
    d = root / name
    playlist(d, "c0c0c0c0c0c0", range(3, 6))
    write(d / "c0c0c0c0c0c0_video_init.mp4", mtime=OLD)  # the init of a live run is as old as the run
    for n in range(3, 6):
        write(d / f"c0c0c0c0c0c0_video_seg{n}.mp4", mtime=OLD if n == 3 else NOW)
    write(d / "c0c0c0c0c0c0_video_seg6.mp4.tmp", mtime=OLD)
    return d


def names(directory: Path) -> set[str]:
    """Entry names of a directory."""
    return {e.name for e in os.scandir(directory)}


def test_prunes_only_stale_unreferenced_files(tmp_path: Path) -> None:
    """Old unreferenced segments go; playlists, referenced, fresh, being-written and live init files stay."""
    root = tmp_path / "hls"
    live = live_stream(root)
    old_run = [write(live / f"0d0d0d0d0d0d_video_seg{n}.mp4") for n in range(4)]
    write(live / "0d0d0d0d0d0d_video_seg9.mp4", mtime=NOW - 5)  # unreferenced but young
    write(live / "0d0d0d0d0d0d_video_init.mp4")  # an init segment in a live stream's directory is never pruned
    stopped = root / "stopped"
    gone = [
        write(stopped / "9e9e9e9e9e9e_video_init.mp4"),
        *(write(stopped / f"9e9e9e9e9e9e_video_seg{n}.mp4") for n in range(3)),
    ]
    result = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert result.removed == len(old_run) + len(gone)
    assert result.removed_bytes == (len(old_run) + len(gone)) * len(SEG)
    assert result.vanished == 0
    assert names(live) == {
        "index.m3u8",
        "video_stream.m3u8",
        "c0c0c0c0c0c0_video_init.mp4",
        "c0c0c0c0c0c0_video_seg3.mp4",
        "c0c0c0c0c0c0_video_seg4.mp4",
        "c0c0c0c0c0c0_video_seg5.mp4",
        "c0c0c0c0c0c0_video_seg6.mp4.tmp",
        "0d0d0d0d0d0d_video_seg9.mp4",
        "0d0d0d0d0d0d_video_init.mp4",
    }
    # a stream that stopped has no live playlist: its init segment is stale like the rest
    assert names(stopped) == set()


def test_stopped_stream_with_an_old_playlist_keeps_what_the_playlist_references(tmp_path: Path) -> None:
    """An old playlist still protects the files it names; its unreferenced neighbours go."""
    d = tmp_path / "hls" / "cam"
    playlist(d, "2a2a2a2a2a2a", range(2), mtime=OLD)
    kept = [
        write(d / "2a2a2a2a2a2a_video_init.mp4"),
        write(d / "2a2a2a2a2a2a_video_seg0.mp4"),
        write(d / "2a2a2a2a2a2a_video_seg1.mp4"),
    ]
    write(d / "07070707e0e0_video_seg7.mp4")
    result = prune_stale(tmp_path / "hls", stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert result.removed == 1
    assert all(p.exists() for p in kept)
    assert not (d / "07070707e0e0_video_seg7.mp4").exists()


def test_links_are_never_followed_and_outside_files_survive(tmp_path: Path) -> None:
    """A linked stream directory and a linked file are left alone, and so are their old targets."""
    root = tmp_path / "hls"
    outside = tmp_path / "outside"
    victim = write(outside / "must-survive.mp4")
    write(outside / "keep" / "old.mp4")
    live = live_stream(root)
    (root / "link-dir").symlink_to(outside, target_is_directory=True)
    (live / "0d0d0d0d0d0d_video_seg99.mp4").symlink_to(victim)
    os.utime(live / "0d0d0d0d0d0d_video_seg99.mp4", (OLD, OLD), follow_symlinks=False)
    result = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert result.removed == 0
    assert victim.read_bytes() == SEG
    assert (outside / "keep" / "old.mp4").exists()
    assert (live / "0d0d0d0d0d0d_video_seg99.mp4").is_symlink()


def test_a_root_that_is_a_link_is_refused(tmp_path: Path) -> None:
    """The configured root itself must be a real directory, not a link to one."""
    real = tmp_path / "real"
    write(real / "cam" / "1e1e1e1e1e1e_video_seg1.mp4")
    (tmp_path / "hls").symlink_to(real, target_is_directory=True)
    with pytest.raises(StrategyError, match="symbolic link"):
        prune_stale(tmp_path / "hls", stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert (real / "cam" / "1e1e1e1e1e1e_video_seg1.mp4").exists()


def test_a_missing_root_is_an_error(tmp_path: Path) -> None:
    """A root that does not exist is reported, not created."""
    with pytest.raises(StrategyError, match="does not exist"):
        prune_stale(tmp_path / "absent", stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert not (tmp_path / "absent").exists()


def test_playlists_are_read_again_and_vanished_files_are_fine(tmp_path: Path) -> None:
    """Between finding and removing, a file that became referenced is kept and one that vanished is counted."""
    root = tmp_path / "hls"
    d = root / "cam"
    playlist(d, "c0c0c0c0c0c0", range(1), mtime=OLD)
    write(d / "c0c0c0c0c0c0_video_init.mp4")
    write(d / "c0c0c0c0c0c0_video_seg0.mp4")
    adopted = write(d / "aaaaaaaaaaaa_video_seg1.mp4")
    rotated = write(d / "bbbbbbbbbbbb_video_seg1.mp4")
    plain = write(d / "cccccccccccc_video_seg1.mp4")
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second pass starts: the muxer has moved on meanwhile
            playlist(d, "aaaaaaaaaaaa", range(1, 2), mtime=OLD)
            rotated.unlink()
        return NOW

    result = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=clock)
    assert adopted.exists()
    assert not plain.exists()
    assert result.vanished == 1
    assert result.kept == {"referenced": 1}
    # only what the first pass found is removed: the files the new playlist dropped wait for the next round
    assert result.removed == 1
    assert (d / "c0c0c0c0c0c0_video_seg0.mp4").exists()


def test_at_most_max_files_go_oldest_first(tmp_path: Path) -> None:
    """With more stale files than allowed, the oldest go and the result says some are left."""
    d = tmp_path / "hls" / "cam"
    files = [write(d / f"1e1e1e1e1e1e_video_seg{n}.mp4", mtime=OLD - n) for n in range(5)]
    result = prune_stale(tmp_path / "hls", stale_age=STALE_AGE, max_files=2, now=lambda: NOW)
    assert result.removed == 2
    assert result.limited is True and result.candidates == 5
    assert [p.exists() for p in files] == [True, True, True, False, False]


def test_an_unwritable_directory_with_unwritable_files_refuses_before_anything_is_removed(tmp_path: Path) -> None:
    """Neither unlink nor truncate allowed in one stream directory: an error naming it, and no file removed anywhere."""
    root = tmp_path / "hls"
    first = [write(root / "a" / f"1e1e1e1e1e1e_video_seg{n}.mp4") for n in range(3)]
    locked_dir = root / "b"
    locked = [write(locked_dir / f"5e5e5e5e5e5e_video_seg{n}.mp4") for n in range(2)]
    with contextlib.ExitStack() as stack:
        for path in (*locked, locked_dir):
            stack.enter_context(unwritable(path))
        with pytest.raises(
            StrategyError, match=r"permission denied.*/b \(2 stale; directory mode.*nothing was removed"
        ):
            prune_stale(root, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert all(p.exists() and p.stat().st_size == len(SEG) for p in first + locked)


def test_in_a_directory_it_may_not_unlink_in_writable_stale_files_are_emptied(tmp_path: Path) -> None:
    """MediaMTX's 0755 stream directory with group-writable files: stale files are truncated to zero (their RAM
    freed) and stay as names; an emptied file is not a candidate again; other files are untouched."""
    root = tmp_path / "hls"
    d = root / "cam"
    live_playlist = playlist(d, "c0c0c0c0c0c0", range(1, 2))
    referenced = write(d / "c0c0c0c0c0c0_video_seg1.mp4")
    stale = [write(d / f"9e9e9e9e9e9e_video_seg{n}.mp4") for n in range(3)]
    with unwritable(d):
        result = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
        again = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert (result.removed, result.emptied, result.emptied_bytes) == (0, 3, 3 * len(SEG))
    assert all(p.exists() and p.stat().st_size == 0 for p in stale)
    assert referenced.stat().st_size == len(SEG) and live_playlist.exists()
    assert (again.candidates, again.emptied, again.removed) == (0, 0, 0)


def test_a_directory_that_vanishes_mid_prune_is_not_a_permission_problem(tmp_path: Path) -> None:
    """A stream directory that MediaMTX removes (here: moves away) between finding its files and removing them is
    skipped and counted as vanished; nothing outside the root is touched and no permission error is raised."""
    root = tmp_path / "hls"
    d = root / "cam"
    files = [write(d / f"9e9e9e9e9e9e_video_seg{n}.mp4") for n in range(3)]
    elsewhere = tmp_path / "moved"
    elsewhere.mkdir()
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        if calls == 1:
            d.rename(elsewhere / "cam")
        return NOW

    result = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=clock)
    assert (result.removed, result.vanished) == (0, len(files))
    assert sorted(p.name for p in (elsewhere / "cam").iterdir()) == sorted(p.name for p in files)


def test_the_parent_of_the_backends_data_directory_loses_nothing_but_segments(tmp_path: Path) -> None:
    """The reported accident, with the root rule bypassed: a prune of the directory holding ``data/`` removes old
    MediaMTX segments only; the database, its WAL and shm, the admin password and the pid file stay."""
    backend = tmp_path / "backend"
    data = backend / "data"
    precious = [
        write(data / name, b"x" * 100)
        for name in ("cctv.db", "cctv.db-wal", "cctv.db-shm", "admin-password", "backend.pid", "notes.txt")
    ]
    precious += [write(backend / "hls" / "index.html", b"<html>"), write(backend / "server.pid", b"1")]
    segments = [write(backend / "hls" / f"9e9e9e9e9e9e_seg{n}.ts") for n in range(2)]
    result = prune_stale(backend, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert result.removed == len(segments)
    assert all(p.read_bytes() in (b"x" * 100, b"<html>", b"1") for p in precious)
    assert not any(p.exists() for p in segments)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("9e9e9e9e9e9e_seg12.mp4", id="mediamtx-1.9-fmp4-segment"),
        pytest.param("9e9e9e9e9e9e_seg12.ts", id="mediamtx-1.9-mpegts-segment"),
        pytest.param("9e9e9e9e9e9e_part40.mp4", id="low-latency-part"),
        pytest.param("9e9e9e9e9e9e_init.mp4", id="init"),
        # gohlslib v2 (later MediaMTX): <prefix>_<stream>_...
        pytest.param("9e9e9e9e9e9e_main_seg3.mp4", id="gohlslib-v2-segment"),
        pytest.param("9e9e9e9e9e9e_video1_part9.mp4", id="gohlslib-v2-part"),
    ],
)
def test_every_mediamtx_file_name_is_prunable(tmp_path: Path, name: str) -> None:
    """Each kind of file MediaMTX writes into hlsDirectory goes when it is stale."""
    path = write(tmp_path / "hls" / "cam" / name)
    assert prune_stale(tmp_path / "hls", stale_age=STALE_AGE, max_files=10, now=lambda: NOW).removed == 1
    assert not path.exists()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("cctv.db", id="database"),
        pytest.param("segment.ts", id="no-prefix"),
        pytest.param("9e9e9e9e9e9e.mp4", id="prefix-alone"),
        pytest.param("9E9E9E9E9E9E_seg1.mp4", id="upper-case-prefix"),
        pytest.param("9e9e9e9e9e_seg1.mp4", id="short-prefix"),
        pytest.param("9e9e9e9e9e9e_seg1.mp4.bak", id="backup-suffix"),
        pytest.param("9e9e9e9e9e9e_seg.mp4", id="segment-without-number"),
        pytest.param("9e9e9e9e9e9e_segx.ts", id="segment-number-not-a-number"),
        pytest.param("x9e9e9e9e9e9e_seg1.ts", id="long-prefix"),
        pytest.param(".9e9e9e9e9e9e_seg1.ts", id="hidden"),
    ],
)
def test_anything_else_is_left_alone(tmp_path: Path, name: str) -> None:
    """A name MediaMTX does not write is never pruned, however old and unreferenced."""
    path = write(tmp_path / "hls" / "cam" / name)
    result = prune_stale(tmp_path / "hls", stale_age=STALE_AGE, max_files=10, now=lambda: NOW)
    assert (result.removed, result.candidates) == (0, 0)
    assert path.read_bytes() == SEG


def test_a_playlist_over_the_bound_protects_its_whole_directory(tmp_path: Path) -> None:
    """A live playlist larger than 1 MiB naming a segment after its first MiB: nothing in its directory goes (the
    old prune read 1 MiB and deleted the segment named later)."""
    d = tmp_path / "hls" / "cam"
    tail = write(d / "9e9e9e9e9e9e_seg7.ts")
    other = write(d / "9e9e9e9e9e9e_seg8.ts")
    padding = "#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:00Z\n" * (MAX_PLAYLIST_BYTES // 40)
    write(d / "stream.m3u8", f"#EXTM3U\n{padding}#EXTINF:2,\n{tail.name}\n".encode(), mtime=NOW)
    elsewhere = write(tmp_path / "hls" / "cam2" / "9e9e9e9e9e9e_seg9.ts")
    result = prune_stale(tmp_path / "hls", stale_age=STALE_AGE, max_files=10, now=lambda: NOW)
    assert tail.exists() and other.exists()
    assert result.removed == 1 and not elsewhere.exists()


def test_playlist_names_are_matched_in_any_case(tmp_path: Path) -> None:
    """``INDEX.M3U8`` is a playlist: never pruned, and what it references is kept."""
    d = tmp_path / "hls" / "cam"
    listed = write(d / "9e9e9e9e9e9e_seg1.ts")
    upper = write(d / "INDEX.M3U8", f"#EXTM3U\n#EXTINF:2,\n{listed.name}\n".encode())
    result = prune_stale(tmp_path / "hls", stale_age=STALE_AGE, max_files=10, now=lambda: NOW)
    assert result.removed == 0 and listed.exists() and upper.exists()


def test_a_reference_into_a_sibling_directory_protects_that_file(tmp_path: Path) -> None:
    """``../camB/x.ts`` in camA's playlist keeps camB's file; camB's unreferenced neighbour goes."""
    root = tmp_path / "hls"
    shared = write(root / "camB" / "9e9e9e9e9e9e_seg1.ts")
    loose = write(root / "camB" / "9e9e9e9e9e9e_seg2.ts")
    write(root / "camA" / "stream.m3u8", f"#EXTM3U\n#EXTINF:2,\n../camB/{shared.name}\n".encode(), mtime=NOW)
    result = prune_stale(root, stale_age=STALE_AGE, max_files=10, now=lambda: NOW)
    assert shared.exists() and not loose.exists() and result.removed == 1


def test_a_bind_mount_inside_the_root_is_never_entered(tmp_path: Path) -> None:
    """A directory bind-mounted inside the HLS root (same file system, same device number) is not pruned."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    root = tmp_path / "hls"
    outside = tmp_path / "recordings"
    kept = write(outside / "9e9e9e9e9e9e_seg1.mp4")
    (root / "mounted").mkdir(parents=True)
    done = subprocess.run(["mount", "--bind", str(outside), str(root / "mounted")], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        result = prune_stale(root, stale_age=STALE_AGE, max_files=10, now=lambda: NOW)
    finally:
        subprocess.run(["umount", str(root / "mounted")], capture_output=True, check=False)
    assert (result.removed, result.candidates) == (0, 0)
    assert kept.read_bytes() == SEG


def test_a_root_that_resolves_elsewhere_than_checked_is_refused(tmp_path: Path) -> None:
    """A parent swapped for a link after start: the root leads somewhere else now, and nothing is pruned."""
    real = tmp_path / "real" / "hls"
    segment = write(real / "cam" / "9e9e9e9e9e9e_seg1.ts")
    (tmp_path / "via").symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(StrategyError, match="now resolves to"):
        prune_stale(
            tmp_path / "via" / "hls", stale_age=STALE_AGE, max_files=10, now=lambda: NOW, expected_root=real.parent
        )
    assert segment.exists()


def test_files_directly_in_the_root_are_not_touched(tmp_path: Path) -> None:
    """Only stream directories are pruned; stray files in the root are someone else's."""
    root = tmp_path / "hls"
    stray = write(root / "stray.mp4")
    result = prune_stale(root, stale_age=STALE_AGE, max_files=100, now=lambda: NOW)
    assert result.removed == 0 and stray.exists()
