"""`make demo`'s script: both processes start, the tour shows every strategy acting on its condition, all stop."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from config.safety import hls_root_problems
from testbed.demo import DEFAULT_DATA_DIR
from testbed.harness import pids_alive

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ("database", "memory", "cache", "connection", "cpu")


def test_demo_tour_shows_every_strategy_acting_and_stops_cleanly(tmp_path: Path) -> None:
    """Each of the five steps ends in its strategy acting with a before -> after figure; nothing is left running."""
    proc = subprocess.run(
        [sys.executable, "-m", "testbed.demo", "--duration", "1", "--port", "0", "--data-dir", str(tmp_path / "demo")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "metrics (Prometheus)" in out and "decision history" in out
    acted = {m.group(1): m.group(2) for m in re.finditer(r"=> (\w+) acted: (.*)", out)}
    assert set(acted) == set(STRATEGIES), out
    assert re.search(r"WAL [\d.]+ MiB -> 0\.0 MiB", acted["database"]), acted["database"]
    assert re.search(r"stale HLS files [1-9]\d* -> 0", acted["memory"]), acted["memory"]
    # what stays: the warmed hot routes and the camera and area services' entries behind them
    assert re.search(r"cache entries [1-9]\d{2,} -> [0-4],", acted["cache"]), acted["cache"]
    assert "stuck sessions 20 -> 0" in acted["connection"], acted["connection"]
    assert re.search(r"recorder nice [\d,]+ -> (10,)*10;", acted["cpu"]), acted["cpu"]
    # the verdicts come from the history: the measured effect of every step but the cpu one is a clear gain
    for name in ("database", "memory", "cache", "connection"):
        assert "verdict improved" in acted[name], acted[name]
    assert re.search(r"verdict (improved|neutral|regressed)", acted["cpu"]), acted["cpu"]
    assert "Tour done: 5 of 5 strategies acted on their condition." in out
    table = out.split("History:", 1)[1]
    for name, action in (
        ("database", "wal_checkpoint"),
        ("memory", "hls_prune"),
        ("cache", "cache_invalidate"),
        ("connection", "end_stuck_sessions"),
        ("cpu", "renice"),
    ):
        assert re.search(rf"\d+  {name} +{action} +enforce +applied", table), table
    assert "demo stopped" in out
    backend_pid = int(re.search(r"stand-in backend .*\(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
    daemon_pid = int(re.search(r"daemon +pid (\d+)", out).group(1))  # type: ignore[union-attr]
    recorders = [int(p) for p in re.search(r"recorder pids ([\d ]+)", out).group(1).split()]  # type: ignore[union-attr]
    assert recorders
    assert pids_alive([backend_pid, daemon_pid, *recorders]) == []


def test_the_demos_default_data_directory_is_one_the_daemon_accepts() -> None:
    """`make demo` without --data-dir: the stand-in's HLS directory there passes the daemon's HLS root rules
    (inside the checkout it would be refused as the daemon's own installation, and the demo would not start)."""
    data = DEFAULT_DATA_DIR.resolve()
    problems = hls_root_problems(
        data / "testbed" / "hls",
        database=data / "testbed" / "data" / "cctv.db",
        state_directory=data / "state",
        allow_disk=True,
    )
    assert problems == []
