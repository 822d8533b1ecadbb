"""Find the recorder ``ffmpeg`` processes by their command line and read their priority and CPU use.

Recorders are spawned detached (they survive backend restarts and are adopted by init), so they are
found by command line, not by parentage: ``argv[0]`` is ``ffmpeg`` and either the marker argument
(``-segment_time``) is present or an output matches ``*/camera<ID>/pending/*.mp4.partial``. Other
``ffmpeg`` runs (the 5-minute thumbnails) are only counted. The backend process itself and the daemon
are never reported, whatever their command line says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

_OUTPUT = re.compile(r"(?:^|/)camera(\d+)/pending/[^/]*\.mp4\.partial$")
# fields after the ")" that closes the command name in /proc/PID/stat (field 3 is index 0)
_UTIME, _STIME, _NICE, _START = 11, 12, 16, 19


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderProcess:
    """One recorder: identity (pid and start time in clock ticks), camera, priority and CPU share."""

    pid: int
    start_ticks: int
    camera_id: int | None
    output: str | None
    nice: int
    ioprio_class: int | None
    ioprio_level: int | None
    threads: int
    cpu_ratio: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderScan:
    """What one scan found."""

    recorders: tuple[RecorderProcess, ...]
    other_ffmpeg: int
    cpu_ratio: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StatFields:
    """The parts of /proc/PID/stat the reader needs."""

    cpu_ticks: int
    nice: int
    start_ticks: int


def parse_stat(text: str) -> StatFields:
    """Parse /proc/PID/stat; the command name may hold spaces and parentheses, so split after the last ')'."""
    fields = text.rsplit(")", 1)[1].split()
    return StatFields(
        cpu_ticks=int(fields[_UTIME]) + int(fields[_STIME]),
        nice=int(fields[_NICE]),
        start_ticks=int(fields[_START]),
    )


def recorder_output(argv: Sequence[str], marker: str, root: Path | None) -> tuple[bool, int | None, str | None]:
    """Whether ``argv`` is a recorder, with its camera id and output when they can be told."""
    if not argv or os.path.basename(argv[0]) != "ffmpeg":
        return False, None, None
    output: str | None = None
    camera: int | None = None
    for arg in reversed(argv[1:]):
        match = _OUTPUT.search(arg)
        if match:
            output, camera = arg, int(match.group(1))
            break
    if output is None and marker not in argv[1:]:
        return False, None, None
    if root is not None:
        prefix = os.path.normpath(str(root)) + os.sep
        if not any(os.path.normpath(a).startswith(prefix) for a in argv[1:] if a.startswith("/")):
            return False, None, None
    if output is None:
        # a recorder without the camera layout: its last argument is the output
        output = argv[-1]
    return True, camera, output


def _argv(raw: bytes) -> list[str]:
    """A /proc/PID/cmdline's arguments (empty ones dropped)."""
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


class RecorderReader:
    """Scans /proc for recorder ffmpeg processes; keeps the last CPU counters to turn them into ratios."""

    name = "recorders"

    def __init__(
        self,
        *,
        marker: str = "-segment_time",
        recordings_root: Path | None = None,
        exclude: Callable[[], Iterable[int | None]] = tuple,
        proc_root: Path = Path("/proc"),
    ) -> None:
        self._marker = marker
        self._root = recordings_root
        self._exclude = exclude
        self._proc = proc_root
        self._proc_text = str(proc_root)
        self._ticks_per_second = os.sysconf("SC_CLK_TCK")
        self._last_cpu: dict[tuple[int, int], tuple[float, int]] = {}
        self.last_scan: RecorderScan | None = None

    def _cmdline(self, pid: str) -> list[str]:
        return _argv(self._raw_cmdline(pid))

    def _raw_cmdline(self, pid: str) -> bytes:
        # every process on the host is read at every scan: a plain open, not a pathlib path per process
        try:
            with open(f"{self._proc_text}/{pid}/cmdline", "rb") as file:
                return file.read()
        except OSError:
            return b""

    def _ioprio(self, pid: int) -> tuple[int | None, int | None]:
        if self._proc != Path("/proc"):
            return None, None
        try:
            ioclass, value = psutil.Process(pid).ionice()
        except (psutil.Error, OSError, ValueError):
            return None, None
        return int(ioclass), int(value)

    def _uptime(self) -> float | None:
        try:
            return float((self._proc / "uptime").read_text(encoding="ascii").split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def _threads(self, pid: str) -> int:
        try:
            return len(os.listdir(self._proc / pid / "task"))
        except OSError:
            return 0

    def scan(self, now: float) -> RecorderScan:
        """Find the recorders now (blocking; run in a worker thread). ``now`` is a monotonic time."""
        excluded = {os.getpid(), *(p for p in self._exclude() if p is not None)}
        found: list[RecorderProcess] = []
        others = 0
        seen: set[tuple[int, int]] = set()
        uptime = self._uptime()
        try:
            entries = [e for e in os.listdir(self._proc) if e.isdigit()]
        except OSError:
            entries = []
        for entry in entries:
            pid = int(entry)
            if pid in excluded:
                continue
            raw = self._raw_cmdline(entry)
            # the program's name first; only an ffmpeg's arguments are decoded
            if os.path.basename(next((part for part in raw.split(b"\0") if part), b"")) != b"ffmpeg":
                continue
            argv = _argv(raw)
            is_recorder, camera, output = recorder_output(argv, self._marker, self._root)
            if not is_recorder:
                others += 1
                continue
            try:
                stat = parse_stat((self._proc / entry / "stat").read_text(encoding="ascii", errors="replace"))
            except (OSError, IndexError, ValueError):
                # it exited between the listing and this read
                continue
            key = (pid, stat.start_ticks)
            seen.add(key)
            ratio = 0.0
            previous = self._last_cpu.get(key)
            if previous is not None and now > previous[0]:
                ratio = max(0.0, (stat.cpu_ticks - previous[1]) / self._ticks_per_second / (now - previous[0]))
            elif uptime is not None and uptime * self._ticks_per_second > stat.start_ticks:
                # first sight of this process: its average since it started
                ratio = stat.cpu_ticks / (uptime * self._ticks_per_second - stat.start_ticks)
            self._last_cpu[key] = (now, stat.cpu_ticks)
            ioclass, level = self._ioprio(pid)
            found.append(
                RecorderProcess(
                    pid=pid,
                    start_ticks=stat.start_ticks,
                    camera_id=camera,
                    output=output,
                    nice=stat.nice,
                    ioprio_class=ioclass,
                    ioprio_level=level,
                    threads=self._threads(entry),
                    cpu_ratio=ratio,
                )
            )
        # forget the counters of processes that are gone, so the map cannot grow without bound
        self._last_cpu = {k: v for k, v in self._last_cpu.items() if k in seen}
        found.sort(key=lambda r: r.pid)
        scan = RecorderScan(recorders=tuple(found), other_ffmpeg=others, cpu_ratio=sum(r.cpu_ratio for r in found))
        self.last_scan = scan
        return scan
