"""The decision engine: detect on windows, plan, gate, apply with a journal, verify, learn.

One executor: rounds run one at a time; a request that arrives while a round runs joins it. Manual
and Alertmanager triggers skip detection but never the gates (mode, cooldown, budget, breaker), and plan from
a sample taken for them. Cooldown and budget are kept per action family of a strategy, on monotonic time.

The engine coordinates; the parts are their own modules: detection.py (arming), pacing.py (cooldown, budget,
breaker, score), guarded.py (every call into a strategy), recorder.py (history, journal, findings, state),
verification.py (judging an effect), cadence.py (the sample interval, from the watches the engine hands out)
and view.py (what other modules read; they change a strategy only through set_mode, reset and
replace_strategies).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import structlog

from config.settings import DetectionSettings, EngineSettings, Mode
from metrics.prometheus import DaemonMetrics
from metrics.snapshot import Snapshot
from metrics.window import Windows
from optimizer import guarded
from optimizer.cadence import Watch
from optimizer.clock import Clock
from optimizer.decisions import FAILURES, SCORE_OF, Outcome, Turn, Verdict, most_restrictive
from optimizer.pacing import Pacer
from optimizer.recorder import Recorder
from optimizer.runtime import StrategyRuntime
from optimizer.state import StateStore
from optimizer.verification import Pending, assess
from optimizer.view import StrategyView, view_of
from strategies.base import (
    DEFAULT_FAMILY,
    ApplyResult,
    Plan,
    Strategy,
    StrategyContext,
    StrategyDeferred,
    StrategyError,
    TriggerSpec,
)


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

    def __init__(  # noqa: PLR0913 -- keyword-only collaborators and settings of one object
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
        self.pacer = Pacer(engine, clock)
        # takes a fresh sample for a requested round (manual or Alertmanager), which plans from it, not from a
        # sample that may be as old as the stretched sample interval
        self.refresh = refresh
        self._detection = detection
        self.global_mode = global_mode
        self.windows = windows
        self._store = store
        self._clock = clock
        self._log = log if log is not None else structlog.get_logger("engine")
        # the engine's own: other modules read a strategy through view() and change it through the commands
        self.runtimes = {
            s.name: StrategyRuntime(
                strategy=s, config_mode=mode, enabled=enabled, base_cooldown=engine.cooldown_seconds
            )
            for s, mode, enabled in strategies
        }
        self.latest: Snapshot | None = None
        self.baselines: dict[str, float] = {}
        # the state writes run on their own pool: strategies' threads (the loop's default pool) cannot hold them up
        self._recorder = Recorder(store, metrics, self._log, clock=clock, executor=store_executor)
        self._stored, self._save, self._publish = self._recorder.stored, self._recorder.save, self._recorder.publish
        self.findings = self._recorder.findings
        self._pending: list[Pending] = []
        self._current: asyncio.Future[RoundResult] | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._verify_task: asyncio.Task[None] | None = None
        self.rounds_run = 0
        # called on the engine's loop as each round ends (rounds_run just counted it); its failure is only logged
        self.on_round_end: Callable[[], object] | None = None
        self.last_round: RoundResult | None = None
        self.heartbeat = clock.monotonic()
        for rt in self.runtimes.values():
            rt.take_factor()

    # lifecycle and state -------------------------------------------------------------------------------------------

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
                plan = Plan.from_dict(entry.plan, legacy=rt.strategy.legacy_actions)
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
                plan = Plan.from_dict(entry.plan, legacy=rt.strategy.legacy_actions)
                result = ApplyResult.from_dict(entry.result, legacy=rt.strategy.legacy_revert)
            except (KeyError, ValueError, TypeError) as exc:
                self._log.warning("journal_unreadable", strategy=rt.name, journal_id=entry.id, error=str(exc))
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

    def view(self, name: str) -> StrategyView:
        """A read-only view of one strategy as it stands now; KeyError when there is none of that name."""
        rt = self.runtimes[name]
        return view_of(rt, self.mode_of(rt), self.pacer, self.triggers_of(rt), self.findings.values())

    def views(self) -> list[StrategyView]:
        """Every strategy's view, in order."""
        return [self.view(name) for name in self.runtimes]

    def watches(self) -> list[Watch]:
        """What the sample cadence reads of each strategy, taken now."""
        return [v.watch() for v in self.views()]

    async def close(self) -> None:
        """Close every strategy (what it holds: sessions, files)."""
        for rt in self.runtimes.values():
            await rt.strategy.close()

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
        was_open = self.pacer.reset(rt)
        rt.last_row = None
        rt.planned_nothing = False
        self._log.info("strategy_reset", strategy=name, breaker_was_open=was_open)
        await self._save(rt)

    # samples and verification ------------------------------------------------------------------------------------

    def triggers_of(self, rt: StrategyRuntime) -> Sequence[TriggerSpec]:
        """A strategy's triggers for display and interval tuning; empty (never raising) when they crash."""
        specs = guarded.triggers(rt.strategy, self.baselines)
        return () if isinstance(specs, Exception) else specs

    def update_settings(self, engine: EngineSettings, detection: DetectionSettings, global_mode: Mode) -> None:
        """Apply reloaded engine and detection settings (SIGHUP) without losing what was learned."""
        self._settings = self.pacer.settings = engine
        self._detection = detection
        self.global_mode = global_mode
        for rt in self.runtimes.values():
            self.pacer.reconfigure(engine, rt)

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
                rt.take_factor()
                taken.add(name)
            done.extend(strategy for name, (strategy, _, _) in fresh.items() if name not in taken)
        for strategy in done:  # closing must not stop the reload; the instance is dropped either way
            await guarded.close(strategy, self._log)

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
        judged = assess(pending, expected, self.windows, self._clock.monotonic())
        if judged is None:
            self._pending.append(pending)
            return
        verdict, detail = judged.verdict, judged.detail
        reverted = False
        if verdict is Verdict.REGRESSED and pending.plan.reversible:
            reverted = await self._revert(rt, pending.result, pending.journal_id, reason="regressed") is not None
        detail["reverted"] = reverted
        self.pacer.scored(rt, SCORE_OF[verdict])
        family = pending.plan.pacing_family
        if verdict is Verdict.IMPROVED:
            self.pacer.improved(rt, family)
        elif verdict is Verdict.NEUTRAL:
            cooldown = self.pacer.no_effect(rt, family)
            self._log.info(
                "strategy_backed_off", strategy=rt.name, family=family, cooldown_seconds=cooldown, reason="no effect"
            )
        else:
            self._count_failure(rt, f"regressed {expected.signal}")
        await self._recorder.verdict(
            rt, pending.decision_id, verdict, detail, signal=expected.signal, before=pending.before, after=judged.after
        )
        await self._save(rt)

    async def _revert(
        self, rt: StrategyRuntime, applied: ApplyResult, journal_id: int | None, *, reason: str
    ) -> ApplyResult | None:
        """Undo an applied result; the revert's own result, or None when it failed (logged)."""
        timeout = self._settings.apply_timeout_seconds
        result = await guarded.revert(rt.strategy, applied, timeout, self._log, reason=reason)
        rt.take_factor()
        if result is not None:
            await self._recorder.reverted(rt, journal_id, result, reason=reason)
        return result

    def _count_failure(self, rt: StrategyRuntime, why: str) -> None:
        opened = self.pacer.failed(rt, why)
        if opened is not None:
            self._log.error("breaker_opened", strategy=rt.name, reason=opened)

    # rounds ------------------------------------------------------------------------------------------------------

    async def request_round(
        self, *, trigger: str, strategy: str | None = None, dry_run: bool = False, manual: bool = False
    ) -> RoundResult:
        """Run a round, or join the one already running."""
        current = self._current
        if current is not None and not current.done():
            return dataclasses.replace(await asyncio.shield(current), joined=True)
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
                rt.take_factor()
                disruptive_used = disruptive_used or used
                if decision_id is not None:
                    ids.append(decision_id)
            duration = time.perf_counter() - started
            self.rounds_run += 1
            self._recorder.round_done(trigger, duration)
            if self.on_round_end is not None:
                try:
                    self.on_round_end()
                except Exception:
                    self._log.exception("round_end_hook_crashed")
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
            error = f"{exc.__class__.__name__}: {exc}"
            self._log.warning("requested_sample_failed", error=error, kept="the latest sample")
            return self.latest

    async def _detect(self, rt: StrategyRuntime) -> Sequence[TriggerSpec]:
        """Re-evaluate the strategy's detector on the windows; its triggers (none when they crash, counted)."""
        specs = guarded.triggers(rt.strategy, self.baselines, self._log)
        if isinstance(specs, Exception):
            # A plugin bug must not cost the other strategies their turn: count it, detect on nothing.
            self._count_failure(rt, f"triggers crashed: {specs.__class__.__name__}")
            await self._save(rt)
            specs = ()
        was_armed = rt.detector.armed
        armed = rt.detector.update(specs, self.windows, self._detection)
        if was_armed and not armed:
            # The episode is over: a skip in the next one is a new fact worth a row.
            rt.last_row = None
            rt.planned_nothing = False
        if armed != was_armed:
            self._log.info(
                "strategy_armed" if armed else "strategy_disarmed",
                strategy=rt.name,
                signals=list(rt.detector.armed_signals),
            )
        return specs

    async def _turn(  # noqa: PLR0913 -- a turn's context: strategy, snapshot, trigger, mode and run
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
        specs = await self._detect(rt)
        ctx = StrategyContext(
            snapshot=snapshot,
            windows=self.windows,
            armed=rt.detector.armed_signals,
            manual=manual,
            now=self._clock.monotonic(),
            baselines=dict(self.baselines),
        )
        self._recorder.update_findings(rt, ctx)
        self._publish(rt)
        if not rt.detector.armed and not manual:
            return None, False
        signals = snapshot.signals()
        turn = Turn(
            run_id=run_id,
            trigger=trigger,
            mode=self.mode_of(rt, dry_run),
            manual=manual,
            signals={s.signal: signals.get(s.signal) for s in specs},
            thresholds={s.signal: {"enter": s.enter, "exit": s.exit} for s in specs},
            started=time.perf_counter(),
        )
        if turn.mode is Mode.OBSERVE:
            reason = f"armed by {', '.join(ctx.armed) or trigger}; observe mode"
            return await self._recorder.decision(rt, turn, Outcome.OBSERVED, reason), False
        if rt.breaker_open:
            reason = rt.breaker_reason or "circuit breaker open"
            return await self._recorder.decision(rt, turn, Outcome.BLOCKED_BREAKER, reason), False
        planned = await guarded.plan(rt.strategy, ctx, self._settings.plan_timeout_seconds, self._log)
        if isinstance(planned, guarded.Failed):
            if planned.counted is not None:
                self._count_failure(rt, planned.counted)
            if planned.manual_only and not manual:
                return None, False
            return await self._recorder.decision(rt, turn, planned.outcome, planned.reason, error=planned.error), False
        # A plan made after noticing an operator's change already leaves that value alone; it goes through the
        # gates as usual, and then the strategy backs off (a longer cooldown from now) so it does not keep pushing.
        overrides = guarded.overrides(rt.strategy, self._log)
        decision_id, used = await self._gate_and_apply(rt, planned, turn, signals, disruptive_used=disruptive_used)
        # and those noticed while applying (a re-read found an operator's value)
        overrides += guarded.overrides(rt.strategy, self._log)
        if overrides:
            # Every action family backs off from now (the operator's value is the strategy's to leave alone,
            # whichever of its actions would touch it next), starting with the family of the plan that noticed it.
            family = planned.pacing_family if planned is not None else DEFAULT_FAMILY
            self.pacer.back_off(rt, family)
            await self._recorder.backed_off(rt, turn, overrides, family=family)
        return decision_id, used

    async def _gate_and_apply(
        self,
        rt: StrategyRuntime,
        plan: Plan | None,
        turn: Turn,
        signals: Mapping[str, float],
        *,
        disruptive_used: bool,
    ) -> tuple[int | None, bool]:
        """The gates after planning (dry run, disruptive, cooldown, budget), then the apply."""
        record = functools.partial(self._recorder.decision, rt, turn)
        rt.planned_nothing = plan is None or not plan.changes
        if plan is None or not plan.changes:
            self.pacer.release(rt)  # nothing to do is not being held back
            return (await record(Outcome.NOTHING_TO_DO, "nothing to do") if turn.manual else None), False
        if turn.mode is Mode.DRY_RUN:
            return await record(Outcome.DRY_RUN, plan.reason, plan), False
        allowed = self._settings.allow_disruptive
        if plan.disruptive and (not allowed or disruptive_used):
            why = "disruptive changes are not enabled" if not allowed else "one disruptive action per round"
            if not allowed:
                self.pacer.hold_for_ever(rt)
            return await record(Outcome.BLOCKED_DISRUPTIVE, f"{plan.reason} ({why})", plan), False
        family = plan.pacing_family
        named = "" if family == DEFAULT_FAMILY else f"{family} "
        # undoing the strategy's own earlier change is never held back: waiting only keeps that change in effect
        held = None if plan.restores else self.pacer.hold(rt, family)
        if held is not None:
            outcome = Outcome.SKIPPED_COOLDOWN if held.gate == "cooldown" else Outcome.SKIPPED_BUDGET
            return await record(outcome, f"{plan.reason} ({named}{held.why})", plan), False
        self.pacer.release(rt)
        return await self._apply(rt, plan, turn, signals), plan.disruptive

    async def _apply(self, rt: StrategyRuntime, plan: Plan, turn: Turn, signals: Mapping[str, float]) -> int | None:
        """Apply a plan that passed the gates: journal first, spend the attempt, apply, record, queue the verdict."""
        decision_id = await self._recorder.decision(rt, turn, Outcome.APPLIED, plan.reason, plan)
        journal_id = await self._recorder.intent(rt, decision_id, plan)
        attempt = self.pacer.attempt(rt, plan.pacing_family)
        # Persist the attempt before writing: an apply that kills the daemon must still spend cooldown and budget.
        await self._save(rt)
        started = time.perf_counter()
        outcome, error, result = await guarded.apply(rt.strategy, plan, self._settings.apply_timeout_seconds, self._log)
        if outcome is Outcome.DEFERRED:
            attempt.give_back()  # the target will be ready soon: the next round tries again
        if result is not None:
            # An apply whose re-read found nothing to change is recorded with its figures and judged neutral at
            # once, and (once in a row) neither holds the next, needed action back nor spends the budget.
            attempt.settle(changed=result.changed)
            if not result.changed:
                outcome = Outcome.NO_CHANGE
        duration_ms = (time.perf_counter() - started) * 1000
        if outcome in FAILURES:
            self.pacer.scored(rt, -1)
            self._count_failure(rt, error or str(outcome))
        await self._recorder.applied(
            rt,
            plan,
            decision_id=decision_id,
            journal_id=journal_id,
            outcome=outcome,
            error=error,
            result=result,
            duration_ms=duration_ms,
        )
        pending = None
        if result is not None and outcome is Outcome.APPLIED:
            now = self._clock.monotonic()
            pending = Pending.of(
                rt.name, plan, result, signals, decision_id=decision_id, journal_id=journal_id, now=now
            )
        if pending is not None:
            self._pending.append(pending)
        elif outcome in (Outcome.APPLIED, Outcome.NO_CHANGE):
            # Nothing is left to judge, so this success ends any run of failures; otherwise the verdict decides.
            self.pacer.succeeded(rt)
        await self._save(rt)
        return decision_id
