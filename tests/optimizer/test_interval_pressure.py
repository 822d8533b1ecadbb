"""What the adaptive sample interval reacts to: not the daemon's own RSS, nor a strategy that asks for a stretch or
cannot act; the others' lines still tighten it."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from metrics.snapshot import OwnSample
from optimizer.app import Daemon
from optimizer.cadence import CALM_PROXIMITY, signal_proximity
from optimizer.clock import FakeClock
from strategies.cpu import CpuStrategy
from testbed.harness import TestbedProcess
from tests.harness import daemon_env, running_daemon
from tests.optimizer.conftest import recorder_env
from tests.optimizer.fakes import SnapshotBuilder, armed

MIB = 1024 * 1024
# samples enough for the interval to stretch from its base to its bound, doubling a sample (0.2 s to 30 s: 8)
RAMP = 30


def nearest(daemon: Daemon) -> float:
    """How near the nearest line is over every strategy's triggers, the daemon's own included."""
    return max(signal_proximity(w.specs, daemon.engine.windows) for w in daemon.engine.watches())


def own_line(daemon: Daemon) -> float:
    """The memory strategy's own-RSS enter line (GC_THRESHOLD x own budget)."""
    memory = daemon.engine.runtimes["memory"]
    return next(s.enter for s in daemon.engine.triggers_of(memory) if s.signal == "own_rss_bytes")


async def test_own_rss_near_its_line_does_not_hold_the_interval_at_its_base(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """With the own RSS at 70% of its line and the host calm, the interval walks up to sampler.max_interval_ms."""
    clock = FakeClock()
    snapshots = SnapshotBuilder(clock)
    async with running_daemon(daemon_env(testbed, tmp_path / "state"), clock=clock) as daemon:
        high = daemon.settings.sampler.max_interval_ms / 1000
        own = OwnSample(rss_bytes=int(own_line(daemon) * 0.7), cpu_seconds=1.0)
        for _ in range(40):
            clock.advance(1.0)
            daemon.engine.on_snapshot(dataclasses.replace(snapshots.build(cpu=0.05, memory=0.1), own=own))
            daemon._adapt_interval()
        # the own line is what used to keep the engine from ever being calm
        assert nearest(daemon) == pytest.approx(0.7)
        assert daemon.adaptive_interval == high
        assert daemon.sample_interval == high
        assert daemon.registry.get_sample_value("cctv_optimizer_sample_interval_seconds") == high


async def test_a_stretching_cpu_strategy_leaves_the_interval_to_the_other_strategies(
    testbed: TestbedProcess, tmp_path: Path, recorder: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    """While the cpu strategy holds a hot host (factor 2), the interval stretches to its bound when the other
    strategies are calm, instead of sitting at base x 2; another strategy near its line still tightens it."""
    # a recorder to lower: on a host without one the strategy plans nothing, so it never stretches sampling
    env = daemon_env(testbed, tmp_path / "state", **recorder_env(recorder[0]))
    clock = FakeClock()
    snapshots = SnapshotBuilder(clock)
    async with running_daemon(env, clock=clock) as daemon:
        daemon.engine.refresh = None  # the requested rounds plan from the injected samples, not a real one
        base = daemon.settings.sample_interval / 1000
        high = daemon.settings.sampler.max_interval_ms / 1000
        daemon.engine.on_snapshot(snapshots.build(cpu=0.99, memory=0.1))
        result = await daemon.engine.request_round(trigger="manual", strategy="cpu", manual=True)
        assert len(result.decision_ids) == 1
        strategy = daemon.engine.runtimes["cpu"].strategy
        assert isinstance(strategy, CpuStrategy)
        assert strategy.sample_interval_factor == 2.0
        for _ in range(RAMP):
            clock.advance(1.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.99, memory=0.1))  # still hot: near the cpu line
            daemon._adapt_interval()
        assert nearest(daemon) > CALM_PROXIMITY  # the hot cpu line alone would tighten the interval
        assert daemon.adaptive_interval == high
        assert daemon.sample_interval == high
        for _ in range(10):
            clock.advance(1.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.99, memory=0.75))  # the memory line is near now
            daemon._adapt_interval()
        assert daemon.adaptive_interval < base
        assert daemon.sample_interval == min(high, 2 * daemon.adaptive_interval)


async def test_an_armed_strategy_that_cannot_act_does_not_tighten_the_interval(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """A hot host arms the cpu strategy; while its breaker is open the interval stretches as if it were calm."""
    clock = FakeClock()
    snapshots = SnapshotBuilder(clock)
    async with running_daemon(daemon_env(testbed, tmp_path / "state"), clock=clock) as daemon:
        base = daemon.settings.sample_interval / 1000
        low = daemon.settings.sampler.min_interval_ms / 1000
        high = daemon.settings.sampler.max_interval_ms / 1000
        assert low < base < high
        cpu = daemon.engine.runtimes["cpu"]
        cpu.breaker_open, cpu.breaker_reason = True, "3 consecutive failures (last: permission denied)"
        for _ in range(RAMP):
            clock.advance(1.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.99, memory=0.1))
            cpu.detector.armed = True
            daemon._adapt_interval()
        assert daemon.adaptive_interval == high
        cpu.breaker_open = False  # re-armed: the hot line tightens the interval again
        for _ in range(10):
            clock.advance(1.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.99, memory=0.1))
            daemon._adapt_interval()
        assert daemon.adaptive_interval == low


