"""Host figures read straight from /proc (an injectable root, so tests use fixture trees).

Reading /proc directly is cheaper than psutil's general-purpose walkers and keeps one sample to a
handful of small file reads. Rates (CPU, network, disk) are deltas against the previous read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from metrics.errors import SamplingError
from metrics.memory import read_whole
from metrics.snapshot import HostSample, PsiSample

_SECTOR_BYTES = 512
_MIN_TICKS_PER_CORE = 10  # clock ticks (USER_HZ, 100 a second) each core must have run before a CPU share is taken


@dataclass(frozen=True, slots=True, kw_only=True)
class _Counters:
    """Cumulative counters kept between reads to compute rates."""

    at: float
    cpu_busy: int
    cpu_total: int
    net_rx: int
    net_tx: int
    disk_read: int
    disk_write: int


def _read(path: str) -> str:
    """Read a small text file, turning OS errors into SamplingError.

    Through read_whole: a text file object costs more than the kernel takes to print most /proc files.
    """
    try:
        data = read_whole(path)
    except OSError as exc:
        raise SamplingError(f"cannot read {path}: {exc.strerror}") from None
    return data.decode("ascii", errors="replace")


def parse_cpu(stat_text: str) -> tuple[int, int]:
    """Return (busy, total) jiffies from the aggregate cpu line of /proc/stat."""
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            fields = [int(x) for x in line.split()[1:]]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
            # guest time is already counted in user/nice
            total = sum(fields[:8])
            return total - idle, total
    raise SamplingError("no aggregate cpu line in /proc/stat")


def parse_cpu_count(stat_text: str) -> int:
    """Count the per-cpu lines of /proc/stat."""
    return sum(1 for line in stat_text.splitlines() if line.startswith("cpu") and line[3:4].isdigit())


def parse_meminfo(text: str) -> dict[str, int]:
    """Parse /proc/meminfo into bytes."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            value = int(parts[0])
            out[key] = value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
    return out


def parse_psi(text: str) -> tuple[float, float]:
    """Return (some avg10, full avg10) from one /proc/pressure file."""
    some = full = 0.0
    for line in text.splitlines():
        if not line.strip():
            continue
        kind, *pairs = line.split()
        values = dict(p.split("=", 1) for p in pairs if "=" in p)
        if kind == "some":
            some = float(values.get("avg10", "0"))
        elif kind == "full":
            full = float(values.get("avg10", "0"))
    return some, full


def parse_net_dev(text: str) -> tuple[int, int]:
    """Sum received and sent bytes over all interfaces except loopback."""
    rx = tx = 0
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == "lo" or not rest:
            continue
        fields = rest.split()
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


def parse_diskstats(text: str) -> tuple[int, int]:
    """Sum sectors read and written (as bytes) over whole disks, skipping partitions and virtual devices."""
    read = written = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        name = fields[2]
        # md and dm devices are layered on disks that are already counted
        if name.startswith(("loop", "ram", "dm-", "md", "zram", "sr")):
            continue
        # a partition's name ends in a digit after a disk name that also exists; count whole disks only
        if name[-1].isdigit() and not name.startswith(("nvme", "mmcblk")):
            continue
        if name.startswith(("nvme", "mmcblk")) and "p" in name[4:]:
            continue
        read += int(fields[5]) * _SECTOR_BYTES
        written += int(fields[9]) * _SECTOR_BYTES
    return read, written


