"""Fakes for driving the decision engine: a scripted strategy, a snapshot builder, a recording logger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from prometheus_client import CollectorRegistry

from config.settings import DetectionSettings, EngineSettings, Mode
from metrics.prometheus import DaemonMetrics
from metrics.snapshot import CacheStatsSample, HostSample, Snapshot
from metrics.window import Windows
from optimizer.clock import FakeClock
from optimizer.engine import Engine
from optimizer.runtime import StrategyRuntime
from optimizer.state import StateStore
from strategies.base import (
    Action,
    ApplyResult,
    Change,
    Direction,
    ExpectedEffect,
    Finding,
    OperatorOverride,
    Plan,
    Risk,
    Strategy,
    StrategyContext,
    TriggerSpec,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetKnob(Action):
    """The scripted strategy's one action: set the knob to ``value``."""

    kind = "scripted.set_knob"
    value: int


CPU_TRIGGER = TriggerSpec(signal="cpu_ratio", enter=0.9, exit=0.8)
HIT_RATE_TRIGGER = TriggerSpec(signal="cache_hit_rate", enter=0.5, exit=0.7, above=False)


def make_plan(
    strategy: str,
    *,
    action: str = "tune",
    reversible: bool = True,
    risk: Risk = Risk.SAFE,
    expected: ExpectedEffect | None = None,
    reason: str = "cpu is hot",
    family: str | None = None,
    restores: bool = False,
    target: str = "knob",
) -> Plan:
    """A one-change plan for ``strategy``."""
    return Plan(
        strategy=strategy,
        reason=reason,
        changes=(Change(target=target, action=action, before="1", after="2", reversible=reversible, risk=risk),),
        expected=expected,
        actions=(SetKnob(value=2),),
        family=family,
        restores=restores,
    )


def cpu_down(amount: float = 0.2, settle: float = 60.0) -> ExpectedEffect:
    """An expected effect: cpu_ratio falls by ``amount`` within ``settle`` seconds."""
    return ExpectedEffect(signal="cpu_ratio", direction=Direction.DOWN, amount=amount, settle_seconds=settle)


class ScriptedStrategy(Strategy):
    """A strategy whose every step is scripted by the test and recorded for it to inspect."""

    name = "scripted"

    def __init__(
        self,
        name: str = "scripted",
        *,
        triggers: Sequence[TriggerSpec] = (CPU_TRIGGER,),
        plan: Plan | None = None,
        use_default_plan: bool = True,
    ) -> None:
        self.name = name  # type: ignore[misc]  # one class, many names: each test picks its own
        self.specs: Sequence[TriggerSpec] = triggers
        self.next_plan: Plan | None = plan if plan is not None or not use_default_plan else make_plan(name)
        self.triggers_error: BaseException | None = None
        self.plan_error: BaseException | None = None
        self.plan_gate: asyncio.Event | None = None
        self.apply_error: BaseException | None = None
        self.apply_gate: asyncio.Event | None = None
        # what apply() reports as done; None: the plan's changes (a re-read that finds nothing to do reports
        # changes whose value after equals the value before, or none)
        self.apply_changes: tuple[Change, ...] | None = None
        self.revert_error: BaseException | None = None
        self.reconcile_error: BaseException | None = None
        self.reconcile_note = "checked: the knob is at its target"
        self.current_findings: list[Finding] = []
        self.overrides_on_plan: list[OperatorOverride] = []
        self.overrides_on_apply: list[OperatorOverride] = []
        self._noticed: list[OperatorOverride] = []
        self.plan_calls: list[StrategyContext] = []
        self.applied: list[Plan] = []
        self.reverted: list[ApplyResult] = []
        self.reconciled: list[Plan] = []
        self.plan_started = asyncio.Event()
        self.apply_started = asyncio.Event()

    def triggers(self, baselines: Mapping[str, float]) -> Sequence[TriggerSpec]:
        """The scripted trigger specs, or the scripted error."""
        if self.triggers_error is not None:
            raise self.triggers_error
        return self.specs

    def findings(self, ctx: StrategyContext) -> Sequence[Finding]:
        """The scripted findings."""
        return list(self.current_findings)

    async def plan(self, ctx: StrategyContext) -> Plan | None:
        """Record the call, wait on the gate if any, then raise or return the scripted plan."""
        self.plan_calls.append(ctx)
        self.plan_started.set()
        self._noticed.extend(self.overrides_on_plan)
        self.overrides_on_plan = []
        if self.plan_gate is not None:
            await self.plan_gate.wait()
        if self.plan_error is not None:
            raise self.plan_error
        return self.next_plan

    async def apply(self, plan: Plan) -> ApplyResult:
        """Record the call, wait on the gate if any, then raise or report the plan's changes as made."""
        self.apply_started.set()
        self._noticed.extend(self.overrides_on_apply)
        self.overrides_on_apply = []
        if self.apply_gate is not None:
            await self.apply_gate.wait()
        if self.apply_error is not None:
            raise self.apply_error
        self.applied.append(plan)
        changes = plan.changes if self.apply_changes is None else self.apply_changes
        return ApplyResult(changes=changes, detail="knob set", revert=(SetKnob(value=1),))

    def take_overrides(self) -> Sequence[OperatorOverride]:
        """The scripted operator changes noticed by plan() or apply() since the last call."""
        taken, self._noticed = self._noticed, []
        return taken

    async def revert(self, result: ApplyResult) -> ApplyResult:
        """Record the revert, or raise the scripted error."""
        if self.revert_error is not None:
            raise self.revert_error
        self.reverted.append(result)
        undone = tuple(
            Change(target=c.target, action=c.action, before=c.after, after=c.before, reversible=True)
            for c in result.changes
        )
        return ApplyResult(changes=undone, detail="knob restored")

    async def reconcile(self, plan: Plan) -> str:
        """Record the interrupted plan and answer the scripted note, or raise the scripted error."""
        self.reconciled.append(plan)
        if self.reconcile_error is not None:
            raise self.reconcile_error
        return self.reconcile_note


