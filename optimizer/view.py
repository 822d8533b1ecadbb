"""A read-only view of one strategy's runtime, for the API, the Alertmanager receiver, the daemon and the CLI.

The engine owns the runtimes; everyone else reads a ``StrategyView`` (a frozen copy taken now) and changes a
strategy only through the engine's commands (set_mode, reset, replace_strategies). Reading a view changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from config.settings import Mode
from optimizer.cadence import Watch
from optimizer.pacing import Pacer
from optimizer.runtime import StrategyRuntime
from strategies.base import Finding, TriggerSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyView:
    """One strategy as it stands now."""

    name: str
    enabled: bool
    # the mode it runs in now (the most restrictive of the global, configured and run-time modes)
    mode: Mode
    mode_override: Mode | None
    armed: bool
    armed_by: tuple[str, ...]
    cooldown_seconds: float
    cooldown_left_seconds: float
    budget_left: int
    # per action family: cooldownSeconds, cooldownLeftSeconds, budgetLeft
    pacing: dict[str, dict[str, float | int]]
    breaker_open: bool
    breaker_reason: str | None
    consecutive_failures: int
    score: float
    last_outcome: str | None
    last_verdict: str | None
    triggers: tuple[TriggerSpec, ...]
    findings: tuple[Finding, ...]
    # the stretch of the sample interval it asked for when its last turn ended (1.0: none)
    factor: float
    # not held by an open breaker, a cooldown, the budget or disabled disruptive changes, and not armed by a
    # condition its last plan found nothing to do about
    can_act: bool

    def watch(self) -> Watch:
        """What the sample cadence reads of it."""
        return Watch(
            specs=self.triggers, armed=self.armed, factor=self.factor, can_act=self.can_act, enabled=self.enabled
        )


def view_of(
    rt: StrategyRuntime, mode: Mode, pacer: Pacer, triggers: Sequence[TriggerSpec], findings: Iterable[Finding]
) -> StrategyView:
    """A frozen copy of the runtime's state, with the pacing figures as of now."""
    return StrategyView(
        name=rt.name,
        enabled=rt.enabled,
        mode=mode,
        mode_override=rt.mode_override,
        armed=rt.detector.armed,
        armed_by=rt.detector.armed_signals,
        cooldown_seconds=rt.cooldown,
        cooldown_left_seconds=pacer.cooldown_left(rt),
        budget_left=pacer.budget_left(rt),
        pacing=pacer.view(rt),
        breaker_open=rt.breaker_open,
        breaker_reason=rt.breaker_reason,
        consecutive_failures=rt.consecutive_failures,
        score=rt.score,
        last_outcome=rt.last_outcome,
        last_verdict=rt.last_verdict,
        triggers=tuple(triggers),
        findings=tuple(f for f in findings if f.strategy == rt.name),
        factor=rt.factor,
        can_act=pacer.can_act(rt) and not rt.idle_armed,
    )