async def test_an_armed_strategy_with_nothing_to_do_does_not_tighten_the_interval(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """A host hot from programs that are not recorders: the cpu strategy arms and finds nothing to lower. Until
    its next turn closer samples bring it nothing, so the interval stretches; once the host has cooled down and
    it disarmed, a hot host tightens the interval again."""
    clock = FakeClock()
    snapshots = SnapshotBuilder(clock)
    async with running_daemon(daemon_env(testbed, tmp_path / "state"), clock=clock) as daemon:
        daemon.engine.refresh = None  # the rounds plan from the injected samples, not a real one
        low = daemon.settings.sampler.min_interval_ms / 1000
        high = daemon.settings.sampler.max_interval_ms / 1000
        cpu = daemon.engine.runtimes["cpu"]
        for _ in range(daemon.settings.detection.window_samples):
            clock.advance(1.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.99, memory=0.1))
            daemon._adapt_interval()
        assert daemon.adaptive_interval == low  # near the line and not yet armed: sampled closely for detection
        await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        assert armed(cpu)  # and no recorder to lower: its plan had nothing to do
        for _ in range(RAMP):
            clock.advance(1.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.99, memory=0.1))
            daemon._adapt_interval()
        assert daemon.adaptive_interval == high
        for _ in range(daemon.settings.detection.window_samples):
            clock.advance(1.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.1, memory=0.1))
        await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        assert not armed(cpu)
        for _ in range(10):
            clock.advance(1.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.99, memory=0.1))  # hot again: a new episode
            daemon._adapt_interval()
        assert daemon.adaptive_interval == low


async def test_the_cpu_restore_brings_the_interval_back_without_waiting_for_a_cooldown(
    testbed: TestbedProcess, tmp_path: Path, recorder: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    """Lowered and stretched while hot; calm for the window a minute later: restored at once, not after 300 s."""
    clock = FakeClock()
    snapshots = SnapshotBuilder(clock)
    env = daemon_env(testbed, tmp_path / "state", **recorder_env(recorder[0]))
    async with running_daemon(env, clock=clock) as daemon:
        daemon.engine.refresh = None  # the requested rounds plan from the injected samples, not a real one
        strategy = daemon.engine.runtimes["cpu"].strategy
        assert isinstance(strategy, CpuStrategy)
        daemon.engine.on_snapshot(snapshots.build(cpu=0.99, memory=0.1))
        await daemon.engine.request_round(trigger="manual", strategy="cpu", manual=True)
        assert strategy.sample_interval_factor == 2.0 and strategy.held
        for _ in range(daemon.settings.detection.window_samples):
            clock.advance(10.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.1, memory=0.1))
        assert daemon.engine.pacer.cooldown_left(daemon.engine.runtimes["cpu"]) > 0
        result = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        [row] = [daemon.store.decision(i) for i in result.decision_ids]
        assert row is not None and row.outcome == "applied"
        assert {c["action"] for c in row.changes} == {"restore_priority", "restore_sampling"}
        assert strategy.sample_interval_factor == 1.0 and not strategy.held
        daemon._adapt_interval()
        assert daemon.sample_interval == daemon.adaptive_interval


async def test_a_disabled_strategy_does_not_steer_the_interval(testbed: TestbedProcess, tmp_path: Path) -> None:
    """With the cpu strategy disabled, a hot host alone does not tighten the interval below its base."""
    env = daemon_env(testbed, tmp_path / "state", CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED="false")
    clock = FakeClock()
    snapshots = SnapshotBuilder(clock)
    async with running_daemon(env, clock=clock) as daemon:
        base = daemon.settings.sample_interval / 1000
        for _ in range(10):
            clock.advance(1.0)
            daemon.engine.on_snapshot(snapshots.build(cpu=0.99, memory=0.1))
            daemon._adapt_interval()
        assert daemon.adaptive_interval >= base


async def test_near_a_line_with_nothing_armed_the_tight_samples_are_taken_just_before_the_round(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """Host memory near its line: the interval tightens, but while the next round is far off it samples at its
    base; in the last window before the round it samples at the tight interval; once armed, tight throughout."""
    clock = FakeClock()
    snapshots = SnapshotBuilder(clock)
    env = daemon_env(testbed, tmp_path / "state", CCTV_OPTIMIZER_SAMPLE_INTERVAL="5000")
    async with running_daemon(env, clock=clock) as daemon:
        base = daemon.settings.sample_interval / 1000
        low = daemon.settings.sampler.min_interval_ms / 1000
        until_round: list[float | None] = [None]
        daemon._seconds_to_next_round = lambda: until_round[0]  # type: ignore[method-assign]

        def near_line() -> None:
            for _ in range(10):
                clock.advance(1.0)
                daemon.engine.on_snapshot(snapshots.build(cpu=0.05, memory=0.75))
                daemon._adapt_interval()

        near_line()
        assert daemon.adaptive_interval == low
        assert daemon.sample_interval == low  # no round scheduled: tight, as before
        until_round[0] = 25.0
        near_line()
        assert daemon.sample_interval == base
        until_round[0] = daemon.settings.detection.window_samples * low  # the window is due
        near_line()
        assert daemon.sample_interval == low
        until_round[0] = 25.0
        daemon.engine.runtimes["memory"].detector.armed = True
        near_line()
        assert daemon.sample_interval == low