def add_decision(store: StateStore, **overrides: Any) -> int | None:
    """Insert one decision row into ``store`` (an applied WAL checkpoint unless ``overrides`` say otherwise)."""
    row: dict[str, Any] = {
        "run_id": "run1",
        "strategy": "database",
        "trigger": "scheduled",
        "mode": "enforce",
        "action": "wal_checkpoint",
        "reason": "WAL is over its limit",
        "signals": {"wal_bytes": 9e7},
        "thresholds": {"wal_bytes": {"enter": 6.4e7, "exit": 5.7e7}},
        "changes": [{"target": "wal", "before": "90 MB", "after": "0 B"}],
        "outcome": "applied",
        "error": None,
        "duration_ms": 12.5,
        "expected": {"signal": "wal_bytes", "direction": "down", "amount": 6e7, "settle_seconds": 30},
    }
    row.update(overrides)
    return store.add_decision(**row)


def snapshot_of(*, seq: int = 1, monotonic: float = 100.0, wall: float | None = None, **parts: Any) -> Snapshot:
    """A snapshot holding only the parts given (``database=``, ``sessions=``, ...), the others None; taken now
    unless ``wall`` says when."""
    fields: dict[str, Any] = dict.fromkeys(
        ("host", "backend", "tcp", "probe", "cache", "database", "hls", "mediamtx", "sessions", "own")
    )
    unknown = set(parts) - set(fields)
    if unknown:
        raise TypeError(f"not a snapshot part: {sorted(unknown)}")
    fields.update(parts)
    return Snapshot(
        seq=seq,
        monotonic=monotonic,
        wall_time=time.time() if wall is None else wall,
        duration_seconds=0.01,
        sources=MappingProxyType({}),
        **fields,
    )