class HostReader:
    """Reads host-wide figures; keeps the previous counters to turn them into rates."""

    name = "host"

    def __init__(self, proc_root: Path = Path("/proc"), shm_path: Path = Path("/dev/shm")) -> None:
        self._proc = proc_root
        self._shm = shm_path
        self._previous: _Counters | None = None
        self._last_rates: tuple[float, tuple[float, float, float, float]] = (0.0, (0.0, 0.0, 0.0, 0.0))
        self._has_psi = (proc_root / "pressure" / "cpu").exists()
        # the files read at every sample, their paths joined once
        self._stat = str(proc_root / "stat")
        self._meminfo = str(proc_root / "meminfo")
        self._loadavg = str(proc_root / "loadavg")
        self._uptime = str(proc_root / "uptime")
        self._net_dev = str(proc_root / "net" / "dev")
        self._diskstats = str(proc_root / "diskstats")
        self._pressure = tuple(str(proc_root / "pressure" / kind) for kind in ("cpu", "memory", "io"))

    def _rates(self, current: _Counters, cpu_count: int) -> tuple[float, tuple[float, float, float, float]]:
        """The CPU share and the network and disk byte rates since the previous counters.

        Two reads a few milliseconds apart span too few clock ticks to measure (the share would round to 0 % or
        100 %): the older counters stay the baseline and the last figures are repeated.
        """
        prev = self._previous
        if prev is not None and 0 <= current.cpu_total - prev.cpu_total < cpu_count * _MIN_TICKS_PER_CORE:
            return self._last_rates
        self._previous = current
        cpu_ratio = 0.0
        rates = (0.0, 0.0, 0.0, 0.0)
        if prev is not None:
            dt_cpu = current.cpu_total - prev.cpu_total
            if dt_cpu > 0:
                cpu_ratio = min(1.0, max(0.0, (current.cpu_busy - prev.cpu_busy) / dt_cpu))
            elapsed = current.at - prev.at
            if elapsed > 0:
                rates = (
                    max(0, current.net_rx - prev.net_rx) / elapsed,
                    max(0, current.net_tx - prev.net_tx) / elapsed,
                    max(0, current.disk_read - prev.disk_read) / elapsed,
                    max(0, current.disk_write - prev.disk_write) / elapsed,
                )
        self._last_rates = (cpu_ratio, rates)
        return self._last_rates

    def read(self, now: float) -> HostSample:
        """Take one host sample at monotonic time ``now`` (blocking; run in a worker thread)."""
        stat = _read(self._stat)
        busy, total = parse_cpu(stat)
        mem = parse_meminfo(_read(self._meminfo))
        load_fields = _read(self._loadavg).split()
        uptime = float(_read(self._uptime).split()[0])
        try:
            net_rx, net_tx = parse_net_dev(_read(self._net_dev))
        except SamplingError:
            net_rx = net_tx = 0
        try:
            disk_read, disk_write = parse_diskstats(_read(self._diskstats))
        except SamplingError:
            disk_read = disk_write = 0
        current = _Counters(
            at=now,
            cpu_busy=busy,
            cpu_total=total,
            net_rx=net_rx,
            net_tx=net_tx,
            disk_read=disk_read,
            disk_write=disk_write,
        )
        cpu_count = max(1, parse_cpu_count(stat))
        cpu_ratio, rates = self._rates(current, cpu_count)
        total_mem = mem.get("MemTotal", 0)
        available = mem.get("MemAvailable", mem.get("MemFree", 0))
        swap_total = mem.get("SwapTotal", 0)
        swap_free = mem.get("SwapFree", 0)
        psi = self._read_psi() if self._has_psi else None
        shm_total, shm_used = self._shm_usage()
        return HostSample(
            cpu_ratio=cpu_ratio,
            cpu_count=cpu_count,
            memory_total_bytes=total_mem,
            memory_available_bytes=available,
            memory_used_ratio=(1 - available / total_mem) if total_mem else 0.0,
            swap_used_ratio=(1 - swap_free / swap_total) if swap_total else 0.0,
            load=(float(load_fields[0]), float(load_fields[1]), float(load_fields[2])),
            uptime_seconds=uptime,
            psi=psi,
            net_rx_bytes_per_second=rates[0],
            net_tx_bytes_per_second=rates[1],
            disk_read_bytes_per_second=rates[2],
            disk_write_bytes_per_second=rates[3],
            shm_total_bytes=shm_total,
            shm_used_bytes=shm_used,
        )

    def _read_psi(self) -> PsiSample | None:
        """Read /proc/pressure; None when the kernel does not offer it."""
        try:
            cpu_path, memory_path, io_path = self._pressure
            cpu_some, _ = parse_psi(_read(cpu_path))
            mem_some, mem_full = parse_psi(_read(memory_path))
            io_some, io_full = parse_psi(_read(io_path))
        except SamplingError:
            return None
        return PsiSample(
            cpu_some=cpu_some, memory_some=mem_some, memory_full=mem_full, io_some=io_some, io_full=io_full
        )

    def _shm_usage(self) -> tuple[int, int]:
        """(total, used) bytes of the /dev/shm filesystem; zeros when it is absent."""
        try:
            st = os.statvfs(self._shm)
        except OSError:
            return 0, 0
        total = st.f_blocks * st.f_frsize
        return total, total - st.f_bfree * st.f_frsize
