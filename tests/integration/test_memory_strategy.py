"""The memory strategy against the testbed: real HLS files, the real response cache, the real process."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import secrets
from pathlib import Path
from typing import Any

import psutil
import pytest

from metrics.hls import playlist_references
from optimizer.app import Daemon
from optimizer.engine import RoundResult
from testbed.harness import TestbedProcess, wait_until
from tests.harness import daemon_env, running_daemon, sample_times, unwritable

MIB = 1024 * 1024
STALE = 200
STALE_AGE = 120.0
_SEG_NUMBER = re.compile(r"_seg(\d+)\.mp4$")


def env_for(tb: TestbedProcess, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Daemon environment: immediate verification, no self-cleanup unless a test asks for it."""
    settings = {
        # the other strategies stay out of the way: each test looks at the memory strategy alone
        "CCTV_OPTIMIZER_STRATEGIES__DATABASE__ENABLED": "false",
        "CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED": "false",
        "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__ENABLED": "false",
        "CCTV_OPTIMIZER_STRATEGIES__CACHE__ENABLED": "false",
        "ENABLE_GC": "false",
        "CCTV_OPTIMIZER_STRATEGIES__MEMORY__SETTLE_SECONDS": "0",
        "CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_STALE_AGE_SECONDS": str(STALE_AGE),
    }
    return daemon_env(tb, tmp_path / "state", **{**settings, **extra})


def stale_files(tb: TestbedProcess) -> int:
    """Stale HLS files by the testbed's own count, at the strategy's stale age."""
    return int(tb.state(stale_age=STALE_AGE)["stale_hls_files"])


