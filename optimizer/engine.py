"""The decision engine: detect on windows, plan, gate, apply with a journal, verify, learn.

One executor: rounds run one at a time; a request that arrives while a round runs joins it. Manual
and Alertmanager triggers skip detection but never the gates (mode, cooldown, budget, breaker), and plan from
a sample taken for them. Cooldown and budget are kept per action family of a strategy, on monotonic time.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import structlog

from config import units
from config.settings import DetectionSettings, EngineSettings, Mode
from metrics.prometheus import DaemonMetrics
from metrics.snapshot import Snapshot
from metrics.window import Windows
from optimizer.clock import Clock
from optimizer.executors import run_in, watch_queueing
from optimizer.state import StateStore
from strategies.base import (
    DEFAULT_FAMILY,
    ApplyResult,
    Change,
    Direction,
    Finding,
    OperatorOverride,
    Plan,
    Strategy,
    StrategyContext,
    StrategyDeferred,
    StrategyError,
    TriggerSpec,
)

_RANK = {Mode.OBSERVE: 0, Mode.DRY_RUN: 1, Mode.ENFORCE: 2}
SCORE_HISTORY = 10
T = TypeVar("T")


class Outcome(StrEnum):
    """What became of a strategy's turn in a round."""

    APPLIED = "applied"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"
    DRY_RUN = "dry_run"
    OBSERVED = "observed"
    NOTHING_TO_DO = "nothing_to_do"
    SKIPPED_COOLDOWN = "skipped_cooldown"
    SKIPPED_BUDGET = "skipped_budget"
    BLOCKED_BREAKER = "blocked_breaker"
    BLOCKED_DISRUPTIVE = "blocked_disruptive"
    BACKED_OFF = "backed_off"
    DEFERRED = "deferred"
    # the apply's re-read found nothing to change (the WAL was already small, the sessions already ended)
    NO_CHANGE = "no_change"


ATTEMPTS = frozenset({Outcome.APPLIED, Outcome.FAILED, Outcome.TIMEOUT, Outcome.ERROR})
FAILURES = frozenset({Outcome.FAILED, Outcome.TIMEOUT, Outcome.ERROR})


class Verdict(StrEnum):
    """The measured effect of an applied plan after its settle time."""

    IMPROVED = "improved"
    NEUTRAL = "neutral"
    REGRESSED = "regressed"


def most_restrictive(*modes: Mode | None) -> Mode:
    """The least permissive of the given modes (observe < dry_run < enforce)."""
    present = [m for m in modes if m is not None]
    return min(present, key=lambda m: _RANK[m]) if present else Mode.ENFORCE


def judge(before: float, after: float, direction: Direction, amount: float) -> tuple[Verdict, float]:
    """Compare the expected signal before and after: (verdict, the change in the good direction)."""
    good = (before - after) if direction is Direction.DOWN else (after - before)
    amount = abs(amount)
    if good >= max(0.5 * amount, 1e-12):
        return Verdict.IMPROVED, good
    if good <= -max(0.25 * amount, 0.05 * abs(before), 1e-12):
        return Verdict.REGRESSED, good
    return Verdict.NEUTRAL, good


def signal_proximity(specs: Sequence[TriggerSpec], windows: Windows) -> float:
    """How close the latest values are to their enter thresholds: 1.0 is at the line, above 1.0 past it."""
    proximity = 0.0
    for spec in specs:
        value = windows.last(spec.signal)
        if value is None or spec.enter == 0:
            continue
        # a below-type trigger (a hit rate under a floor) nears its line as the value falls
        below = spec.enter / value if value > 0 else 2.0
        proximity = max(proximity, value / spec.enter if spec.above else below)
    return proximity


NEAR_PROXIMITY = 0.8
CALM_PROXIMITY = 0.5
STRETCH_FACTOR = 1.25


def next_sample_interval(
    current: float, *, base: float, low: float, high: float, proximity: float, armed: bool
) -> float:
    """The next sample interval: halve toward ``low`` near a line, stretch by 1.25 toward ``high`` when calm.

    Between calm and near the configured base interval is used again. The result is always within bounds.
    """
    if armed or proximity >= NEAR_PROXIMITY:
        target = max(low, min(base, current / 2))
    elif proximity < CALM_PROXIMITY:
        target = min(high, max(base, current * STRETCH_FACTOR))
    else:
        target = base
    return max(low, min(high, target))


def stretched_interval(adaptive: float, *, factor: float, low: float, high: float) -> float:
    """The interval in use: the adaptive one stretched by the largest factor a strategy asks for, within bounds.

    The adaptive interval is kept unstretched (the caller feeds it back to next_sample_interval), so a factor
    held over many samples doubles the interval once instead of compounding.
    """
    return max(low, min(high, adaptive * max(1.0, factor)))


@dataclass(slots=True)
class Detector:
    """Hysteresis over the windows: arm on N of M samples past enter, disarm when all are back past exit."""

    armed: bool = False
    armed_signals: tuple[str, ...] = ()

    def update(self, specs: Sequence[TriggerSpec], windows: Windows, detection: DetectionSettings) -> bool:
        """Re-evaluate on the current windows; returns whether the strategy is armed."""
        n, m = detection.samples_required, detection.window_samples
        firing: list[str] = []
        for spec in specs:
            values = windows.values(spec.signal, m)
            hits = sum(1 for v in values if (v >= spec.enter if spec.above else v <= spec.enter))
            if hits >= min(spec.samples_required or n, m):
                firing.append(spec.signal)
        if firing:
            self.armed = True
            self.armed_signals = tuple(firing)
        elif self.armed:
            calm = True
            for spec in specs:
                last = windows.last(spec.signal)
                if last is not None and (last >= spec.exit if spec.above else last <= spec.exit):
                    calm = False
            if calm:
                self.armed = False
                self.armed_signals = ()
        return self.armed


@dataclass(slots=True)
class Pending:
    """An applied plan waiting for its settle time to be verified."""

    decision_id: int | None
    journal_id: int | None
    strategy: str
    plan: Plan
    result: ApplyResult
    before: float
    due: float
    # when the change was made (monotonic): the verdict is judged on a value measured after it
    applied_at: float = 0.0


