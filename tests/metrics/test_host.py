"""Tests for metrics.host: the /proc parsers and HostReader on fixture /proc trees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from metrics.errors import SamplingError
from metrics.host import (
    HostReader,
    parse_cpu,
    parse_cpu_count,
    parse_diskstats,
    parse_meminfo,
    parse_net_dev,
    parse_psi,
)
from metrics.snapshot import PsiSample

FIXTURES = Path(__file__).parent / "fixtures" / "proc_host"
KIB = 1024
SECTOR = 512


@pytest.fixture
def proc_tree(tmp_path: Path) -> Path:
    """A writable copy of the full fixture tree, so a test can move its counters on."""
    root = tmp_path / "proc"
    shutil.copytree(FIXTURES / "full", root)
    return root


def advance(root: Path) -> None:
    """Overwrite the counter files with the later fixture (10 s of activity)."""
    later = FIXTURES / "later"
    for name in ("stat", "net/dev", "diskstats"):
        shutil.copyfile(later / name, root / name)


# ----- parsers -------------------------------------------------------------------------------------


def test_parse_cpu_counts_iowait_as_idle_and_ignores_guest() -> None:
    """Busy is total minus idle and iowait; guest columns are already in user and are not added again."""
    text = "cpu  100 10 50 800 40 5 5 0 30 0\ncpu0 100 10 50 800 40 5 5 0 30 0\n"
    assert parse_cpu(text) == (170, 1010)


def test_parse_cpu_accepts_old_kernels_with_four_columns() -> None:
    """A /proc/stat with only user, nice, system and idle still parses."""
    assert parse_cpu("cpu 10 0 5 85\n") == (15, 100)


def test_parse_cpu_without_aggregate_line_is_a_sampling_error() -> None:
    """A stat file without the aggregate cpu line raises SamplingError naming it."""
    with pytest.raises(SamplingError, match="aggregate cpu"):
        parse_cpu("cpu0 1 2 3 4\nintr 5\n")


def test_parse_cpu_count_counts_per_cpu_lines_only() -> None:
    """The aggregate line and other cpu-prefixed words are not counted as cores."""
    text = (FIXTURES / "full" / "stat").read_text()
    assert parse_cpu_count(text) == 2
    assert parse_cpu_count("cpu  1 2 3 4\ncpufreq 9\ncpu0 1\ncpu1 1\ncpu12 1\n") == 3


def test_parse_meminfo_converts_kib_and_keeps_unitless_counts() -> None:
    """kB values become bytes; values without a unit (huge page counts) stay as they are."""
    info = parse_meminfo("MemTotal:  2048 kB\nHugePages_Total:   7\nBroken line\n")
    assert info == {"MemTotal": 2048 * KIB, "HugePages_Total": 7}


def test_parse_psi_reads_some_and_full_avg10() -> None:
    """some and full avg10 are returned as percent figures."""
    text = "some avg10=12.50 avg60=5.00 avg300=1.00 total=1\nfull avg10=3.25 avg60=0 avg300=0 total=0\n"
    assert parse_psi(text) == (12.5, 3.25)


def test_parse_psi_without_full_line_and_with_blank_lines() -> None:
    """Old kernels' cpu file has no full line, and stray blank lines do not break the parser."""
    assert parse_psi("\nsome avg10=4.00 avg60=0.00 avg300=0.00 total=9\n\n") == (4.0, 0.0)


def test_parse_net_dev_sums_all_interfaces_but_loopback() -> None:
    """Received and sent bytes are summed over eth0 and wlan0, never lo."""
    assert parse_net_dev((FIXTURES / "full" / "net" / "dev").read_text()) == (1_200_000, 600_000)


def test_parse_net_dev_accepts_counters_glued_to_the_name() -> None:
    """Old kernels print 'eth0:123' with no space after the colon."""
    text = "h1\nh2\n  eth0:123 1 0 0 0 0 0 0 456 2 0 0 0 0 0 0\n"
    assert parse_net_dev(text) == (123, 456)


