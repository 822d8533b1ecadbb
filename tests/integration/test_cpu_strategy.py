"""The cpu strategy against the testbed's detached, CPU-burning fake recorders (real processes, real renice)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import psutil
import structlog

from optimizer.app import Daemon
from optimizer.clock import FakeClock
from strategies.actions.priority import Renicer
from strategies.cpu import CpuStrategy
from testbed.harness import TestbedProcess
from tests.harness import daemon_env, running_daemon

CALM_SIGNALS = ("cpu_ratio", "load_per_core", "psi_cpu_some")


def env_for(tb: TestbedProcess, state: Path, **extra: str) -> dict[str, str]:
    """Daemon environment (only this testbed's recorders) with a CPU line the burning recorder is sure to cross and an
    immediate settle time."""
    env = {
        "CPU_THRESHOLD": "0.05",
        "CCTV_OPTIMIZER_STRATEGIES__CPU__SETTLE_SECONDS": "0",
        **extra,
    }
    return daemon_env(tb, state, **env)


def thread_nices(pid: int) -> set[int]:
    """The nice value of every thread of a process."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        out.add(int(stat.rsplit(")", 1)[1].split()[16]))
    return out


def io_of(pid: int) -> tuple[int, int]:
    """(IO class, level) of a process's main thread."""
    ioclass, level = psutil.Process(pid).ionice()
    return int(ioclass), int(level)


async def samples(daemon: Daemon, clock: FakeClock, n: int) -> None:
    """Take n samples, a fake second apart (the backend client's request budget refills with it) and a real 0.3 s
    apart (the host's CPU share needs real clock ticks between two reads)."""
    for _ in range(n):
        await asyncio.sleep(0.3)
        clock.advance(1.0)
        await daemon.sample_now()


def push_calm(daemon: Daemon, clock: FakeClock) -> None:
    """Make the last M samples of the heat signals calm (the host itself keeps burning)."""
    for _ in range(daemon.settings.detection.window_samples):
        daemon.engine.windows.push(clock.monotonic(), dict.fromkeys(CALM_SIGNALS, 0.0))


def cpu_strategy(daemon: Daemon) -> CpuStrategy:
    """The daemon's cpu strategy."""
    strategy = daemon.engine.runtimes["cpu"].strategy
    assert isinstance(strategy, CpuStrategy)
    return strategy


