"""Each scenario changes /_testbed/state as promised, and `reset` undoes it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.harness import TestbedFactory, TestbedProcess, pids_alive, wait_until

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def tb(make_testbed: TestbedFactory) -> TestbedProcess:
    """A testbed with fast HLS ticks and 16 KiB segments."""
    return make_testbed("--segment-seconds", "0.2", "--segment-bytes", "16384", "--rate-limit-scale", "10")


@pytest.fixture(autouse=True)
def clean(tb: TestbedProcess) -> Iterator[None]:
    """Each test starts from, and leaves, the reset state."""
    tb.scenario("reset")
    yield
    tb.scenario("reset")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_wal_growth_makes_and_keeps_a_large_wal(tb: TestbedProcess) -> None:
    """The WAL reaches the requested size and stays there after more writes; reset truncates it."""
    assert tb.state()["wal_bytes"] < 2 * MIB
    result = tb.scenario("wal_growth", mb=3)
    assert result["wal_bytes"] >= 3 * MIB
    session = tb.login()
    tb.request("POST", "/api/viewer/start", json_body={"cameraId": 1}, csrf=session.csrf)
    assert tb.state()["wal_bytes"] >= 3 * MIB
    with contextlib.closing(sqlite3.connect(f"file:{tb.database}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tb.scenario("reset")
    assert tb.state()["wal_bytes"] == 0


def test_stale_segments_and_outside_links(tb: TestbedProcess) -> None:
    """stale_segments creates exactly `count` stale files and links leading outside the HLS root."""
    wait_until(lambda: tb.state()["live_streams"] == 4, timeout=10)
    before = tb.state()
    assert before["stale_hls_files"] == 0
    result = tb.scenario("stale_segments", count=30, age_seconds=600)
    assert result["created"] == 30
    assert result["in_stopped_dir"] + result["in_live_dirs"] == 30
    assert result["in_live_dirs"] > 0
    after = tb.state()
    assert after["stale_hls_files"] == 30
    assert after["stale_hls_bytes"] == result["bytes"]
    assert tb.state(stale_age=3600)["stale_hls_files"] == 0
    stopped = Path(result["stopped_dir"])
    assert not any(name.endswith(".m3u8") for name in os.listdir(stopped))
    hls_root = tb.hls_dir.resolve()
    for link in map(Path, result["symlinks"]):
        assert link.is_symlink()
        assert hls_root not in link.resolve().parents
    tb.scenario("reset")
    assert tb.state()["stale_hls_files"] == 0
    assert not stopped.exists()
    assert not any(Path(link).is_symlink() for link in result["symlinks"])


def test_cache_junk_fills_the_cache(tb: TestbedProcess) -> None:
    """cache_junk adds that many route entries (plus the camera service's list); each is a route miss."""
    result = tb.scenario("cache_junk", entries=250)
    state = tb.state()
    assert (result["added"], state["cache_size"]) == (250, 251)
    # 250 route misses and the first service lookup; the other 249 service lookups hit
    assert (state["cache_misses"], state["cache_hits"]) == (251, 249)


def test_stuck_sessions_are_stale(tb: TestbedProcess) -> None:
    """stuck_sessions inserts active sessions older than 60 s and switches the sweep off."""
    tb.scenario("stuck_sessions", count=20, age_seconds=600)
    state = tb.state()
    assert (state["active_sessions"], state["stale_active_sessions"], state["sweep_enabled"]) == (20, 20, False)
    tb.scenario("reset")
    state = tb.state()
    assert (state["active_sessions"], state["sweep_enabled"]) == (0, True)


def test_hot_recorder_looks_like_ffmpeg_and_burns_cpu(tb: TestbedProcess) -> None:
    """The fake recorder is detached, named ffmpeg with the segment options and a .mp4.partial output."""
    pids = tb.scenario("hot_recorder", count=1)["pids"]
    assert tb.state()["recorders"] == pids
    pid = pids[0]

    def argv_of() -> list[str] | None:
        # between fork and exec (a loaded host can stretch it) the child's command line is not its own yet
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        return argv if argv[0] == "ffmpeg" else None

    argv = wait_until(argv_of, timeout=10)
    joined = " ".join(argv)
    assert "-f segment -segment_time 600" in joined
    output = Path(argv[-1])
    assert output.name.endswith(".mp4.partial")
    assert output.parent.name == "pending"
    assert output.parent.parent.name.startswith("camera")
    assert output.is_relative_to(tb.data_dir / "recordings")
    assert os.getsid(pid) == pid
    # The short name is set by the process itself once Python has started.
    wait_until(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "ffmpeg", timeout=10)
    start = cpu_ticks(pid)
    wait_until(lambda: cpu_ticks(pid) >= start + 20, timeout=10)
    stopped = tb.scenario("recorders_stop")["stopped"]
    assert stopped == pids
    assert pids_alive(pids) == []
    assert tb.state()["recorders"] == []


def test_close_wait_leak(tb: TestbedProcess) -> None:
    """close_wait leaves that many testbed sockets in CLOSE_WAIT towards the MediaMTX port."""
    result = tb.scenario("close_wait", count=25)
    assert (result["opened"], result["close_wait"]) == (25, 25)
    assert tb.state()["close_wait_leaked"] == 25
    fds = [os.readlink(fd) for fd in Path(f"/proc/{tb.pid}/fd").iterdir() if fd.name.isdigit()]
    assert sum(target.startswith("socket:") for target in fds) >= 25
    assert tb.scenario("close_wait_release")["released"] == 25
    wait_until(lambda: tb.state()["close_wait_leaked"] == 0, timeout=30)


def test_reset_undoes_everything(tb: TestbedProcess) -> None:
    """After several scenarios, reset returns every figure to its quiet value."""
    tb.scenario("stale_segments", count=10)
    tb.scenario("cache_junk", entries=10)
    tb.scenario("stuck_sessions", count=3)
    tb.scenario("hot_recorder", count=1)
    tb.scenario("close_wait", count=5)
    tb.scenario("mediamtx_down")
    result = tb.scenario("reset")
    assert result["recorders_stopped"] and result["close_wait_released"] == 5
    state = tb.state()
    quiet = {
        "stale_hls_files": 0,
        "active_sessions": 0,
        "cache_size": 0,
        "recorders": [],
        "close_wait_leaked": 0,
        "sweep_enabled": True,
        "mediamtx_up": True,
    }
    assert {key: state[key] for key in quiet} == quiet


def test_unknown_scenario_and_bad_parameters(tb: TestbedProcess) -> None:
    """Unknown scenarios are 404 and out-of-range parameters 400, both as JSON."""
    unknown = tb.request("POST", "/_testbed/scenario/nope", json_body={})
    assert unknown.status == 404
    assert unknown.json()["ok"] is False
    bad = tb.request("POST", "/_testbed/scenario/cache_junk", json_body={"entries": -1})
    assert bad.status == 400
    assert "entries" in bad.json()["error"]