def test_parse_diskstats_counts_whole_disks_only() -> None:
    """Partitions, loop, dm, md, zram and optical devices are skipped; sectors become bytes."""
    read, written = parse_diskstats((FIXTURES / "full" / "diskstats").read_text())
    # sda + nvme0n1 + mmcblk0
    assert read == (20_000 + 10_000 + 100) * SECTOR
    assert written == (40_000 + 12_000 + 200) * SECTOR


# ----- HostReader ----------------------------------------------------------------------------------


def test_first_read_gives_levels_and_no_rates(proc_tree: Path, tmp_path: Path) -> None:
    """One read yields memory, load, uptime, PSI and core count; rates need a second read and are 0."""
    sample = HostReader(proc_tree, shm_path=tmp_path).read(100.0)
    assert sample.cpu_count == 2
    assert sample.cpu_ratio == 0.0
    assert sample.memory_total_bytes == 8_000_000 * KIB
    assert sample.memory_available_bytes == 2_000_000 * KIB
    assert sample.memory_used_ratio == pytest.approx(0.75)
    assert sample.swap_used_ratio == pytest.approx(0.25)
    assert sample.load == (1.5, 0.75, 0.25)
    assert sample.load_per_core == pytest.approx(0.75)
    assert sample.uptime_seconds == pytest.approx(12345.67)
    assert sample.psi == PsiSample(cpu_some=12.5, memory_some=3.25, memory_full=1.75, io_some=7.0, io_full=4.5)
    assert sample.net_rx_bytes_per_second == 0.0
    assert sample.disk_write_bytes_per_second == 0.0


def test_two_reads_give_cpu_ratio_and_byte_rates(proc_tree: Path, tmp_path: Path) -> None:
    """Counters 10 s apart give the busy share of the CPU and per-second network and disk rates."""
    reader = HostReader(proc_tree, shm_path=tmp_path)
    reader.read(100.0)
    advance(proc_tree)
    sample = reader.read(110.0)
    assert sample.cpu_ratio == pytest.approx(800 / 1000)
    assert sample.net_rx_bytes_per_second == pytest.approx(120_000.0)
    assert sample.net_tx_bytes_per_second == pytest.approx(50_000.0)
    assert sample.disk_read_bytes_per_second == pytest.approx(10_000 * SECTOR / 10)
    assert sample.disk_write_bytes_per_second == pytest.approx(20_000 * SECTOR / 10)


def test_counters_going_backwards_give_zero_not_negative(proc_tree: Path, tmp_path: Path) -> None:
    """After a counter reset (the later tree read first), rates and CPU clamp at zero."""
    reader = HostReader(proc_tree, shm_path=tmp_path)
    advance(proc_tree)
    reader.read(100.0)
    for name in ("stat", "net/dev", "diskstats"):
        shutil.copyfile(FIXTURES / "full" / name, proc_tree / name)
    sample = reader.read(110.0)
    assert sample.cpu_ratio == 0.0
    assert sample.net_rx_bytes_per_second == 0.0
    assert sample.disk_read_bytes_per_second == 0.0


def test_same_time_twice_gives_no_rate(proc_tree: Path, tmp_path: Path) -> None:
    """Two reads at the same instant do not divide by zero; the rates stay 0."""
    reader = HostReader(proc_tree, shm_path=tmp_path)
    reader.read(100.0)
    advance(proc_tree)
    sample = reader.read(100.0)
    assert sample.net_rx_bytes_per_second == 0.0
    assert sample.cpu_ratio == pytest.approx(0.8)


