"""Pacing: how often a strategy may act, per action family, and when it must stop (cooldown, budget, breaker, score).

``Paced`` is the state (kept on each strategy's runtime and persisted); ``Pacer`` holds the rules over it, with
the engine settings and a monotonic clock, so that a wall-clock jump changes nothing. Reads (cooldown left,
budget left, the display view) never change the state; only the engine's writes do (an attempt, a verdict,
a failure, a back-off, a reset).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config.settings import EngineSettings
from optimizer.clock import Clock
from strategies.base import DEFAULT_FAMILY

SCORE_HISTORY = 10


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


@dataclass(slots=True, kw_only=True)
class Paced:
    """What pacing keeps about one strategy: per-family cooldowns and attempts, the breaker and the score."""

    base_cooldown: float
    scores: list[int] = field(default_factory=list)
    consecutive_failures: int = 0
    breaker_open: bool = False
    breaker_reason: str | None = None
    # cooldown and budget per action family (Plan.family), on monotonic time so a wall-clock jump changes nothing
    pacing: dict[str, Pacing] = field(default_factory=dict)
    # monotonic time until which the strategy cannot act (its plan was held by a cooldown, the budget or the
    # breaker): the sample interval does not tighten for it meanwhile
    held_until: float | None = None

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

    def families(self, family: str | None) -> list[Pacing]:
        """One family's pacing (none when it never acted), or every family's."""
        if family is None:
            return list(self.pacing.values())
        found = self.pacing.get(family)
        return [found] if found is not None else []

    def pacing_state(self, now_mono: float, now_wall: float) -> dict[str, Any]:
        """What survives a restart; attempt times are stored as wall time."""

        def wall(mono: float) -> float:
            return now_wall - (now_mono - mono)

        return {
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
        }

    def load_pacing(self, data: Mapping[str, Any], now_mono: float, now_wall: float) -> None:
        """Restore what a previous run kept; attempt times in the future (the clock went back) become now."""
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


@dataclass(slots=True)
class Attempt:
    """An apply under way: it spent cooldown and budget, which ``give_back`` returns when nothing was changed."""

    pacing: Pacing
    at: float
    previous: float | None

    def give_back(self) -> None:
        """Nothing was changed: the attempt starts no cooldown and spends no budget."""
        self.pacing.last_attempt = self.previous
        if self.pacing.attempts and self.pacing.attempts[-1] == self.at:
            self.pacing.attempts.pop()

    def settle(self, *, changed: bool) -> None:
        """The apply finished. One that changed nothing is given back, though only once in a row: an action
        that keeps changing nothing (a collection that frees no memory) is paced like any other."""
        if not changed:
            if not self.pacing.unneeded:
                self.give_back()
            self.pacing.unneeded = True
        else:
            self.pacing.unneeded = False


@dataclass(frozen=True, slots=True)
class Held:
    """A plan held back by a gate: which one ("cooldown" or "budget"), and why, for its history row."""

    gate: str
    why: str


class Pacer:
    """The pacing rules: gates before an apply, and what an attempt, a verdict or a failure does to the state."""

    def __init__(self, settings: EngineSettings, clock: Clock) -> None:
        self.settings = settings
        self._clock = clock

    # reads ---------------------------------------------------------------------------------------------------------

    def cooldown_left(self, paced: Paced, family: str | None = None) -> float:
        """Seconds until the family may act again; without one, until every family of the strategy may."""
        now = self._clock.monotonic()
        return max(
            (max(0.0, p.last_attempt + p.cooldown - now) for p in paced.families(family) if p.last_attempt is not None),
            default=0.0,
        )

    def _recent(self, pacing: Pacing) -> list[float]:
        horizon = self._clock.monotonic() - self.settings.budget_window_seconds
        return sorted(t for t in pacing.attempts if t > horizon)

    def budget_left(self, paced: Paced, family: str | None = None) -> int:
        """Attempts left in the family's rolling budget window; without one, the least left in any family."""
        left = self.settings.budget_actions
        for p in paced.families(family):
            left = min(left, self.settings.budget_actions - len(self._recent(p)))
        return max(0, left)

    def budget_free_at(self, paced: Paced, family: str) -> float:
        """The monotonic time at which the family's budget has an attempt free again."""
        recent = self._recent(paced.pace(family))
        spent = len(recent) - self.settings.budget_actions
        if spent < 0 or not recent:
            return self._clock.monotonic()
        return recent[spent] + self.settings.budget_window_seconds

    def can_act(self, paced: Paced) -> bool:
        """Whether the strategy could act now: not held by an open breaker, or by the cooldown, budget or
        disabled disruptive changes its last plan met."""
        if paced.breaker_open:
            return False
        return paced.held_until is None or self._clock.monotonic() >= paced.held_until

    def view(self, paced: Paced) -> dict[str, dict[str, float | int]]:
        """Each action family's cooldown, cooldown left and budget left, for display."""
        return {
            family: {
                "cooldownSeconds": p.cooldown,
                "cooldownLeftSeconds": round(self.cooldown_left(paced, family), 3),
                "budgetLeft": self.budget_left(paced, family),
            }
            for family, p in sorted(paced.pacing.items())
        }

    # gates ---------------------------------------------------------------------------------------------------------

    def hold(self, paced: Paced, family: str) -> Held | None:
        """Which gate keeps the family from acting now, holding the strategy until it opens; None (and not held)
        when it may act."""
        left = self.cooldown_left(paced, family)
        if left > 0:
            paced.held_until = self._clock.monotonic() + left
            return Held(gate="cooldown", why=f"cooldown: {left:.0f} s left")
        if self.budget_left(paced, family) <= 0:
            paced.held_until = self.budget_free_at(paced, family)
            return Held(gate="budget", why="action budget spent")
        paced.held_until = None
        return None

    @staticmethod
    def hold_for_ever(paced: Paced) -> None:
        """Held until a round finds its plan allowed (disruptive changes enabled by a reload) or plans another."""
        paced.held_until = math.inf

    @staticmethod
    def release(paced: Paced) -> None:
        """Not held back (nothing to do, or a plan that passed the gates)."""
        paced.held_until = None

    # writes --------------------------------------------------------------------------------------------------------

    def attempt(self, paced: Paced, family: str) -> Attempt:
        """Start an apply: it starts the family's cooldown and spends one of its budget (attempts that left
        the budget window are dropped here)."""
        pacing = paced.pace(family)
        now = self._clock.monotonic()
        attempt = Attempt(pacing=pacing, at=now, previous=pacing.last_attempt)
        pacing.attempts = [*self._recent(pacing), now]
        pacing.last_attempt = now
        return attempt

    def improved(self, paced: Paced, family: str) -> None:
        """A verdict of improved: the run of failures ends and the family's cooldown halves (not below the base)."""
        paced.consecutive_failures = 0
        pacing = paced.pace(family)
        pacing.cooldown = max(paced.base_cooldown, pacing.cooldown / 2)

    def no_effect(self, paced: Paced, family: str) -> float:
        """A neutral verdict: not a failure (the run the breaker counts is broken), but the cooldown doubles.
        Returns the new cooldown."""
        paced.consecutive_failures = 0
        pacing = paced.pace(family)
        pacing.cooldown = self._doubled(pacing.cooldown)
        return pacing.cooldown

    def succeeded(self, paced: Paced) -> None:
        """An apply with nothing left to judge: the run of failures ends."""
        paced.consecutive_failures = 0

    def failed(self, paced: Paced, why: str) -> str | None:
        """A failure or a regression; the breaker opens after ``breaker_failures`` in a row. Returns the
        breaker's reason when this one opened it."""
        paced.consecutive_failures += 1
        if paced.consecutive_failures >= self.settings.breaker_failures and not paced.breaker_open:
            paced.breaker_open = True
            paced.breaker_reason = f"{paced.consecutive_failures} consecutive failures or regressions (last: {why})"
            return paced.breaker_reason
        return None

    @staticmethod
    def scored(paced: Paced, value: int) -> None:
        """Add a verdict to the score: +1 improved, 0 neutral, -1 regressed or failed."""
        paced.scores = [*paced.scores, value][-SCORE_HISTORY:]

    def back_off(self, paced: Paced, family: str) -> None:
        """An operator changed values the strategy manages: every family's cooldown doubles, counted from now."""
        paced.pace(family)
        now = self._clock.monotonic()
        for pacing in paced.pacing.values():
            pacing.cooldown = self._doubled(pacing.cooldown)
            pacing.last_attempt = now

    @staticmethod
    def reset(paced: Paced) -> bool:
        """Close the breaker, clear failures, restore the base cooldown, give the budget back; whether the
        breaker was open."""
        was_open = paced.breaker_open
        paced.breaker_open = False
        paced.breaker_reason = None
        paced.consecutive_failures = 0
        paced.pacing = {}
        paced.held_until = None
        return was_open

    def reconfigure(self, settings: EngineSettings, paced: Paced) -> None:
        """New engine settings (a reload): a changed base cooldown moves each family's within the new bounds."""
        if paced.base_cooldown != settings.cooldown_seconds:
            paced.base_cooldown = settings.cooldown_seconds
            for p in paced.pacing.values():
                p.cooldown = min(max(p.cooldown, settings.cooldown_seconds), settings.cooldown_max_seconds)

    def _doubled(self, cooldown: float) -> float:
        return min(self.settings.cooldown_max_seconds, max(cooldown, 1.0) * 2)