# how long past its settle time a verdict waits for its signal to be measured again (a source whose earlier
# reading stands in, such as the cache stats when the request budget is spent, is not measured every sample)
VERIFY_WAIT_SECONDS = 60.0


@dataclass(slots=True)
class Pacing:
    """How one action family of a strategy is paced: its cooldown, and its attempts (monotonic seconds)."""

    cooldown: float
    last_attempt: float | None = None
    attempts: list[float] = field(default_factory=list)
    # the family's last apply changed nothing (and was given back): a second one in a row counts as an attempt
    unneeded: bool = False


def _clamped(stored: Any, now_wall: float, now_mono: float) -> float | None:
    """A persisted wall time as monotonic time; a time in the future (the wall clock went back) counts as now."""
    if stored is None:
        return None
    wall = min(float(stored), now_wall)
    return now_mono - (now_wall - wall)


@dataclass(slots=True)
class StrategyRuntime:
    """A strategy with what the engine learned about it (persisted in the state database)."""

    strategy: Strategy
    config_mode: Mode | None
    enabled: bool
    base_cooldown: float
    detector: Detector = field(default_factory=Detector)
    mode_override: Mode | None = None
    scores: list[int] = field(default_factory=list)
    consecutive_failures: int = 0
    breaker_open: bool = False
    breaker_reason: str | None = None
    # cooldown and budget per action family (Plan.family), on monotonic time so a wall-clock jump changes nothing
    pacing: dict[str, Pacing] = field(default_factory=dict)
    last_outcome: str | None = None
    last_verdict: str | None = None
    # what the last history row was about (outcome, family, action, gate): a skip for another reason is a new row
    last_row: tuple[str, ...] | None = None
    # monotonic time until which the strategy cannot act (its plan was held by a cooldown, the budget or the
    # breaker): the sample interval does not tighten for it meanwhile
    held_until: float | None = None

    @property
    def name(self) -> str:
        """The strategy's name."""
        return self.strategy.name

    @property
    def score(self) -> float:
        """Mean of recent verdicts: +1 improved, 0 neutral, -1 regressed or failed."""
        return sum(self.scores) / len(self.scores) if self.scores else 0.0

    @property
    def cooldown(self) -> float:
        """The longest cooldown of the strategy's action families (the configured one before any action)."""
        return max((p.cooldown for p in self.pacing.values()), default=self.base_cooldown)

    def pace(self, family: str) -> Pacing:
        """The pacing of one action family, created with the configured cooldown on first use."""
        found = self.pacing.get(family)
        if found is None:
            found = self.pacing[family] = Pacing(cooldown=self.base_cooldown)
        return found

    def to_state(self, now_mono: float, now_wall: float) -> dict[str, Any]:
        """What survives a restart; attempt times are stored as wall time."""

        def wall(mono: float) -> float:
            return now_wall - (now_mono - mono)

        return {
            "mode_override": str(self.mode_override) if self.mode_override else None,
            "scores": self.scores,
            "consecutive_failures": self.consecutive_failures,
            "breaker_open": self.breaker_open,
            "breaker_reason": self.breaker_reason,
            "pacing": {
                family: {
                    "cooldown": p.cooldown,
                    "last_attempt": wall(p.last_attempt) if p.last_attempt is not None else None,
                    "attempts": [wall(t) for t in p.attempts],
                }
                for family, p in self.pacing.items()
            },
            "last_outcome": self.last_outcome,
            "last_verdict": self.last_verdict,
        }

    def load_state(self, data: Mapping[str, Any], now_mono: float, now_wall: float) -> None:
        """Restore what a previous run learned; attempt times in the future (the clock went back) become now."""
        mode = data.get("mode_override")
        self.mode_override = Mode(mode) if mode else None
        self.scores = [int(x) for x in data.get("scores", [])][-SCORE_HISTORY:]
        self.consecutive_failures = int(data.get("consecutive_failures", 0))
        self.breaker_open = bool(data.get("breaker_open", False))
        self.breaker_reason = data.get("breaker_reason")
        saved = data.get("pacing")
        if not isinstance(saved, Mapping):
            # the state of an earlier version: one cooldown and one budget for the whole strategy
            saved = {DEFAULT_FAMILY: data} if {"cooldown", "last_attempt", "attempts"} & set(data) else {}
        self.pacing = {}
        for family, entry in saved.items():
            if not isinstance(entry, Mapping):
                continue
            attempts = [_clamped(t, now_wall, now_mono) for t in entry.get("attempts", [])]
            self.pacing[str(family)] = Pacing(
                cooldown=float(entry.get("cooldown", self.base_cooldown)),
                last_attempt=_clamped(entry.get("last_attempt"), now_wall, now_mono),
                attempts=[t for t in attempts if t is not None],
            )
        self.last_outcome = data.get("last_outcome")
        self.last_verdict = data.get("last_verdict")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundResult:
    """One finished round."""

    run_id: str
    trigger: str
    started_wall: float
    duration_seconds: float
    decision_ids: tuple[int, ...]
    joined: bool = False


class EngineStopping(Exception):
    """The engine no longer starts rounds."""


