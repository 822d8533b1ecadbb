"""The decision recorder: every write about a decision (history row, journal record, verdict, finding) and the log
line that goes with it.

The engine decides; the recorder writes it down. History rows are written once per fact: a skip that repeats
the last row of its strategy (same outcome, family, action and targets) is counted but not written again.
Store calls run on the store's own pool, so the strategies' threads cannot hold up the records.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from config import units
from config.settings import Mode
from metrics.prometheus import DaemonMetrics
from optimizer.clock import Clock
from optimizer.decisions import FAILURES, REPEATABLE, Outcome, Turn, Verdict
from optimizer.executors import run_in
from optimizer.runtime import StrategyRuntime
from optimizer.state import StateStore
from strategies.base import ApplyResult, Change, Finding, OperatorOverride, Plan, StrategyContext

T = TypeVar("T")


def _figures(changes: list[dict[str, Any]]) -> list[str]:
    return [f"{c['target']}: {c['before']} -> {c['after']}" for c in changes]


class Recorder:
    """Writes the engine's decisions to the state store and the log; keeps the current findings."""

    def __init__(
        self,
        store: StateStore,
        metrics: DaemonMetrics,
        log: Any,
        *,
        clock: Clock,
        executor: Executor | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._executor = executor
        self.findings: dict[str, Finding] = {}

    async def stored(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a state store call on the store's pool (a worker thread when there is none)."""
        if self._executor is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return await run_in(self._executor, functools.partial(fn, *args, **kwargs))

    def round_done(self, trigger: str, duration: float) -> None:
        """A finished round in the metrics: counted by the kind of trigger, timed, and when."""
        self._metrics.rounds.labels(trigger.split(":", maxsplit=1)[0]).inc()
        self._metrics.round_duration.observe(duration)
        self._metrics.last_round.set(self._clock.wall())

    def publish(self, rt: StrategyRuntime) -> None:
        """The runtime's gauges: breaker, armed, cooldown, score."""
        self._metrics.breaker_open.labels(rt.name).set(1 if rt.breaker_open else 0)
        self._metrics.armed.labels(rt.name).set(1 if rt.detector.armed else 0)
        self._metrics.cooldown.labels(rt.name).set(rt.cooldown)
        self._metrics.score.labels(rt.name).set(rt.score)

    async def save(self, rt: StrategyRuntime) -> None:
        """Persist what the engine learned about the strategy (and publish its gauges)."""
        self.publish(rt)
        state = rt.to_state(self._clock.monotonic(), self._clock.wall())
        await self.stored(self._store.save_strategy, rt.name, state)

    async def decision(  # noqa: PLR0913 -- a history row's fields
        self,
        rt: StrategyRuntime,
        turn: Turn,
        outcome: Outcome,
        reason: str,
        plan: Plan | None = None,
        *,
        error: str | None = None,
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
            action = plan.action if plan else "none"
            self._metrics.actions.labels(rt.name, action, str(outcome), str(turn.mode)).inc()
        repeat = not turn.manual and outcome in REPEATABLE and rt.last_row == key
        # last_row (not last_outcome) decides repeats: last_outcome is persisted and shown, last_row is reset
        # when an episode ends, so a new episode's first skip is written again.
        rt.last_row = key
        if outcome is not Outcome.APPLIED:
            rt.last_outcome = str(outcome)
        if repeat:
            return None
        duration_ms = (time.perf_counter() - turn.started) * 1000
        changes = [c.as_dict() for c in plan.changes] if plan else []
        decision_id = await self.stored(
            self._store.add_decision,
            run_id=turn.run_id,
            strategy=rt.name,
            trigger=turn.trigger,
            mode=str(turn.mode),
            action=plan.action if plan else "none",
            reason=reason,
            signals=turn.signals,
            thresholds=turn.thresholds,
            changes=changes,
            outcome=str(outcome),
            error=error,
            duration_ms=duration_ms,
            expected=plan.expected.as_dict() if plan and plan.expected else None,
        )
        self._log.info(
            "decision",
            decision_id=decision_id,
            run_id=turn.run_id,
            strategy=rt.name,
            trigger=turn.trigger,
            mode=str(turn.mode),
            outcome=str(outcome),
            reason=reason,
            signals=dict(turn.signals),
            thresholds=dict(turn.thresholds),
            changes=_figures(changes),
            error=error,
            duration_ms=round(duration_ms, 2),
        )
        if outcome is not Outcome.APPLIED:  # an apply is saved once its outcome is known
            await self.save(rt)
        return decision_id

    async def backed_off(
        self, rt: StrategyRuntime, turn: Turn, overrides: Sequence[OperatorOverride], *, family: str
    ) -> int | None:
        """An operator changed values the strategy manages: said, and a row naming each value left alone."""
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
        return await self.decision(rt, turn, Outcome.BACKED_OFF, row.reason, row)

    async def intent(self, rt: StrategyRuntime, decision_id: int | None, plan: Plan) -> int | None:
        """The journal's record of an apply about to start: what to reconcile if the daemon dies during it."""
        return await self.stored(
            self._store.journal_intent, decision_id=decision_id, strategy=rt.name, plan=plan.as_dict()
        )

    async def applied(  # noqa: PLR0913 -- a history row's fields
        self,
        rt: StrategyRuntime,
        plan: Plan,
        *,
        decision_id: int | None,
        journal_id: int | None,
        outcome: Outcome,
        error: str | None,
        result: ApplyResult | None,
        duration_ms: float,
    ) -> None:
        """What the apply did: the journal record closed, the history row completed, the log line.

        An apply that changed nothing (NO_CHANGE) is judged neutral at once, with its figures as the verdict.
        """
        changes = [c.as_dict() for c in (result.changes if result else plan.changes)]
        if journal_id is not None:
            await self.stored(
                self._store.journal_finish,
                journal_id,
                "done" if result is not None or outcome is Outcome.DEFERRED else "failed",
                result.as_dict() if result is not None else {"error": error},
            )
        unneeded = result is not None and outcome is Outcome.NO_CHANGE
        if decision_id is not None:
            await self.stored(
                self._store.update_decision,
                decision_id,
                outcome=str(outcome),
                error=error,
                changes=changes if result is not None else None,
                duration_ms=duration_ms,
                verdict=str(Verdict.NEUTRAL) if outcome is Outcome.NO_CHANGE else None,
                verdict_detail={"note": result.detail, "figures": _figures(changes)}
                if unneeded and result is not None
                else None,
            )
        rt.last_outcome = str(outcome)
        self._metrics.actions.labels(rt.name, plan.action, str(outcome), str(Mode.ENFORCE)).inc()
        if outcome is Outcome.NO_CHANGE:
            event = "change_unneeded"
        elif result is not None:
            event = "change_applied"
        else:
            event = "change_deferred" if outcome is Outcome.DEFERRED else "change_failed"
        log = self._log.warning if outcome in FAILURES else self._log.info
        log(
            event,
            strategy=rt.name,
            decision_id=decision_id,
            outcome=str(outcome),
            error=error,
            detail=result.detail if result else None,
            changes=_figures(changes),
            duration_ms=round(duration_ms, 2),
        )

    async def verdict(  # noqa: PLR0913 -- a history row's fields
        self,
        rt: StrategyRuntime,
        decision_id: int | None,
        verdict: Verdict,
        detail: Mapping[str, Any],
        *,
        signal: str,
        before: float,
        after: float | None,
    ) -> None:
        """The measured effect of an applied plan, on its history row and in the log."""
        self._metrics.verdicts.labels(rt.name, str(verdict)).inc()
        rt.last_verdict = str(verdict)
        if decision_id is not None:
            await self.stored(self._store.update_decision, decision_id, verdict=str(verdict), verdict_detail=detail)
        self._log.info(
            "effect_verified",
            strategy=rt.name,
            decision_id=decision_id,
            verdict=str(verdict),
            # the measurement as a person reads it ("wal_bytes 80 MiB -> 0 B"); the raw numbers stay in the keys
            figures=f"{signal} {units.change(signal, before, after)}",
            **detail,
        )

    async def reverted(self, rt: StrategyRuntime, journal_id: int | None, result: ApplyResult, *, reason: str) -> None:
        """A change undone: its journal record closed as reverted, and said."""
        self._metrics.reverts.labels(rt.name).inc()
        if journal_id is not None:
            await self.stored(self._store.journal_finish, journal_id, "reverted", result.as_dict())
        self._log.warning(
            "change_reverted",
            strategy=rt.name,
            reason=reason,
            journal_id=journal_id,
            changes=[f"{c.target}: {c.before} -> {c.after}" for c in result.changes],
        )

    def update_findings(self, rt: StrategyRuntime, ctx: StrategyContext) -> None:
        """Ask the strategy for its findings; say which appeared and which cleared."""
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