def with_stale_segments(tb: TestbedProcess) -> tuple[dict[str, Any], int]:
    """Leave STALE old segments (half in a stopped stream, half in live ones); return the scenario and a budget.

    The budget sits between the live streams' size and the size with the stale files, so only the stale
    files put the HLS directory over it.
    """
    wait_until(lambda: tb.state()["live_streams"] >= 2, timeout=15)
    scenario = tb.scenario("stale_segments", count=STALE, age_seconds=600)
    state = tb.state(stale_age=STALE_AGE)
    assert state["stale_hls_files"] == STALE
    assert scenario["in_live_dirs"] > 0 and scenario["in_stopped_dir"] > 0
    return scenario, int(state["hls_bytes"] - state["stale_hls_bytes"] // 2)


def live_dirs(tb: TestbedProcess) -> list[Path]:
    """Stream directories with a fresh media playlist."""
    out = []
    for entry in os.scandir(tb.hls_dir):
        playlist = Path(entry.path) / "video_stream.m3u8"
        if entry.is_dir(follow_symlinks=False) and playlist.is_file():
            out.append(Path(entry.path))
    return out


def live_files(tb: TestbedProcess) -> dict[Path, tuple[str, set[str]]]:
    """Per live stream: the current run's prefix and the files of that run."""
    view: dict[Path, tuple[str, set[str]]] = {}
    for d in live_dirs(tb):
        refs = playlist_references((d / "video_stream.m3u8").read_text())
        prefix = next(r for r in refs if r.endswith("_video_init.mp4")).removesuffix("_video_init.mp4")
        view[d] = (prefix, {n for n in os.listdir(d) if n.startswith(prefix + "_") and not n.endswith(".tmp")})
    return view


def live_intact(before: dict[Path, tuple[str, set[str]]]) -> bool:
    """Playlists, init segments and every referenced segment exist; what went missing rotated out by itself."""
    for d, (prefix, names) in before.items():
        present = set(os.listdir(d))
        refs = playlist_references((d / "video_stream.m3u8").read_text())
        if not {"index.m3u8", "video_stream.m3u8", f"{prefix}_video_init.mp4"} <= present:
            return False
        if not refs <= present | {"video_stream.m3u8"}:
            return False
        oldest = min(int(m.group(1)) for r in refs if (m := _SEG_NUMBER.search(r)))
        for name in names - present:
            m = _SEG_NUMBER.search(name)
            if m is None or int(m.group(1)) >= oldest:
                return False
    return True


def assert_links_and_outside_survive(scenario: dict[str, Any]) -> None:
    """The links the scenario planted and everything they point at are still there."""
    assert all(os.path.lexists(link) for link in scenario["symlinks"])
    assert all(Path(f).is_file() for f in scenario["outside_files"])
    assert (Path(scenario["outside_target"]) / "keep").is_dir()


def memory_rows(daemon: Daemon) -> list[Any]:
    """History rows of the memory strategy."""
    return daemon.store.decisions(strategy="memory")


def round_rows(daemon: Daemon, result: RoundResult) -> list[Any]:
    """The memory strategy's rows from one round (other strategies may act in the same round)."""
    rows = [daemon.store.decision(i) for i in result.decision_ids]
    return [r for r in rows if r is not None and r.strategy == "memory"]


def one_row(daemon: Daemon, result: RoundResult) -> Any:
    """The memory strategy's only row from one round."""
    rows = round_rows(daemon, result)
    assert len(rows) == 1, rows
    return rows[0]


def journal(daemon: Daemon) -> list[str]:
    """Statuses of the memory strategy's journal records."""
    return [e.status for e in daemon.store.journal() if e.strategy == "memory"]


# ----- HLS --------------------------------------------------------------------------------------------------------


async def test_stale_segments_are_pruned_once_and_live_files_remain(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Over its HLS budget with stale files: one prune after N of M samples, measured, live files and links intact."""
    scenario, budget = with_stale_segments(testbed)
    bytes_before = testbed.state()["hls_bytes"]
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_BUDGET_BYTES=str(budget))
    async with running_daemon(env) as daemon:
        before = live_files(testbed)
        assert len(before) >= 2
        # the first sample alone is not enough (N=2 of M=3)
        assert round_rows(daemon, await daemon.engine.request_round(trigger="scheduled")) == []
        assert stale_files(testbed) == STALE
        await sample_times(daemon, 1)
        result = await daemon.engine.request_round(trigger="scheduled")
        row = one_row(daemon, result)
        assert stale_files(testbed) == 0
        wait_until(lambda: live_intact(before), timeout=30)
        await daemon.sample_now()
        await daemon.engine.verify_due()
        row = daemon.store.decision(row.id)
        assert row is not None
        assert (row.strategy, row.action, row.outcome, row.mode) == ("memory", "hls_prune", "applied", "enforce")
        assert row.thresholds["hls_bytes"]["enter"] == budget
        assert row.signals["hls_bytes"] >= budget
        assert row.changes[0]["before"] == f"{STALE} files"
        assert row.changes[0]["after"].startswith("0 files")
        assert row.verdict == "improved"
        assert row.verdict_detail is not None
        assert row.verdict_detail["signal"] == "hls_bytes"
        assert row.verdict_detail["after"] < budget
        assert row.verdict_detail["change"] >= 0.5 * row.expected["amount"]  # type: ignore[index]
        assert journal(daemon) == ["done"]
    assert testbed.state()["hls_bytes"] < bytes_before
    assert_links_and_outside_survive(scenario)


@pytest.mark.parametrize(
    ("setting", "outcome"),
    [
        pytest.param({"ENABLE_PERFORMANCE_OPTIMIZATION": "false"}, "observed", id="observe"),
        pytest.param({"CCTV_OPTIMIZER_ENGINE__MODE": "dry_run"}, "dry_run", id="dry-run"),
    ],
)
async def test_observe_and_dry_run_change_nothing(
    testbed: TestbedProcess, tmp_path: Path, setting: dict[str, str], outcome: str
) -> None:
    """In observe mode the armed strategy is only recorded; in dry_run the prune is planned; no file goes."""
    scenario, budget = with_stale_segments(testbed)
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_BUDGET_BYTES=str(budget), **setting)
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 2)
        result = await daemon.engine.request_round(trigger="scheduled")
        rows = memory_rows(daemon)
        assert [r.outcome for r in rows] == [outcome]
        assert rows[0].id in result.decision_ids
        assert [c["action"] for c in rows[0].changes] == ([] if outcome == "observed" else ["hls_prune"])
        assert journal(daemon) == []
    assert stale_files(testbed) == STALE
    assert_links_and_outside_survive(scenario)


async def test_nothing_happens_without_stale_files_or_pressure(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Live streams under their budget and a small cache: rounds record nothing for memory."""
    wait_until(lambda: testbed.state()["live_streams"] >= 2, timeout=15)
    live = testbed.state()["hls_bytes"]
    env = env_for(
        testbed,
        tmp_path,
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_BUDGET_BYTES=str(max(MIB, live * 4)),
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__CACHE_ENTRIES_LIMIT="300",
    )
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 3)
        result = await daemon.engine.request_round(trigger="scheduled")
        assert memory_rows(daemon) == []
        assert not daemon.engine.runtimes["memory"].detector.armed
        assert round_rows(daemon, result) == []
    assert testbed.state()["live_streams"] >= 2


async def test_no_second_prune_within_the_cooldown(testbed: TestbedProcess, tmp_path: Path) -> None:
    """New stale files inside the cooldown are recorded as skipped and stay."""
    _, budget = with_stale_segments(testbed)
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_BUDGET_BYTES=str(budget))
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        first = await daemon.engine.request_round(trigger="scheduled")
        assert one_row(daemon, first).outcome == "applied"
        testbed.scenario("stale_segments", count=STALE, age_seconds=600)
        assert stale_files(testbed) == STALE
        await sample_times(daemon, 2)
        second = await daemon.engine.request_round(trigger="scheduled")
        row = one_row(daemon, second)
        assert row is not None and row.strategy == "memory" and row.outcome == "skipped_cooldown"
        assert len([r for r in memory_rows(daemon) if r.outcome == "applied"]) == 1
    assert stale_files(testbed) == STALE


