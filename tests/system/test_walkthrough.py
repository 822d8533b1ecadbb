"""The fresh-host walk-through (scripts/walkthrough.py) runs to its end: install, check, start, command, watch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.staging import can_build_wheel, clean_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "walkthrough.py"
ARTIFACTS = ROOT / "tests" / "artifacts" / "walkthrough"
CHROMIUM = Path("/usr/bin/chromium")


def test_walkthrough_on_a_staged_root() -> None:
    """Staged install, check-config refusing a broken env file then accepting it, the daemon as nobody, the
    installed CLI with the installed token, a dashboard screenshot, a clean stop: every step as expected."""
    for reason in (
        can_build_wheel(),
        None if os.access(CHROMIUM, os.X_OK) else f"{CHROMIUM} is missing (make debs installs chromium)",
        None if os.geteuid() == 0 else "the walk-through hands files to the service user, which needs root",
    ):
        if reason is not None:
            print(reason)
            pytest.skip(reason)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard.png").unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(ARTIFACTS)],
        env={**clean_env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    transcript = proc.stdout + proc.stderr
    (ARTIFACTS / "transcript.txt").write_text(transcript, encoding="utf-8")
    assert proc.returncode == 0, transcript[-6000:]
    for step in range(1, 9):
        assert f"== {step}. " in transcript
    assert "(exit 78)" in transcript and "did you mean MEMORY_THRESHOLD?" in transcript
    assert "configuration is valid; files checked for user nobody" in transcript
    assert "--reuid=65534" in transcript or "the daemon runs as" in transcript
    assert "database: mode observe, breaker closed" in transcript
    assert "walk-through complete" in transcript and "daemon exited 0" in transcript
    assert (ARTIFACTS / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
