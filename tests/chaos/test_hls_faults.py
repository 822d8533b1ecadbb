"""The HLS directory under faults: gone, replaced by a file, replaced by a link to elsewhere.

The daemon's HLS root here is a copy of the testbed's live tree, so the fault is not undone by the testbed
writing its next segment. Links inside the tree, permission-denied unlinks and files vanishing mid-prune
are covered by tests/strategies/test_hls_prune.py and tests/integration/test_memory_strategy.py.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import structlog

from testbed.harness import TestbedProcess, wait_until
from tests.chaos.faults import lost_rows, recover, report, row_ids, served, tracebacks
from tests.harness import daemon_env, running_daemon

REASONS = {
    "missing": "does not exist",
    "file": "is not a directory",
    "symlink": "is a symbolic link; refusing to follow it",
}


def plant_outside(outside: Path) -> Path:
    """A stream-shaped directory outside the root whose old segment a followed link would make stale."""
    stream = outside / "stream"
    stream.mkdir(parents=True)
    victim = stream / "seg-old.mp4"
    victim.write_bytes(b"\0" * 4096)
    old = time.time() - 3600
    os.utime(victim, (old, old))
    return victim


def break_root(kind: str, root: Path, aside: Path, outside: Path) -> None:
    """Move the root away and put the fault in its place."""
    os.replace(root, aside)
    if kind == "file":
        root.write_text("not a directory\n")
    elif kind == "symlink":
        root.symlink_to(outside, target_is_directory=True)


def restore_root(root: Path, aside: Path) -> None:
    """Remove the fault and put the real root back."""
    if root.is_symlink() or root.is_file():
        root.unlink()
    os.replace(aside, root)


@pytest.mark.parametrize("kind", list(REASONS))
async def test_hls_root_fault_is_reported_nothing_outside_is_touched_and_it_recovers(
    testbed: TestbedProcess, tmp_path: Path, kind: str
) -> None:
    """With the HLS root missing, a file or a link, the hls source is down with the reason, a forced memory round
    removes nothing (least of all through the link), the API answers, and the source comes back."""
    wait_until(lambda: testbed.state()["live_streams"] >= 1, timeout=15)
    root, aside, outside = tmp_path / "hls", tmp_path / "hls.aside", tmp_path / "outside"
    shutil.copytree(testbed.hls_dir, root, symlinks=True)
    victim = plant_outside(outside)
    env = daemon_env(
        testbed,
        tmp_path / "state",
        CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY=str(root),
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_STALE_AGE_SECONDS="60",
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_BUDGET_BYTES="1048576",
    )
    state_db = tmp_path / "state" / "state.db"
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(env) as daemon:
            assert daemon.engine.latest is not None and daemon.engine.latest.sources["hls"].up
            before = row_ids(state_db)
            break_root(kind, root, aside, outside)
            try:
                snap = await daemon.sample_now()
                await daemon.engine.request_round(trigger="manual", strategy="memory", manual=True)
                during = await served(daemon)
                assert victim.is_file()
            finally:
                restore_root(root, aside)
            back = await recover(daemon, "hls")
            lost = lost_rows(before, row_ids(state_db))
    status = snap.sources["hls"]
    assert status.up is False and status.error is not None and status.error.endswith(REASONS[kind])
    assert during.health_status == 200 and during.metrics_status == 200
    assert during.source_up["hls"] == 0.0 and during.sources["hls"]["error"] == status.error
    assert lost == 0
    assert tracebacks(logs) == []
    report(f"hls root {kind}", rows_lost=lost, recovery_samples=back.samples, recovery_seconds=back.seconds)