async def test_hot_host_lowers_recorders_once_verifies_and_restores_when_calm(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """Hot: the recorder gets nice 10 and IO be/7 once, the verdict is recorded, cooldown holds, calm restores."""
    pid = testbed.scenario("hot_recorder", count=1)["pids"][0]
    assert thread_nices(pid) == {0}
    clock = FakeClock.following_real_time()
    async with running_daemon(env_for(testbed, tmp_path / "state"), clock=clock) as daemon:
        await samples(daemon, clock, 3)
        first = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        assert len(first.decision_ids) == 1
        row = daemon.store.decision(first.decision_ids[0])
        assert row is not None and row.outcome == "applied" and row.mode == "enforce"
        assert row.signals["cpu_ratio"] is not None and row.signals["cpu_ratio"] >= 0.05
        assert row.thresholds["cpu_ratio"]["enter"] == 0.05
        renice = next(c for c in row.changes if c["action"] == "renice")
        assert renice["before"] == "nice 0, io none" and renice["after"] == "nice 10, io be/7"
        assert f"pid{pid}" in renice["target"]
        assert thread_nices(pid) == {10}
        assert io_of(pid) == (psutil.IOPRIO_CLASS_BE, 7)
        assert cpu_strategy(daemon).sample_interval_factor == 2.0
        saved = json.loads((tmp_path / "state" / "cpu-priorities.json").read_text())
        assert [r["pid"] for r in saved["recorders"]] == [pid]
        assert saved["recorders"][0]["saved"]["main"] == {"nice": 0, "ioprio": 0}

        # still hot, nothing new: no second action
        await samples(daemon, clock, 1)
        again = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        assert again.decision_ids == ()

        await samples(daemon, clock, 1)
        await daemon.engine.verify_due()
        row = daemon.store.decision(first.decision_ids[0])
        assert row is not None and row.verdict in ("improved", "neutral", "regressed")
        assert row.verdict_detail is not None and row.verdict_detail["signal"] == "response_time_seconds"
        if row.verdict == "regressed":
            # the backend got slower: the engine undid the renice at once
            assert row.verdict_detail["reverted"] is True
            assert thread_nices(pid) == {0}
            return
        assert thread_nices(pid) == {10}

        # a new recorder inside the cooldown is left alone, and the skip is recorded
        newcomer = testbed.scenario("hot_recorder", count=1)["pids"][0]
        await samples(daemon, clock, 3)
        skipped = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        row = daemon.store.decision(skipped.decision_ids[0])
        assert row is not None and row.outcome == "skipped_cooldown"
        assert thread_nices(newcomer) == {0}

        # calm for the whole window, and past the cooldown: the saved values come back
        clock.advance(daemon.settings.engine.cooldown_max_seconds + 1)
        push_calm(daemon, clock)
        restored = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        row = daemon.store.decision(restored.decision_ids[0])
        assert row is not None and row.outcome == "applied"
        assert {c["action"] for c in row.changes} == {"restore_priority", "restore_sampling"}
        assert thread_nices(pid) == {0}
        assert io_of(pid) == (psutil.IOPRIO_CLASS_NONE, 0)
        assert thread_nices(newcomer) == {0}
        assert cpu_strategy(daemon).held == {}
        assert cpu_strategy(daemon).sample_interval_factor == 1.0
        assert json.loads((tmp_path / "state" / "cpu-priorities.json").read_text())["recorders"] == []


async def test_a_restarted_daemon_restores_what_the_last_one_lowered(testbed: TestbedProcess, tmp_path: Path) -> None:
    """The saved priorities survive a restart: a calm daemon started later puts the recorder back."""
    pid = testbed.scenario("hot_recorder", count=1)["pids"][0]
    state = tmp_path / "state"
    env = env_for(testbed, state, CCTV_OPTIMIZER_STRATEGIES__CPU__SETTLE_SECONDS="3600")
    clock = FakeClock.following_real_time()
    async with running_daemon(env, clock=clock) as daemon:
        await samples(daemon, clock, 3)
        await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        assert thread_nices(pid) == {10}
    assert thread_nices(pid) == {10}
    # the second run starts past the persisted cooldown and sees a calm window
    clock.advance(daemon.settings.engine.cooldown_max_seconds + 1)
    async with running_daemon(env, clock=clock) as daemon:
        assert set(cpu_strategy(daemon).held) == {pid}
        await samples(daemon, clock, 3)
        push_calm(daemon, clock)
        result = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        row = daemon.store.decision(result.decision_ids[0])
        assert row is not None and row.outcome == "applied"
        assert [c["action"] for c in row.changes] == ["restore_priority"]
    assert thread_nices(pid) == {0}


async def test_observe_and_dry_run_leave_priorities_alone(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Observe records the armed strategy only; dry_run records the planned renice; no recorder is touched."""
    pid = testbed.scenario("hot_recorder", count=1)["pids"][0]
    clock = FakeClock.following_real_time()
    env = env_for(testbed, tmp_path / "observe", ENABLE_PERFORMANCE_OPTIMIZATION="false")
    async with running_daemon(env, clock=clock) as daemon:
        await samples(daemon, clock, 3)
        result = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        row = daemon.store.decision(result.decision_ids[0])
        assert row is not None and row.outcome == "observed" and row.changes == []
    assert thread_nices(pid) == {0}
    env = env_for(testbed, tmp_path / "dry", CCTV_OPTIMIZER_STRATEGIES__CPU__MODE="dry_run")
    async with running_daemon(env, clock=clock) as daemon:
        await samples(daemon, clock, 3)
        result = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        row = daemon.store.decision(result.decision_ids[0])
        assert row is not None and row.outcome == "dry_run"
        assert any(c["action"] == "renice" and c["after"] == "nice 10, io be/7" for c in row.changes)
        assert cpu_strategy(daemon).held == {}
    assert thread_nices(pid) == {0}
    assert io_of(pid) == (psutil.IOPRIO_CLASS_NONE, 0)


async def test_nothing_happens_on_a_calm_host(testbed: TestbedProcess, tmp_path: Path) -> None:
    """With the heat signals calm in the window, rounds record nothing and the running recorder keeps nice 0."""
    pid = testbed.scenario("hot_recorder", count=1)["pids"][0]
    clock = FakeClock.following_real_time()
    async with running_daemon(env_for(testbed, tmp_path / "state"), clock=clock) as daemon:
        await samples(daemon, clock, 3)
        # this shared two-core host is rarely calm for real while suites run: the window says it is
        push_calm(daemon, clock)
        result = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        assert result.decision_ids == ()
        assert daemon.store.decisions(strategy="cpu") == []
        assert cpu_strategy(daemon).sample_interval_factor == 1.0
    assert thread_nices(pid) == {0}


class DeniedOnPid:
    """The real priority calls, except that changing one PID fails as it does without CAP_SYS_NICE."""

    def __init__(self, denied: int) -> None:
        self.real = Renicer().ops
        self.denied = denied

    def get_nice(self, tid: int) -> int:
        """Read for real."""
        return self.real.get_nice(tid)

    def set_nice(self, tid: int, value: int) -> None:
        """Refuse for the denied PID (this suite runs as root, so EPERM cannot happen for real here)."""
        if tid == self.denied:
            raise PermissionError(1, "Operation not permitted")
        self.real.set_nice(tid, value)

    def get_ioprio(self, tid: int) -> int | None:
        """Read for real."""
        return self.real.get_ioprio(tid)

    def set_ioprio(self, tid: int, value: int) -> None:
        """Set for real."""
        self.real.set_ioprio(tid, value)


async def test_a_refused_renice_fails_with_the_reason_and_puts_back_what_it_did(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """Permission denied on the second recorder: recorded as failed with the reason, the first one is put back."""
    pids = sorted(testbed.scenario("hot_recorder", count=2)["pids"])
    clock = FakeClock.following_real_time()
    async with running_daemon(env_for(testbed, tmp_path / "state"), clock=clock) as daemon:
        rt = daemon.engine.runtimes["cpu"]
        old = cpu_strategy(daemon)
        rt.strategy = CpuStrategy(
            daemon.settings.strategies.cpu,
            cpu_threshold=daemon.settings.cpu_threshold,
            exit_ratio=daemon.settings.detection.exit_ratio,
            detection=daemon.settings.detection,
            recorders=old._recorders,
            renicer=Renicer(ops=DeniedOnPid(pids[1])),
        )
        await samples(daemon, clock, 3)
        result = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        row = daemon.store.decision(result.decision_ids[0])
        assert row is not None and row.outcome == "failed"
        assert row.error is not None and "permission denied" in row.error
        assert "put back" in row.error
        assert rt.consecutive_failures == 1
        assert [e.status for e in daemon.store.journal()] == ["failed"]
        assert cpu_strategy(daemon).held == {}
    for pid in pids:
        assert thread_nices(pid) == {0}
        assert io_of(pid) == (psutil.IOPRIO_CLASS_NONE, 0)


async def test_an_operator_renice_is_not_fought(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A managed recorder reniced by hand is dropped from management, logged and reported, and left as set."""
    pid = testbed.scenario("hot_recorder", count=1)["pids"][0]
    clock = FakeClock.following_real_time()
    env = env_for(testbed, tmp_path / "state", CCTV_OPTIMIZER_STRATEGIES__CPU__SETTLE_SECONDS="3600")
    async with running_daemon(env, clock=clock) as daemon:
        await samples(daemon, clock, 3)
        await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        assert thread_nices(pid) == {10}
        os.setpriority(os.PRIO_PROCESS, pid, 15)
        clock.advance(daemon.settings.engine.cooldown_max_seconds + 1)
        push_calm(daemon, clock)
        with structlog.testing.capture_logs() as logs:
            result = await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        override = [e for e in logs if e["event"] == "operator_override"]
        assert len(override) == 1 and override[0]["pid"] == pid
        assert override[0]["expected"] == "nice 10, io be/7" and override[0]["found"] == "nice 15, io be/7"
        assert cpu_strategy(daemon).held == {}
        # only the sampling stretch was left to undo
        row = daemon.store.decision(result.decision_ids[0])
        assert row is not None and [c["action"] for c in row.changes] == ["restore_sampling"]
        await daemon.engine.request_round(trigger="scheduled", strategy="cpu")
        finding = daemon.engine.findings["recorder-priority-overridden"]
        assert finding.evidence["pids"] == [pid] and finding.evidence["found"] == ["nice 15, io be/7"]
    assert thread_nices(pid) == {15}
