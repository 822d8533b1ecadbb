"""`make demo`'s script: both processes start, the tour shows the database strategy acting, both stop."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from testbed.harness import pids_alive

ROOT = Path(__file__).resolve().parents[2]


def test_demo_tour_acts_and_stops_cleanly(tmp_path: Path) -> None:
    """The demo prints where to look, the WAL step ends in an applied checkpoint, and nothing is left running."""
    proc = subprocess.run(
        [sys.executable, "-m", "testbed.demo", "--duration", "2", "--port", "0", "--data-dir", str(tmp_path / "demo")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "metrics (Prometheus)" in out and "decision history" in out
    assert "database   applied" in out
    assert "verdict=improved" in out
    assert "demo stopped" in out
    backend_pid = int(re.search(r"stand-in backend .*\(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
    daemon_pid = int(re.search(r"daemon +pid (\d+)", out).group(1))  # type: ignore[union-attr]
    assert pids_alive([backend_pid, daemon_pid]) == []