class SnapshotBuilder:
    """Builds snapshots stamped with the fake clock's current time, carrying only the signals a test sets."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._seq = 0

    def build(
        self,
        *,
        cpu: float = 0.1,
        memory: float = 0.3,
        hit_rate: float | None = None,
        load: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> Snapshot:
        """A snapshot with host cpu/memory ratios, load averages (4 cores) and, when given, a cache hit rate."""
        self._seq += 1
        host = HostSample(
            cpu_ratio=cpu,
            cpu_count=4,
            memory_total_bytes=8 << 30,
            memory_available_bytes=int((8 << 30) * (1 - memory)),
            memory_used_ratio=memory,
            swap_used_ratio=0.0,
            load=load,
            uptime_seconds=1000.0,
            psi=None,
            net_rx_bytes_per_second=0.0,
            net_tx_bytes_per_second=0.0,
            disk_read_bytes_per_second=0.0,
            disk_write_bytes_per_second=0.0,
            shm_total_bytes=1 << 30,
            shm_used_bytes=0,
        )
        cache = (
            CacheStatsSample(hits=0, misses=0, sets=0, evictions=0, size=10, max_size=None, hit_rate=hit_rate)
            if hit_rate is not None
            else None
        )
        return Snapshot(
            seq=self._seq,
            monotonic=self._clock.monotonic(),
            wall_time=self._clock.wall(),
            duration_seconds=0.01,
            host=host,
            backend=None,
            tcp=None,
            probe=None,
            cache=cache,
            database=None,
            hls=None,
            mediamtx=None,
            sessions=None,
            own=None,
            sources=MappingProxyType({}),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEvent:
    """One call to the recording logger."""

    level: str
    event: str
    fields: Mapping[str, Any]


@dataclass(slots=True)
class RecordingLog:
    """A logger with structlog's call shape that keeps every event for the test to assert on."""

    records: list[LogEvent] = field(default_factory=list)

    def _add(self, level: str, event: str, fields: Mapping[str, Any]) -> None:
        self.records.append(LogEvent(level=level, event=event, fields=dict(fields)))

    def debug(self, event: str, **fields: Any) -> None:
        """Record a debug event."""
        self._add("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Record an info event."""
        self._add("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Record a warning event."""
        self._add("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Record an error event."""
        self._add("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Record an error event that carries a traceback."""
        self._add("exception", event, fields)

    def events(self, name: str) -> list[LogEvent]:
        """The recorded events with this name, in order."""
        return [r for r in self.records if r.event == name]


StrategyEntry = Strategy | tuple[Strategy, Mode | None, bool]
# what the `build` fixture gives: make_engine on the test's store and clock
EngineFactory = Callable[..., Engine]


def make_engine(
    strategies: Sequence[StrategyEntry],
    *,
    store: StateStore,
    clock: FakeClock,
    log: RecordingLog | None = None,
    global_mode: Mode = Mode.ENFORCE,
    detection: DetectionSettings | None = None,
    registry: CollectorRegistry | None = None,
    store_executor: Executor | None = None,
    **engine: Any,
) -> Engine:
    """An engine over the given strategies with test-friendly settings; ``engine`` overrides EngineSettings."""
    settings = {
        "plan_timeout_seconds": 1.0,
        "apply_timeout_seconds": 1.0,
        "cooldown_seconds": 300.0,
        "cooldown_max_seconds": 3600.0,
        "budget_actions": 1000,
        "budget_window_seconds": 3600.0,
        **engine,
    }
    entries = [s if isinstance(s, tuple) else (s, None, True) for s in strategies]
    return Engine(
        entries,
        engine=EngineSettings(**settings),
        detection=detection or DetectionSettings(samples_required=3, window_samples=5),
        global_mode=global_mode,
        windows=Windows(50),
        store=store,
        metrics=DaemonMetrics(registry if registry is not None else CollectorRegistry()),
        clock=clock,
        log=log if log is not None else RecordingLog(),
        store_executor=store_executor,
    )


def armed(rt: StrategyRuntime) -> bool:
    """Whether the runtime's detector is armed now (read through a call: it changes between rounds)."""
    return rt.detector.armed


def optimizing(engine: Engine) -> bool:
    """Whether a round runs now (read through a call: it changes while the test awaits)."""
    return engine.optimizing


def breaker_open(rt: StrategyRuntime) -> bool:
    """Whether the runtime's breaker is open now (read through a call: it changes between rounds)."""
    return rt.breaker_open