class Engine:
    """Runs decision rounds over the strategies, gates and records them, verifies their effect."""

    def __init__(
        self,
        strategies: Sequence[tuple[Strategy, Mode | None, bool]],
        *,
        engine: EngineSettings,
        detection: DetectionSettings,
        global_mode: Mode,
        windows: Windows,
        store: StateStore,
        metrics: DaemonMetrics,
        clock: Clock,
        log: Any = None,
        refresh: Callable[[], Awaitable[Snapshot]] | None = None,
        store_executor: Executor | None = None,
    ) -> None:
        self._settings = engine
        # takes a fresh sample for a requested round (manual or Alertmanager), which plans from it, not from a
        # sample that may be as old as the stretched sample interval
        self.refresh = refresh
        # the state writes' own pool: strategies' threads (the loop's default pool) cannot hold up the records
        self._store_executor = store_executor
        self._detection = detection
        self.global_mode = global_mode
        self.windows = windows
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._log = log if log is not None else structlog.get_logger("engine")
        self.runtimes: dict[str, StrategyRuntime] = {
            s.name: StrategyRuntime(
                strategy=s,
                config_mode=mode,
                enabled=enabled,
                base_cooldown=engine.cooldown_seconds,
            )
            for s, mode, enabled in strategies
        }
        self.latest: Snapshot | None = None
        self.baselines: dict[str, float] = {}
        self.findings: dict[str, Finding] = {}
        self._pending: list[Pending] = []
        self._current: asyncio.Future[RoundResult] | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._verify_task: asyncio.Task[None] | None = None
        self.rounds_run = 0
        self.last_round: RoundResult | None = None
        self.heartbeat = clock.monotonic()

    # lifecycle and state -------------------------------------------------------------------------------------------

    async def _stored(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a state store call on the store's pool (a worker thread when the engine has none)."""
        if self._store_executor is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return await run_in(self._store_executor, functools.partial(fn, *args, **kwargs))

    async def load(self) -> None:
        """Restore strategy state from the store and reconcile interrupted journal records."""
        saved = await self._stored(self._store.load_strategies)
        now_mono, now_wall = self._clock.monotonic(), self._clock.wall()
        for name, data in saved.items():
            if name in self.runtimes:
                self.runtimes[name].load_state(data, now_mono, now_wall)
        for rt in self.runtimes.values():
            self._publish(rt)
        await self.reconcile()

    async def reconcile(self) -> None:
        """Settle journal intents without a done record: the daemon stopped in the middle of an apply."""
        for entry in await self._stored(self._store.journal, "intent"):
            rt = self.runtimes.get(entry.strategy)
            if rt is None:
                await self._stored(self._store.journal_finish, entry.id, "reconciled", {"note": "strategy gone"})
                continue
            try:
                plan = Plan.from_dict(entry.plan)
                note = await asyncio.wait_for(rt.strategy.reconcile(plan), self._settings.apply_timeout_seconds)
                status = "reconciled"
            except (StrategyError, StrategyDeferred, TimeoutError, KeyError, ValueError) as exc:
                note = f"reconcile failed: {exc}"
                status = "reconcile_failed"
            except Exception as exc:
                # A bug in one strategy's reconcile must not keep the daemon from starting.
                self._log.exception("reconcile_crashed", strategy=entry.strategy, journal_id=entry.id)
                note = f"reconcile failed: {exc.__class__.__name__}: {exc}"
                status = "reconcile_failed"
            await self._stored(self._store.journal_finish, entry.id, status, {"note": note})
            if entry.decision_id is not None:
                await self._stored(self._store.update_decision, entry.decision_id, outcome="interrupted", error=note)
            self._log.warning(
                "journal_reconciled", strategy=entry.strategy, journal_id=entry.id, status=status, note=note
            )

    async def stop(self, grace: float) -> None:
        """Start no more rounds; let the running one finish within ``grace`` seconds."""
        self._stopping = True
        current = self._current
        if current is not None and not current.done():
            try:
                await asyncio.wait_for(asyncio.shield(current), grace)
            except TimeoutError:
                self._log.warning("round_cut_at_stop", grace_seconds=grace)
                current.cancel()
            except Exception:  # the round's own failure was logged where it happened
                pass
        if self._verify_task is not None and not self._verify_task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._verify_task), grace)
            except (TimeoutError, Exception):
                self._verify_task.cancel()

    async def revert_all(self) -> int:
        """Revert every reversible change still in effect (revert_on_exit), newest first; returns how many.

        The journal is the list: every applied plan whose record is ``done`` (not reverted, not failed) and
        whose changes can be undone, whether it is still being verified or was judged long ago, in this run
        or an earlier one. Newest first, so that stacked changes unwind in order. Each record is closed as
        ``reverted`` whatever revert() found, so a later stop does not try again.
        """
        self._pending.clear()
        count = 0
        for entry in reversed(await self._stored(self._store.journal, "done")):
            rt = self.runtimes.get(entry.strategy)
            if rt is None or not entry.result:
                continue
            try:
                plan = Plan.from_dict(entry.plan)
                result = ApplyResult.from_dict(entry.result)
            except (KeyError, ValueError, TypeError):
                continue
            if not plan.reversible or not result.changes:
                continue
            undone = await self._revert(rt, result, entry.id, reason="revert_on_exit")
            if undone is not None and undone.changes:
                count += 1
        return count

    def strategy_names(self) -> list[str]:
        """Names of the strategies, in order."""
        return list(self.runtimes)

    def mode_of(self, rt: StrategyRuntime, dry_run: bool = False) -> Mode:
        """The mode a strategy runs in now."""
        return most_restrictive(self.global_mode, rt.mode_override or rt.config_mode, Mode.DRY_RUN if dry_run else None)

    async def set_mode(self, name: str, mode: Mode) -> None:
        """Change one strategy's mode at run time (persisted)."""
        rt = self.runtimes[name]
        rt.mode_override = mode
        rt.last_row = None
        self._log.info("strategy_mode_changed", strategy=name, mode=str(mode))
        await self._save(rt)

    async def reset(self, name: str) -> None:
        """Re-arm a strategy: close its breaker, clear failures, restore the base cooldown, give the budget back."""
        rt = self.runtimes[name]
        was_open = rt.breaker_open
        rt.breaker_open = False
        rt.breaker_reason = None
        rt.consecutive_failures = 0
        rt.pacing = {}
        rt.held_until = None
        rt.last_row = None
        self._log.info("strategy_reset", strategy=name, breaker_was_open=was_open)
        await self._save(rt)

    async def _save(self, rt: StrategyRuntime) -> None:
        self._publish(rt)
        state = rt.to_state(self._clock.monotonic(), self._clock.wall())
        await self._stored(self._store.save_strategy, rt.name, state)

    def _publish(self, rt: StrategyRuntime) -> None:
        self._metrics.breaker_open.labels(rt.name).set(1 if rt.breaker_open else 0)
        self._metrics.armed.labels(rt.name).set(1 if rt.detector.armed else 0)
        self._metrics.cooldown.labels(rt.name).set(rt.cooldown)
        self._metrics.score.labels(rt.name).set(rt.score)

    @staticmethod
    def _families(rt: StrategyRuntime, family: str | None) -> list[Pacing]:
        """One family's pacing (none when it never acted), or every family's."""
        if family is None:
            return list(rt.pacing.values())
        found = rt.pacing.get(family)
        return [found] if found is not None else []

    def cooldown_left(self, rt: StrategyRuntime, family: str | None = None) -> float:
        """Seconds until the family may act again; without one, until every family of the strategy may."""
        now = self._clock.monotonic()
        return max(
            (
                max(0.0, p.last_attempt + p.cooldown - now)
                for p in self._families(rt, family)
                if p.last_attempt is not None
            ),
            default=0.0,
        )

    def budget_left(self, rt: StrategyRuntime, family: str | None = None) -> int:
        """Attempts left in the family's rolling budget window; without one, the least left in any family."""
        horizon = self._clock.monotonic() - self._settings.budget_window_seconds
        left = self._settings.budget_actions
        for p in self._families(rt, family):
            p.attempts = [t for t in p.attempts if t > horizon]
            left = min(left, self._settings.budget_actions - len(p.attempts))
        return max(0, left)

    def budget_free_at(self, rt: StrategyRuntime, family: str) -> float:
        """The monotonic time at which the family's budget has an attempt free again."""
        p = rt.pace(family)
        spent = len(p.attempts) - self._settings.budget_actions
        if spent < 0 or not p.attempts:
            return self._clock.monotonic()
        return sorted(p.attempts)[spent] + self._settings.budget_window_seconds

    def can_act(self, rt: StrategyRuntime) -> bool:
        """Whether the strategy could act now: not held by an open breaker, or by the cooldown, budget or
        disabled disruptive changes its last plan met."""
        if rt.breaker_open:
            return False
        return rt.held_until is None or self._clock.monotonic() >= rt.held_until

    def pacing_view(self, rt: StrategyRuntime) -> dict[str, dict[str, float | int]]:
        """Each action family's cooldown, cooldown left and budget left, for display."""
        return {
            family: {
                "cooldownSeconds": p.cooldown,
                "cooldownLeftSeconds": round(self.cooldown_left(rt, family), 3),
                "budgetLeft": self.budget_left(rt, family),
            }
            for family, p in sorted(rt.pacing.items())
        }

    # samples and verification ------------------------------------------------------------------------------------

    def triggers_of(self, rt: StrategyRuntime) -> Sequence[TriggerSpec]:
        """A strategy's triggers for display and interval tuning; empty (never raising) when they crash."""
        try:
            return rt.strategy.triggers(self.baselines)
        except Exception:
            return ()

    def proximity(self) -> float:
        """How close the nearest watched signal is to its enter line, over every strategy (see signal_proximity)."""
        return max((signal_proximity(self.triggers_of(rt), self.windows) for rt in self.runtimes.values()), default=0.0)

    @staticmethod
    def factor_of(rt: StrategyRuntime) -> float:
        """The stretch of the sample interval one strategy asks for (1.0: none; a crashing hook asks none)."""
        try:
            return float(rt.strategy.sample_interval_factor)
        except Exception:
            return 1.0

    def sample_interval_factor(self) -> float:
        """The largest stretch of the sample interval any strategy asks for (1.0: none)."""
        factor = 1.0
        for rt in self.runtimes.values():
            # a NaN never compares greater, so max() keeps the factor found so far
            factor = max(factor, self.factor_of(rt))
        return factor

    def update_settings(self, engine: EngineSettings, detection: DetectionSettings, global_mode: Mode) -> None:
        """Apply reloaded engine and detection settings (SIGHUP) without losing what was learned."""
        self._settings = engine
        self._detection = detection
        self.global_mode = global_mode
        for rt in self.runtimes.values():
            if rt.base_cooldown != engine.cooldown_seconds:
                rt.base_cooldown = engine.cooldown_seconds
                for p in rt.pacing.values():
                    p.cooldown = min(max(p.cooldown, engine.cooldown_seconds), engine.cooldown_max_seconds)

    async def replace_strategies(self, fresh: Mapping[str, tuple[Strategy, Mode | None, bool]]) -> None:
        """Put reconfigured instances in place of the running ones (a reload), between rounds.

        Each new instance takes over what its predecessor learned while running (``carry_over``); the runtime,
        with its cooldowns, budgets, breaker and score, stays. The old instances, and new ones no runtime takes,
        are closed, so a reload leaks none of their sessions or connections.
        """
        done: list[Strategy] = []
        async with self._lock:
            taken: set[str] = set()
            for name, rt in self.runtimes.items():
                if name not in fresh:
                    continue
                strategy, rt.config_mode, rt.enabled = fresh[name]
                strategy.carry_over(rt.strategy)
                done.append(rt.strategy)
                rt.strategy = strategy
                taken.add(name)
            done.extend(strategy for name, (strategy, _, _) in fresh.items() if name not in taken)
        for strategy in done:
            try:
                await strategy.close()
            except Exception as exc:  # closing must not stop the reload; the instance is dropped either way
                self._log.warning(
                    "strategy_close_failed", strategy=strategy.name, error=f"{exc.__class__.__name__}: {exc}"
                )

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """Take a new sample into the windows; start verifying plans whose settle time has passed.

        Signals a snapshot lacks (their source is down) are dropped from the windows: stale values must not
        keep a strategy armed or arm it later.
        """
        self.latest = snapshot
        signals = snapshot.signals()
        self.windows.push(snapshot.monotonic, signals)
        self.windows.retain({*signals.keys(), *snapshot.held_signals()})
        if any(p.due <= snapshot.monotonic for p in self._pending) and (
            self._verify_task is None or self._verify_task.done()
        ):
            self._verify_task = asyncio.create_task(self.verify_due())

    async def verify_due(self) -> None:
        """Judge every plan whose settle time has passed; revert regressions that can be undone."""
        async with self._lock:
            now = self._clock.monotonic()
            due = [p for p in self._pending if p.due <= now]
            self._pending = [p for p in self._pending if p.due > now]
            for pending in due:
                await self._verify(pending)

    async def _verify(self, pending: Pending) -> None:
        rt = self.runtimes[pending.strategy]
        expected = pending.plan.expected
        if expected is None:
            return
        measured = self.windows.points(expected.signal, since=pending.applied_at)
        after = measured[-1][1] if measured else self.windows.last(expected.signal)
        if not measured and after is not None and self._clock.monotonic() < pending.due + VERIFY_WAIT_SECONDS:
            # only the reading from before the change stands: judging on it would call any change neutral
            self._pending.append(pending)
            return
        if after is None:
            detail: dict[str, Any] = {"signal": expected.signal, "before": pending.before, "after": None}
            verdict = Verdict.NEUTRAL
        else:
            verdict, good = judge(pending.before, after, expected.direction, expected.amount)
            detail = {
                "signal": expected.signal,
                "before": pending.before,
                "after": after,
                "change": good,
                "expected": expected.amount,
            }
        reverted = False
        if verdict is Verdict.REGRESSED and pending.plan.reversible:
            undone = await self._revert(rt, pending.result, pending.journal_id, reason="regressed")
            reverted = undone is not None
        detail["reverted"] = reverted
        self._metrics.verdicts.labels(rt.name, str(verdict)).inc()
        rt.last_verdict = str(verdict)
        rt.scores = ([*rt.scores, {Verdict.IMPROVED: 1, Verdict.NEUTRAL: 0, Verdict.REGRESSED: -1}[verdict]])[
            -SCORE_HISTORY:
        ]
        pacing = rt.pace(pending.plan.pacing_family)
        if verdict is Verdict.IMPROVED:
            rt.consecutive_failures = 0
            pacing.cooldown = max(rt.base_cooldown, pacing.cooldown / 2)
        elif verdict is Verdict.NEUTRAL:
            # Neither a failure nor a regression: the run the breaker counts is broken.
            rt.consecutive_failures = 0
            pacing.cooldown = min(self._settings.cooldown_max_seconds, max(pacing.cooldown, 1.0) * 2)
            self._log.info(
                "strategy_backed_off",
                strategy=rt.name,
                family=pending.plan.pacing_family,
                cooldown_seconds=pacing.cooldown,
                reason="no effect",
            )
        else:
            self._count_failure(rt, f"regressed {expected.signal}")
        if pending.decision_id is not None:
            await self._stored(
                self._store.update_decision, pending.decision_id, verdict=str(verdict), verdict_detail=detail
            )
        self._log.info(
            "effect_verified",
            strategy=rt.name,
            decision_id=pending.decision_id,
            verdict=str(verdict),
            # the measurement as a person reads it ("wal_bytes 80 MiB -> 0 B"); the raw numbers stay in the keys
            figures=f"{expected.signal} {units.change(expected.signal, pending.before, after)}",
            **detail,
        )
        await self._save(rt)

    async def _revert(
        self, rt: StrategyRuntime, applied: ApplyResult, journal_id: int | None, *, reason: str
    ) -> ApplyResult | None:
        """Undo an applied result; the revert's own result, or None when it failed (logged)."""
        try:
            result = await asyncio.wait_for(rt.strategy.revert(applied), self._settings.apply_timeout_seconds)
        except (StrategyError, TimeoutError) as exc:
            self._log.warning("revert_failed", strategy=rt.name, reason=reason, error=str(exc) or "timeout")
            return None
        except Exception:
            self._log.exception("revert_crashed", strategy=rt.name, reason=reason)
            return None
        self._metrics.reverts.labels(rt.name).inc()
        if journal_id is not None:
            await self._stored(self._store.journal_finish, journal_id, "reverted", result.as_dict())
        self._log.warning(
            "change_reverted",
            strategy=rt.name,
            reason=reason,
            journal_id=journal_id,
            changes=[f"{c.target}: {c.before} -> {c.after}" for c in result.changes],
        )
        return result

    def _take_overrides(self, rt: StrategyRuntime) -> list[OperatorOverride]:
        """The operator changes the strategy noticed since it was last asked; a crash counts as none."""
        try:
            return list(rt.strategy.take_overrides())
        except Exception:
            self._log.exception("take_overrides_crashed", strategy=rt.name)
            return []

    async def _back_off(
        self, rt: StrategyRuntime, overrides: Sequence[OperatorOverride], *, record: Any, family: str
    ) -> None:
        """An operator changed values this strategy manages: stretch its cooldowns from now, say so, act no more now.

        Every action family of the strategy backs off (the operator's value is the strategy's to leave alone,
        whichever of its actions would touch it next), starting with the family of the plan that noticed it.
        """
        rt.pace(family)
        now = self._clock.monotonic()
        for pacing in rt.pacing.values():
            pacing.cooldown = min(self._settings.cooldown_max_seconds, max(pacing.cooldown, 1.0) * 2)
            pacing.last_attempt = now
        targets = ", ".join(f"{o.target} (set {o.expected}, found {o.found})" for o in overrides)
        self._log.warning(
            "strategy_backed_off",
            strategy=rt.name,
            reason="operator_override",
            family=family,
            cooldown_seconds=rt.cooldown,
            overrides=[o.as_dict() for o in overrides],
        )
        row = Plan(
            strategy=rt.name,
            reason=f"operator changed {targets}; left alone, backing off for {rt.cooldown:.0f} s",
            changes=tuple(
                Change(target=o.target, action="operator_override", before=o.expected, after=o.found, reversible=False)
                for o in overrides
            ),
        )
        await record(Outcome.BACKED_OFF, row.reason, row)

    def _count_failure(self, rt: StrategyRuntime, why: str) -> None:
        rt.consecutive_failures += 1
        if rt.consecutive_failures >= self._settings.breaker_failures and not rt.breaker_open:
            rt.breaker_open = True
            rt.breaker_reason = f"{rt.consecutive_failures} consecutive failures or regressions (last: {why})"
            self._log.error("breaker_opened", strategy=rt.name, reason=rt.breaker_reason)

    # rounds ------------------------------------------------------------------------------------------------------

    async def request_round(
        self, *, trigger: str, strategy: str | None = None, dry_run: bool = False, manual: bool = False
    ) -> RoundResult:
        """Run a round, or join the one already running."""
        current = self._current
        if current is not None and not current.done():
            result = await asyncio.shield(current)
            return RoundResult(
                run_id=result.run_id,
                trigger=result.trigger,
                started_wall=result.started_wall,
                duration_seconds=result.duration_seconds,
                decision_ids=result.decision_ids,
                joined=True,
            )
        if self._stopping:
            raise EngineStopping("the daemon is stopping")
        future: asyncio.Future[RoundResult] = asyncio.ensure_future(
            self._round(trigger=trigger, only=strategy, dry_run=dry_run, manual=manual)
        )
        self._current = future
        return await asyncio.shield(future)

    @property
    def optimizing(self) -> bool:
        """Whether a round is running."""
        return self._current is not None and not self._current.done()

    async def _round(self, *, trigger: str, only: str | None, dry_run: bool, manual: bool) -> RoundResult:
        async with self._lock:
            run_id = uuid.uuid4().hex[:16]
            started = time.perf_counter()
            started_wall = self._clock.wall()
            self.heartbeat = self._clock.monotonic()
            ids: list[int] = []
            disruptive_used = False
            snapshot = await self._requested_snapshot() if manual else self.latest
            for rt in self.runtimes.values():
                if only is not None and rt.name != only:
                    continue
                if not rt.enabled or snapshot is None:
                    continue
                decision_id, used = await self._turn(
                    rt,
                    snapshot,
                    run_id=run_id,
                    trigger=trigger,
                    dry_run=dry_run,
                    manual=manual,
                    disruptive_used=disruptive_used,
                )
                disruptive_used = disruptive_used or used
                if decision_id is not None:
                    ids.append(decision_id)
            duration = time.perf_counter() - started
            self.rounds_run += 1
            self._metrics.rounds.labels(trigger.split(":", maxsplit=1)[0]).inc()
            self._metrics.round_duration.observe(duration)
            self._metrics.last_round.set(self._clock.wall())
            self.heartbeat = self._clock.monotonic()
            result = RoundResult(
                run_id=run_id,
                trigger=trigger,
                started_wall=started_wall,
                duration_seconds=duration,
                decision_ids=tuple(ids),
            )
            self.last_round = result
            return result

    async def _requested_snapshot(self) -> Snapshot | None:
        """A fresh sample for a requested round; the latest one when none can be taken (the failure is logged)."""
        if self.refresh is None:
            return self.latest
        try:
            return await self.refresh()
        except Exception as exc:
            self._log.warning(
                "requested_sample_failed",
                error=f"{exc.__class__.__name__}: {exc}",
                kept="the latest sample",
            )
            return self.latest

    def _update_findings(self, rt: StrategyRuntime, ctx: StrategyContext) -> None:
        try:
            current = {f.id: f for f in rt.strategy.findings(ctx)}
        except Exception:
            self._log.exception("findings_crashed", strategy=rt.name)
            return
        for fid, finding in current.items():
            if fid not in self.findings:
                self._log.warning(
                    "finding_appeared",
                    strategy=rt.name,
                    finding=fid,
                    summary=finding.summary,
                    **{f"evidence_{k}": v for k, v in finding.evidence.items()},
                )
        for fid in [f for f, v in self.findings.items() if v.strategy == rt.name and f not in current]:
            self._log.info("finding_cleared", strategy=rt.name, finding=fid)
            del self.findings[fid]
        self.findings.update(current)
        self._metrics.findings.labels(rt.name).set(len(current))

    async def _turn(
        self,
        rt: StrategyRuntime,
        snapshot: Snapshot,
        *,
        run_id: str,
        trigger: str,
        dry_run: bool,
        manual: bool,
        disruptive_used: bool,
    ) -> tuple[int | None, bool]:
        """One strategy's turn: detect, plan, gate, apply. Returns (decision id, used a disruptive action)."""
        specs: Sequence[TriggerSpec]
        try:
            specs = rt.strategy.triggers(self.baselines)
        except Exception as exc:
            # A plugin bug must not cost the other strategies their turn: count it, detect on nothing.
            self._log.exception("triggers_crashed", strategy=rt.name)
            self._count_failure(rt, f"triggers crashed: {exc.__class__.__name__}")
            await self._save(rt)
            specs = ()
        was_armed = rt.detector.armed
        armed = rt.detector.update(specs, self.windows, self._detection)
        if was_armed and not armed:
            # The episode is over: a skip in the next one is a new fact worth a row.
            rt.last_row = None
        if armed != was_armed:
            self._log.info(
                "strategy_armed" if armed else "strategy_disarmed",
                strategy=rt.name,
                signals=list(rt.detector.armed_signals),
            )
        ctx = StrategyContext(
            snapshot=snapshot,
            windows=self.windows,
            armed=rt.detector.armed_signals,
            manual=manual,
            now=self._clock.monotonic(),
            baselines=dict(self.baselines),
        )
        self._update_findings(rt, ctx)
        self._publish(rt)
        if not armed and not manual:
            return None, False
        signals = snapshot.signals()
        trig_values = {s.signal: signals.get(s.signal) for s in specs}
        thresholds = {s.signal: {"enter": s.enter, "exit": s.exit} for s in specs}
        mode = self.mode_of(rt, dry_run)
        started = time.perf_counter()

        async def record(
            outcome: Outcome, reason: str, plan: Plan | None = None, error: str | None = None
        ) -> int | None:
            return await self._record(
                rt,
                run_id=run_id,
                trigger=trigger,
                mode=mode,
                outcome=outcome,
                reason=reason,
                plan=plan,
                error=error,
                signals=trig_values,
                thresholds=thresholds,
                started=started,
                manual=manual,
            )

        if mode is Mode.OBSERVE:
            return await record(Outcome.OBSERVED, f"armed by {', '.join(ctx.armed) or trigger}; observe mode"), False
        if rt.breaker_open:
            return await record(Outcome.BLOCKED_BREAKER, rt.breaker_reason or "circuit breaker open"), False
        try:
            with watch_queueing() as queueing:
                plan = await asyncio.wait_for(rt.strategy.plan(ctx), self._settings.plan_timeout_seconds)
        except TimeoutError:
            queued = queueing.queued()
            if queued >= self._settings.plan_timeout_seconds / 2:
                # Most of the time went waiting for a worker thread: the daemon's own queueing, not the strategy's.
                self._log.warning("plan_queued", strategy=rt.name, queued_seconds=round(queued, 3))
                return await record(
                    Outcome.DEFERRED,
                    f"plan waited {queued:.1f} s for a worker thread; not counted as a failure",
                    error=f"plan exceeded {self._settings.plan_timeout_seconds} s while queued",
                ), False
            self._count_failure(rt, "plan timed out")
            return await record(
                Outcome.TIMEOUT, "plan timed out", error=f"plan exceeded {self._settings.plan_timeout_seconds} s"
            ), False
        except StrategyDeferred as exc:
            # What the strategy reads is not usable now (the backend database is damaged, missing or closed): it
            # plans nothing. Not a failure, so no breaker count; a manual request gets a row saying why.
            self._log.info("plan_deferred", strategy=rt.name, reason=str(exc))
            if manual:
                return await record(Outcome.DEFERRED, str(exc)), False
            return None, False
        except StrategyError as exc:
            self._log.warning("plan_failed", strategy=rt.name, error=str(exc))
            return await record(Outcome.FAILED, "plan failed", error=str(exc)), False
        except Exception as exc:
            self._log.exception("plan_crashed", strategy=rt.name)
            self._count_failure(rt, f"plan crashed: {exc.__class__.__name__}")
            return await record(Outcome.ERROR, "plan crashed", error=f"{exc.__class__.__name__}: {exc}"), False
        # A plan made after noticing an operator's change already leaves that value alone; it goes through the
        # gates as usual, and then the strategy backs off (a longer cooldown from now) so it does not keep pushing.
        overrides = self._take_overrides(rt)
        decision_id, used = await self._gate_and_apply(
            rt, plan, mode=mode, manual=manual, disruptive_used=disruptive_used, record=record, signals=signals
        )
        overrides += self._take_overrides(rt)  # noticed while applying (a re-read found an operator's value)
        if overrides:
            family = plan.pacing_family if plan is not None else DEFAULT_FAMILY
            await self._back_off(rt, overrides, record=record, family=family)
        return decision_id, used

    async def _gate_and_apply(
        self,
        rt: StrategyRuntime,
        plan: Plan | None,
        *,
        mode: Mode,
        manual: bool,
        disruptive_used: bool,
        record: Any,
        signals: Mapping[str, float],
    ) -> tuple[int | None, bool]:
        """The gates after planning (dry run, disruptive, cooldown, budget), then the apply."""
        if plan is None or not plan.changes:
            rt.held_until = None  # nothing to do is not being held back
            if manual:
                return await record(Outcome.NOTHING_TO_DO, "nothing to do"), False
            return None, False
        if mode is Mode.DRY_RUN:
            return await record(Outcome.DRY_RUN, plan.reason, plan), False
        if plan.disruptive and (not self._settings.allow_disruptive or disruptive_used):
            why = (
                "disruptive changes are not enabled"
                if not self._settings.allow_disruptive
                else "one disruptive action per round"
            )
            if not self._settings.allow_disruptive:
                rt.held_until = math.inf  # until a round finds it allowed (a reload) or plans something else
            return await record(Outcome.BLOCKED_DISRUPTIVE, f"{plan.reason} ({why})", plan), False
        family = plan.pacing_family
        named = "" if family == DEFAULT_FAMILY else f"{family} "
        # undoing the strategy's own earlier change is never held back: waiting only keeps that change in effect
        if not plan.restores:
            left = self.cooldown_left(rt, family)
            if left > 0:
                rt.held_until = self._clock.monotonic() + left
                return await record(
                    Outcome.SKIPPED_COOLDOWN, f"{plan.reason} ({named}cooldown: {left:.0f} s left)", plan
                ), False
            if self.budget_left(rt, family) <= 0:
                rt.held_until = self.budget_free_at(rt, family)
                return await record(Outcome.SKIPPED_BUDGET, f"{plan.reason} ({named}action budget spent)", plan), False
        rt.held_until = None
        return await self._apply(rt, plan, record=record, signals=signals), plan.disruptive

    async def _apply(self, rt: StrategyRuntime, plan: Plan, *, record: Any, signals: Mapping[str, float]) -> int | None:
        decision_id: int | None = await record(Outcome.APPLIED, plan.reason, plan)
        journal_id = await self._stored(
            self._store.journal_intent, decision_id=decision_id, strategy=rt.name, plan=plan.as_dict()
        )
        pacing = rt.pace(plan.pacing_family)
        now = self._clock.monotonic()
        previous_attempt = pacing.last_attempt
        pacing.last_attempt = now
        pacing.attempts.append(now)

        def give_back() -> None:
            # nothing was changed: the attempt starts no cooldown and spends no budget
            pacing.last_attempt = previous_attempt
            if pacing.attempts and pacing.attempts[-1] == now:
                pacing.attempts.pop()

        # Persist the attempt before writing: an apply that kills the daemon must still spend cooldown and budget.
        await self._save(rt)
        started = time.perf_counter()
        outcome = Outcome.APPLIED
        error: str | None = None
        result: ApplyResult | None = None
        try:
            result = await asyncio.wait_for(rt.strategy.apply(plan), self._settings.apply_timeout_seconds)
        except TimeoutError:
            outcome, error = Outcome.TIMEOUT, f"apply exceeded {self._settings.apply_timeout_seconds} s"
        except StrategyDeferred as exc:
            outcome, error = Outcome.DEFERRED, str(exc)
            # the target will be ready soon: the next round tries again
            give_back()
        except StrategyError as exc:
            outcome, error = Outcome.FAILED, str(exc)
            self._log.warning("apply_failed", strategy=rt.name, error=error)
        except Exception as exc:
            outcome, error = Outcome.ERROR, f"{exc.__class__.__name__}: {exc}"
            self._log.exception("apply_crashed", strategy=rt.name)
        if result is not None and not result.changed:
            # The apply's re-read found nothing to change: recorded with its figures and judged neutral at once,
            # and it neither holds the next, needed action back by a cooldown nor spends the budget. Only once in
            # a row, though: an action that keeps changing nothing (a collection that frees no memory) is paced
            # like any other instead of running every round.
            outcome = Outcome.NO_CHANGE
            if not pacing.unneeded:
                give_back()
            pacing.unneeded = True
        elif result is not None:
            pacing.unneeded = False
        duration_ms = (time.perf_counter() - started) * 1000
        changes = [c.as_dict() for c in (result.changes if result else plan.changes)]
        if journal_id is not None:
            await self._stored(
                self._store.journal_finish,
                journal_id,
                "done" if result is not None or outcome is Outcome.DEFERRED else "failed",
                result.as_dict() if result is not None else {"error": error},
            )
        if decision_id is not None:
            await self._stored(
                self._store.update_decision,
                decision_id,
                outcome=str(outcome),
                error=error,
                changes=changes if result is not None else None,
                duration_ms=duration_ms,
                verdict=str(Verdict.NEUTRAL) if outcome is Outcome.NO_CHANGE else None,
                verdict_detail={
                    "note": result.detail,
                    "figures": [f"{c['target']}: {c['before']} -> {c['after']}" for c in changes],
                }
                if result is not None and outcome is Outcome.NO_CHANGE
                else None,
            )
        rt.last_outcome = str(outcome)
        self._metrics.actions.labels(rt.name, plan.action, str(outcome), str(Mode.ENFORCE)).inc()
        if outcome in FAILURES:
            rt.scores = [*rt.scores, -1][-SCORE_HISTORY:]
            self._count_failure(rt, error or str(outcome))
        log = self._log.warning if outcome in FAILURES else self._log.info
        log(
            "change_unneeded"
            if outcome is Outcome.NO_CHANGE
            else "change_applied"
            if result is not None
            else "change_deferred"
            if outcome is Outcome.DEFERRED
            else "change_failed",
            strategy=rt.name,
            decision_id=decision_id,
            outcome=str(outcome),
            error=error,
            detail=result.detail if result else None,
            changes=[f"{c['target']}: {c['before']} -> {c['after']}" for c in changes],
            duration_ms=round(duration_ms, 2),
        )
        verifying = False
        if result is not None and outcome is Outcome.APPLIED and plan.expected is not None and result.changes:
            before = signals.get(plan.expected.signal)
            if before is not None:
                verifying = True
                self._pending.append(
                    Pending(
                        decision_id=decision_id,
                        journal_id=journal_id,
                        strategy=rt.name,
                        plan=plan,
                        result=result,
                        before=before,
                        due=self._clock.monotonic() + plan.expected.settle_seconds,
                        applied_at=self._clock.monotonic(),
                    )
                )
        if outcome in (Outcome.APPLIED, Outcome.NO_CHANGE) and not verifying:
            # Nothing is left to judge, so this success ends any run of failures; otherwise the verdict decides.
            rt.consecutive_failures = 0
        await self._save(rt)
        return decision_id

    async def _record(
        self,
        rt: StrategyRuntime,
        *,
        run_id: str,
        trigger: str,
        mode: Mode,
        outcome: Outcome,
        reason: str,
        plan: Plan | None,
        error: str | None,
        signals: Mapping[str, Any],
        thresholds: Mapping[str, Any],
        started: float,
        manual: bool,
    ) -> int | None:
        """One history row and one log line per decision; repeated identical skips are not written again.

        A skip is a repeat when it is about the same thing as the last row: the same outcome for the same action
        family, action and targets (or, without a plan, the same reason). The figures in a reason (the cooldown
        left, the WAL size) do not make a new row; a skip of another family or action, or for another reason,
        does.
        """
        key: tuple[str, ...] = (
            (str(outcome), plan.pacing_family, plan.action, *sorted({c.target for c in plan.changes}))
            if plan is not None
            else (str(outcome), reason)
        )
        if outcome is not Outcome.APPLIED:
            self._metrics.actions.labels(rt.name, plan.action if plan else "none", str(outcome), str(mode)).inc()
        repeat = (
            not manual
            and outcome
            in (
                Outcome.SKIPPED_COOLDOWN,
                Outcome.SKIPPED_BUDGET,
                Outcome.BLOCKED_BREAKER,
                Outcome.BLOCKED_DISRUPTIVE,
                Outcome.OBSERVED,
                Outcome.DRY_RUN,
            )
            and rt.last_row == key
        )
        # last_row (not last_outcome) decides repeats: last_outcome is persisted and shown, last_row is reset
        # when an episode ends, so a new episode's first skip is written again.
        rt.last_row = key
        if outcome is not Outcome.APPLIED:
            rt.last_outcome = str(outcome)
        if repeat:
            return None
        duration_ms = (time.perf_counter() - started) * 1000
        changes = [c.as_dict() for c in plan.changes] if plan else []
        decision_id = await self._stored(
            self._store.add_decision,
            run_id=run_id,
            strategy=rt.name,
            trigger=trigger,
            mode=str(mode),
            action=plan.action if plan else "none",
            reason=reason,
            signals=signals,
            thresholds=thresholds,
            changes=changes,
            outcome=str(outcome),
            error=error,
            duration_ms=duration_ms,
            expected=plan.expected.as_dict() if plan and plan.expected else None,
        )
        self._log.info(
            "decision",
            decision_id=decision_id,
            run_id=run_id,
            strategy=rt.name,
            trigger=trigger,
            mode=str(mode),
            outcome=str(outcome),
            reason=reason,
            signals=dict(signals),
            thresholds=dict(thresholds),
            changes=[f"{c['target']}: {c['before']} -> {c['after']}" for c in changes],
            error=error,
            duration_ms=round(duration_ms, 2),
        )
        if outcome is not Outcome.APPLIED:  # _apply saves once the outcome is known
            await self._save(rt)
        return decision_id
