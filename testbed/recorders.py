"""Spawning and stopping the fake recorder processes (detached, like the backend's ffmpeg recorders)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

SCRIPT = Path(__file__).with_name("fake_recorder.py")


def recorder_command(*, output: Path, stream_key: str) -> list[str]:
    """argv of a fake recorder: reads like the backend's recorder ffmpeg command line."""
    return [
        "ffmpeg",
        str(SCRIPT),
        "-hide_banner",
        "-loglevel",
        "error",
        "-rtsp_transport",
        "tcp",
        "-i",
        f"rtsp://127.0.0.1:8554/{stream_key}",
        "-map",
        "0",
        "-c",
        "copy",
        "-f",
        "segment",
        "-segment_time",
        "600",
        "-segment_format",
        "mp4",
        "-reset_timestamps",
        "1",
        str(output),
    ]


class RecorderFleet:
    """The fake recorders this testbed started, so it can report and end them."""

    def __init__(self, recordings_dir: Path, *, max_seconds: float) -> None:
        """No process runs until spawn()."""
        self.recordings_dir = recordings_dir
        self.max_seconds = max_seconds
        self._processes: list[subprocess.Popen[bytes]] = []
        self._outputs: set[str] = set()

    def spawn(self, cameras: list[tuple[int, str]]) -> list[int]:
        """Start one recorder per (camera id, stream key); return their PIDs."""
        env = dict(
            os.environ,
            TESTBED_RECORDER_MAX_SECONDS=str(self.max_seconds),
            TESTBED_RECORDER_PARENT=str(os.getpid()),
        )
        pids = []
        for camera_id, stream_key in cameras:
            pending = self.recordings_dir / f"camera{camera_id}" / "pending"
            pending.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
            output = pending / f"{stamp}.mp4.partial"
            if output.exists() or str(output) in self._outputs:
                # Two recorders for one camera within a second: keep their outputs apart.
                output = pending / f"{stamp}_{len(self._outputs)}.mp4.partial"
            self._outputs.add(str(output))
            process = subprocess.Popen(
                recorder_command(output=output, stream_key=stream_key),
                executable=sys.executable,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                # Detached like the real recorders: own session, survives a Ctrl-C to the testbed's group.
                start_new_session=True,
            )
            self._processes.append(process)
            pids.append(process.pid)
        return pids

    def pids(self) -> list[int]:
        """PIDs of recorders still running."""
        return [process.pid for process in self._processes if process.poll() is None]

    def stop_all(self, *, timeout: float = 5.0) -> list[int]:
        """Terminate every recorder (SIGTERM, then SIGKILL after `timeout`); return the PIDs ended."""
        ended = []
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
                ended.append(process.pid)
        deadline = time.monotonic() + timeout
        for process in self._processes:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        self._processes.clear()
        return ended
