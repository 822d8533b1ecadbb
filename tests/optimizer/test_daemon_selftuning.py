"""The self-tuning parts wired into the daemon: baselines in the API and metrics, the interval metric, revert on exit."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from optimizer.app import Daemon
from optimizer.cadence import largest_factor
from optimizer.clock import FakeClock
from strategies.cpu import CpuStrategy
from testbed.harness import TestbedProcess
from tests.harness import api_client, daemon_env, running_daemon
from tests.optimizer.conftest import recorder_env
from tests.optimizer.fakes import SnapshotBuilder


def journal_statuses(state_db: Path, strategy: str) -> list[str]:
    """The status of each journal record of ``strategy``, oldest first (read-only)."""
    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT status FROM journal WHERE strategy = ? ORDER BY id", (strategy,))]
    finally:
        conn.close()


@pytest.mark.parametrize("revert_on_exit", [True, False])
async def test_revert_on_exit_restores_a_reniced_recorder_on_a_clean_stop(
    testbed: TestbedProcess,
    tmp_path: Path,
    recorder: tuple[Path, subprocess.Popen[bytes]],
    revert_on_exit: bool,
) -> None:
    """With revert_on_exit the engine reverts the cpu renice when the daemon stops; without it the recorder stays low."""
    root, process = recorder
    state = tmp_path / "state"
    env = daemon_env(
        testbed,
        state,
        **recorder_env(root),
        CCTV_OPTIMIZER_ENGINE__REVERT_ON_EXIT="true" if revert_on_exit else "false",
    )
    clock = FakeClock()
    async with running_daemon(env, clock=clock) as daemon:
        daemon.engine.refresh = None  # the requested round plans from the injected sample, not a real one
        daemon.engine.on_snapshot(SnapshotBuilder(clock).build(cpu=0.99))  # the host is hot
        result = await daemon.engine.request_round(trigger="manual", strategy="cpu", manual=True)
        assert len(result.decision_ids) == 1
        assert os.getpriority(os.PRIO_PROCESS, process.pid) == 10
        assert journal_statuses(state / "state.db", "cpu") == ["done"]
    assert os.getpriority(os.PRIO_PROCESS, process.pid) == (0 if revert_on_exit else 10)
    assert journal_statuses(state / "state.db", "cpu") == (["reverted"] if revert_on_exit else ["done"])


async def test_learned_baselines_show_in_get_strategies_and_as_metrics(testbed: TestbedProcess, tmp_path: Path) -> None:
    """After enough samples the p95 baselines are in GET /strategies, in cctv_optimizer_baseline and in triggers."""
    clock = FakeClock()
    async with (
        running_daemon(daemon_env(testbed, tmp_path / "state"), clock=clock) as daemon,
        api_client(daemon) as http,
    ):
        assert daemon.engine.baselines == {}
        for _ in range(31):  # the learner needs 30 samples of a signal
            clock.advance(5.0)
            await daemon.sample_now()
        learned = dict(daemon.engine.baselines)
        # the probe is timed on the (fake) clock, so the learned response time is exact: zero
        assert learned == {"response_time_seconds": 0.0, "tcp_established": learned["tcp_established"]}
        async with http.get("/strategies") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["baselines"] == learned
        for signal, value in learned.items():
            assert daemon.registry.get_sample_value("cctv_optimizer_baseline", {"signal": signal}) == value


async def test_the_current_sample_interval_is_a_metric(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Every sample publishes the adapted interval as cctv_optimizer_sample_interval_seconds, within its bounds."""
    clock = FakeClock()
    async with running_daemon(daemon_env(testbed, tmp_path / "state"), clock=clock) as daemon:
        seen = []
        for _ in range(3):
            clock.advance(1.0)
            await daemon.sample_now()
            value = daemon.registry.get_sample_value("cctv_optimizer_sample_interval_seconds")
            assert value == daemon.sample_interval
            seen.append(value)
        low = daemon.settings.sampler.min_interval_ms / 1000
        high = daemon.settings.sampler.max_interval_ms / 1000
        assert all(low <= v <= high for v in seen)


def cpu_factor_strategy(daemon: Daemon) -> CpuStrategy:
    """The daemon's cpu strategy."""
    strategy = daemon.engine.runtimes["cpu"].strategy
    assert isinstance(strategy, CpuStrategy)
    return strategy


async def test_a_hot_host_stretches_the_sample_interval_until_the_cpu_strategy_restores(
    testbed: TestbedProcess, tmp_path: Path, recorder: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    """While the cpu strategy holds (factor 2) the interval in use and its metric double; after restore they do not."""
    # a recorder to lower: on a host without one the strategy plans nothing, so it never stretches sampling
    env = daemon_env(testbed, tmp_path / "state", **recorder_env(recorder[0]))
    clock = FakeClock()
    snapshots = SnapshotBuilder(clock)
    async with running_daemon(env, clock=clock) as daemon:
        daemon.engine.refresh = None  # the requested rounds plan from the injected samples, not a real one
        high = daemon.settings.sampler.max_interval_ms / 1000
        await daemon.sample_now()
        assert daemon.sample_interval == daemon.adaptive_interval  # nothing asks for a stretch yet

        daemon.engine.on_snapshot(snapshots.build(cpu=0.99))  # the host is hot
        result = await daemon.engine.request_round(trigger="manual", strategy="cpu", manual=True)
        assert len(result.decision_ids) == 1
        assert cpu_factor_strategy(daemon).sample_interval_factor == 2.0
        assert largest_factor(daemon.engine.watches()) == 2.0
        for _ in range(3):
            clock.advance(1.0)
            await daemon.sample_now()
            assert daemon.sample_interval == pytest.approx(min(high, 2 * daemon.adaptive_interval))
            assert daemon.registry.get_sample_value("cctv_optimizer_sample_interval_seconds") == daemon.sample_interval

        clock.advance(daemon.settings.engine.cooldown_max_seconds + 1)  # past any cooldown
        for _ in range(daemon.settings.detection.window_samples):
            clock.advance(1.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.1))  # calm for the whole window
        result = await daemon.engine.request_round(trigger="manual", strategy="cpu", manual=True)
        assert len(result.decision_ids) == 1
        assert cpu_factor_strategy(daemon).sample_interval_factor == 1.0
        clock.advance(1.0)
        await daemon.sample_now()
        assert daemon.sample_interval == daemon.adaptive_interval
        assert daemon.registry.get_sample_value("cctv_optimizer_sample_interval_seconds") == daemon.adaptive_interval


async def test_the_last_hour_baseline_survives_a_restart_of_the_daemon(testbed: TestbedProcess, tmp_path: Path) -> None:
    """The last-hour baselines saved by one run are the triggers' baselines right after the next run starts."""
    clock = FakeClock()
    state = tmp_path / "state"
    env = daemon_env(testbed, state)
    async with running_daemon(env, clock=clock) as daemon:
        while daemon.engine.latest is None or daemon.engine.latest.seq < 60:  # saved every 60 samples
            clock.advance(5.0)
            await daemon.sample_now()
        learned = dict(daemon.engine.baselines)
        assert set(learned) == {"response_time_seconds", "tcp_established"}
    clock.advance(60.0)
    async with running_daemon(env, clock=clock) as again:
        # start() takes one sample: far too few to learn from, so these are the restored values
        assert dict(again.engine.baselines) == learned
        assert (
            again.registry.get_sample_value("cctv_optimizer_baseline", {"signal": "tcp_established"})
            == (learned["tcp_established"])
        )
