"""The recorder scan tells ffmpeg processes by their program's name before it decodes their arguments."""

from __future__ import annotations

from pathlib import Path

from metrics.recorders import RecorderReader

STAT = "{pid} (x) S " + " ".join(["0"] * 18) + " 50000 " + " ".join(["0"] * 30)


def test_only_processes_whose_program_is_ffmpeg_are_looked_at(tmp_path: Path) -> None:
    """Full paths and an empty first argument count; a longer name, bad bytes or no command line do not."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "uptime").write_text("1000.00 500.00\n")
    args = [b"-segment_time", b"600", b"/r/camera3/pending/a.mp4.partial"]
    lines = {
        10: b"\0".join([b"/usr/bin/ffmpeg", *args]),
        11: b"\0".join([b"", b"ffmpeg", *args]),  # an empty first argument is skipped, as before
        12: b"\0".join([b"/usr/bin/ffmpeg2", *args]),
        13: b"\0".join([b"ffmpeg\xff", *args]),
        14: b"",  # a kernel thread
        15: b"\0".join([b"ffmpeg", b"-i", b"rtsp://cam/\xff", b"out.ts"]),  # an ffmpeg that is not a recorder
    }
    for pid, cmdline in lines.items():
        (proc / str(pid) / "task").mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(cmdline)
        (proc / str(pid) / "stat").write_text(STAT.format(pid=pid))
    scan = RecorderReader(proc_root=proc).scan(10.0)
    assert [r.pid for r in scan.recorders] == [10, 11]
    assert {r.camera_id for r in scan.recorders} == {3}
    assert scan.other_ffmpeg == 1