def test_reads_too_close_together_repeat_the_last_figures(proc_tree: Path, tmp_path: Path) -> None:
    """A read only a few clock ticks after the last one (too few to measure a share; it would read 0 % or 100 %)
    repeats the last CPU share and rates and keeps the older counters as the baseline for the next read."""
    reader = HostReader(proc_tree, shm_path=tmp_path)
    reader.read(100.0)
    advance(proc_tree)
    measured = reader.read(110.0)
    assert measured.cpu_ratio == pytest.approx(0.8)
    stat = proc_tree / "stat"
    # 10 ticks of idle time on 2 cores: under the 20 needed
    stat.write_text(stat.read_text().replace("cpu  1600 0 700 8200", "cpu  1600 0 700 8210", 1))
    close = reader.read(110.05)
    assert close.cpu_ratio == pytest.approx(0.8)
    assert close.net_rx_bytes_per_second == pytest.approx(measured.net_rx_bytes_per_second)
    # 30 busy and 10 idle ticks more: measured against the baseline, 30 busy of 50
    stat.write_text(stat.read_text().replace("cpu  1600 0 700 8210", "cpu  1630 0 700 8220", 1))
    later = reader.read(110.5)
    assert later.cpu_ratio == pytest.approx(30 / 50)
    assert later.net_rx_bytes_per_second == 0.0


def test_tree_without_pressure_has_no_psi() -> None:
    """A kernel without /proc/pressure yields psi=None and the other figures as usual."""
    sample = HostReader(FIXTURES / "no_pressure", shm_path=FIXTURES).read(1.0)
    assert sample.psi is None
    assert sample.memory_used_ratio == pytest.approx(0.75)


def test_unreadable_pressure_file_gives_no_psi(proc_tree: Path, tmp_path: Path) -> None:
    """A pressure file that cannot be read (PSI disabled at boot) gives psi=None, not an error."""
    (proc_tree / "pressure" / "io").unlink()
    (proc_tree / "pressure" / "io").mkdir()
    assert HostReader(proc_tree, shm_path=tmp_path).read(1.0).psi is None


def test_missing_net_and_disk_files_give_zero_rates(proc_tree: Path, tmp_path: Path) -> None:
    """Without net/dev and diskstats (some containers) the sample still comes, with zero rates."""
    reader = HostReader(proc_tree, shm_path=tmp_path)
    (proc_tree / "net" / "dev").unlink()
    (proc_tree / "diskstats").unlink()
    reader.read(1.0)
    sample = reader.read(2.0)
    assert sample.net_rx_bytes_per_second == 0.0
    assert sample.disk_write_bytes_per_second == 0.0


def test_missing_stat_is_a_sampling_error(proc_tree: Path, tmp_path: Path) -> None:
    """Without /proc/stat there is no host sample; the error names the file."""
    (proc_tree / "stat").unlink()
    with pytest.raises(SamplingError, match="stat"):
        HostReader(proc_tree, shm_path=tmp_path).read(1.0)


def test_shm_usage_comes_from_the_filesystem(proc_tree: Path, tmp_path: Path) -> None:
    """/dev/shm total and used bytes are the statvfs figures of the given path."""
    st = os.statvfs(tmp_path)
    sample = HostReader(proc_tree, shm_path=tmp_path).read(1.0)
    assert sample.shm_total_bytes == st.f_blocks * st.f_frsize
    assert 0 <= sample.shm_used_bytes <= sample.shm_total_bytes
    assert 0.0 <= sample.shm_used_ratio <= 1.0


def test_missing_shm_gives_zeros(proc_tree: Path, tmp_path: Path) -> None:
    """A host without /dev/shm reports zero bytes and a zero ratio."""
    sample = HostReader(proc_tree, shm_path=tmp_path / "absent").read(1.0)
    assert (sample.shm_total_bytes, sample.shm_used_bytes, sample.shm_used_ratio) == (0, 0, 0.0)


def test_reads_the_real_proc() -> None:
    """On this Linux host the real /proc parses into sane figures."""
    reader = HostReader()
    reader.read(0.0)
    sample = reader.read(1.0)
    assert sample.cpu_count == os.cpu_count()
    assert sample.memory_total_bytes > 0
    assert 0.0 <= sample.memory_used_ratio <= 1.0
    assert 0.0 <= sample.cpu_ratio <= 1.0