async def test_permission_denied_fails_the_prune_and_removes_nothing(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A stream directory that refuses unlinks and whose files refuse writes: recorded as failed with the reason,
    every stale file still there."""
    scenario, budget = with_stale_segments(testbed)
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_BUDGET_BYTES=str(budget))
    stopped = Path(scenario["stopped_dir"])
    inside = [Path(entry.path) for entry in os.scandir(stopped)]
    with contextlib.ExitStack() as locks:
        for path in (*inside, stopped):
            locks.enter_context(unwritable(path))
        async with running_daemon(env) as daemon:
            await sample_times(daemon, 1)
            result = await daemon.engine.request_round(trigger="scheduled")
            row = one_row(daemon, result)
            assert row is not None and row.strategy == "memory" and row.outcome == "failed"
            assert (
                row.error is not None and "permission denied" in row.error and scenario["stopped_stream"] in row.error
            )
            assert journal(daemon) == ["failed"]
            assert daemon.engine.runtimes["memory"].consecutive_failures == 1
        assert stale_files(testbed) == STALE


# ----- backend cache ----------------------------------------------------------------------------------------------


async def test_cache_junk_is_invalidated_and_the_hot_endpoints_warmed(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A cache inflated by junk query strings is cut back to the warmed hot endpoints, and the row measures it."""
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__MEMORY__CACHE_ENTRIES_LIMIT="300")
    testbed.scenario("cache_junk", entries=600)
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        size_before = testbed.state()["cache_size"]
        assert size_before > 600
        result = await daemon.engine.request_round(trigger="scheduled")
        state = testbed.state()
        # the two hot endpoints, filled again by the warming, and the services' entries behind them
        assert state["cache_size"] == 4
        await daemon.sample_now()
        await daemon.engine.verify_due()
        row = daemon.store.decision(one_row(daemon, result).id)
        assert row is not None
        assert (row.strategy, row.action, row.outcome) == ("memory", "cache_invalidate", "applied")
        assert row.changes[0]["before"] == f"{size_before} entries"
        # what the invalidation leaves: the area route's entry and the services' entries (none of them junk)
        left, warmed = row.changes[0]["after"].split(" entries, then ")
        assert (int(left) <= 3, warmed) == (True, "2 warmed")
        assert row.verdict == "improved"
        assert row.verdict_detail is not None and row.verdict_detail["after"] <= 4
        assert row.verdict_detail["before"] >= 600


async def test_a_rate_limited_backend_fails_the_cache_cleanup(testbed: TestbedProcess, tmp_path: Path) -> None:
    """With the backend answering 429, the cleanup is recorded as failed with the reason and the cache is intact."""
    env = env_for(testbed, tmp_path, CCTV_OPTIMIZER_STRATEGIES__MEMORY__CACHE_ENTRIES_LIMIT="300")
    testbed.scenario("cache_junk", entries=600)
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        size_before = testbed.state()["cache_size"]
        # spend this IP's per-minute allowance for /api/cache/* the way any other client on the host could
        for _ in range(150):
            if testbed.request("GET", "/api/cache/stats").status == 429:
                break
        else:
            pytest.fail("the testbed never rate limited")
        result = await daemon.engine.request_round(trigger="scheduled")
        row = one_row(daemon, result)
        assert row is not None and row.strategy == "memory" and row.outcome == "failed"
        assert row.error is not None and "429" in row.error
        assert testbed.state()["cache_size"] == size_before


