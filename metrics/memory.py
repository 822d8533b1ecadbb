"""Memory figures the memory strategy reads beyond the snapshot: a process's RSS and identity, and steady growth.

Everything here only reads: ``/proc/<pid>/statm`` and ``/proc/<pid>/stat`` (no psutil, so the strategies
package may use it directly), and a least-squares line through a window of samples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_STARTTIME_FIELD = 19  # index of starttime after the ")" that ends the command name (field 22 of stat)


def read_whole(path: str) -> bytes:
    """The whole of a small file (a /proc one) through a plain descriptor; OSError when it cannot be read.

    Cheaper than a file object, which costs more than the kernel takes to print most /proc files.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_small(path: str) -> bytes | None:
    """``read_whole``, with None when the file cannot be read (the process is gone)."""
    try:
        return read_whole(path)
    except OSError:
        return None


def rss_bytes(pid: int, proc_root: Path = PROC) -> int | None:
    """Resident set size of a process from ``/proc/<pid>/statm``; None when the process is gone."""
    data = read_small(f"{proc_root}/{pid}/statm")
    if data is None:
        return None
    fields = data.split()
    if len(fields) < 2 or not fields[1].isdigit():
        return None
    return int(fields[1]) * _PAGE_SIZE


def _stat_fields(pid: int, proc_root: Path) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None when the process is gone."""
    try:
        text = (proc_root / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # the command name may hold spaces and parentheses: the fields start after the last ")"
    return text.rsplit(")", 1)[-1].split()


def _ticks_of(fields: list[str]) -> int | None:
    if len(fields) <= _STARTTIME_FIELD or not fields[_STARTTIME_FIELD].isdigit():
        return None
    return int(fields[_STARTTIME_FIELD])


def start_ticks(pid: int, proc_root: Path = PROC) -> int | None:
    """When the process started (clock ticks since boot): with the PID, it names one process, not a reused PID."""
    fields = _stat_fields(pid, proc_root)
    return None if fields is None else _ticks_of(fields)


def same_process_running(pid: int, ticks: int | None, proc_root: Path = PROC) -> bool:
    """Whether the process that had this PID and start time still runs (a zombie counts as gone)."""
    fields = _stat_fields(pid, proc_root)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return ticks is None or _ticks_of(fields) == ticks


@dataclass(frozen=True, slots=True, kw_only=True)
class Growth:
    """A straight line through a series: units per second, how well it fits (r2), over what span."""

    slope: float
    r2: float
    span_seconds: float
    samples: int
    last: float

    def seconds_to(self, target: float) -> float | None:
        """When the series reaches ``target`` at this slope (0 when already there; None when it does not grow)."""
        if self.last >= target:
            return 0.0
        if self.slope <= 0:
            return None
        return (target - self.last) / self.slope


def fit_growth(points: Sequence[tuple[float, float]]) -> Growth | None:
    """Least-squares line through (time, value) points; None for fewer than three or no time span."""
    n = len(points)
    if n < 3:
        return None
    t0 = points[0][0]
    xs = [t - t0 for t, _ in points]
    ys = [v for _, v in points]
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx <= 0:
        return None
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - mean_y) ** 2 for y in ys)
    slope = sxy / sxx
    # a flat series is perfectly described by a flat line; r2 only matters for a slope
    r2 = 1.0 if syy == 0 else (sxy * sxy) / (sxx * syy)
    return Growth(
        slope=slope,
        r2=r2 if math.isfinite(r2) else 0.0,
        span_seconds=xs[-1] - xs[0],
        samples=n,
        last=ys[-1],
    )


def steady_growth(
    points: Sequence[tuple[float, float]], *, min_span_seconds: float, min_r2: float = 0.8, min_samples: int = 6
) -> Growth | None:
    """The growth of a series when it rises steadily (enough samples over enough time, a good fit), else None."""
    if len(points) < min_samples:
        return None
    growth = fit_growth(points)
    if growth is None or growth.slope <= 0 or growth.span_seconds < min_span_seconds or growth.r2 < min_r2:
        return None
    return growth