# ----- the daemon itself ------------------------------------------------------------------------------------------


async def test_own_rss_over_gc_threshold_is_collected(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Cyclic garbage pushes the daemon over GC_THRESHOLD of its budget; the self-cleanup brings it back."""
    budget = 1024 * MIB
    line = psutil.Process().memory_info().rss + 96 * MIB
    env = env_for(
        testbed,
        tmp_path,
        ENABLE_GC="true",
        GC_THRESHOLD=f"{line / budget:.6f}",
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__OWN_BUDGET_BYTES=str(budget),
    )
    gc.disable()
    try:
        async with running_daemon(env) as daemon:
            for _ in range(256):
                cycle: list[Any] = [bytearray(MIB)]
                cycle.append(cycle)
            del cycle
            await sample_times(daemon, 2)
            rss_before = psutil.Process().memory_info().rss
            assert rss_before > line
            result = await daemon.engine.request_round(trigger="scheduled")
            assert psutil.Process().memory_info().rss < line
            await daemon.sample_now()
            await daemon.engine.verify_due()
            row = daemon.store.decision(one_row(daemon, result).id)
            assert row is not None
            assert (row.strategy, row.action, row.outcome) == ("memory", "gc_collect", "applied")
            assert row.verdict == "improved"
            assert row.verdict_detail is not None and row.verdict_detail["after"] < line
    finally:
        gc.enable()


# ----- backend restart (disruptive, opt-in) -----------------------------------------------------------------------


def restart_env(tb: TestbedProcess, tmp_path: Path, command: str, **extra: str) -> dict[str, str]:
    """A backend RSS limit the testbed is over, and a restart command with the disruptive opt-in."""
    return env_for(
        tb,
        tmp_path,
        CCTV_OPTIMIZER_ENGINE__ALLOW_DISRUPTIVE="true",
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__BACKEND_RSS_LIMIT_BYTES=str(16 * MIB),
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__RESTART_COMMAND=command,
        **extra,
    )


async def test_a_failing_restart_command_is_recorded_and_the_backend_keeps_running(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """The command exiting non-zero: a failed disruptive decision with its output; the same backend process runs."""
    env = restart_env(testbed, tmp_path, "sh -c 'echo pm2: process or namespace not found >&2; exit 3'")
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        assert daemon.engine.latest is not None and daemon.engine.latest.backend is not None
        assert daemon.engine.latest.backend.pid == testbed.pid
        result = await daemon.engine.request_round(trigger="scheduled")
        row = one_row(daemon, result)
        assert row is not None and (row.strategy, row.action, row.outcome) == ("memory", "backend_restart", "failed")
        assert row.changes[0]["risk"] == "disruptive"
        assert row.error == "restart command exited with 3: pm2: process or namespace not found"
    assert testbed.returncode is None
    assert testbed.state()["pid"] == testbed.pid


async def test_the_restart_waits_for_a_quiet_moment(testbed: TestbedProcess, tmp_path: Path) -> None:
    """With a viewer watching and no kill in sight the restart is deferred: a finding, no decision, no command."""
    marker = tmp_path / "restarted"
    env = restart_env(
        testbed, tmp_path, f"touch {marker}", CCTV_OPTIMIZER_STRATEGIES__MEMORY__RESTART_QUIET_MAX_VIEWERS="0"
    )
    answer = testbed.request("POST", "/api/viewer/start", json_body={"cameraId": 1}, csrf=secrets.token_hex(32))
    assert answer.status == 200
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        assert daemon.engine.latest is not None and daemon.engine.latest.sessions is not None
        assert daemon.engine.latest.sessions.active == 1
        await daemon.engine.request_round(trigger="scheduled")
        assert memory_rows(daemon) == []
        finding = daemon.engine.findings["memory-restart-deferred"]
        assert "1 viewers are watching" in finding.summary
    assert not marker.exists()
