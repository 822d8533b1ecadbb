"""The words of a decision: what became of a turn (Outcome), what its effect was (Verdict), and the modes.

Shared by the engine, the recorder and the dashboard; plain values and pure functions only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from config.settings import Mode
from strategies.base import Direction

_RANK = {Mode.OBSERVE: 0, Mode.DRY_RUN: 1, Mode.ENFORCE: 2}


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


FAILURES = frozenset({Outcome.FAILED, Outcome.TIMEOUT, Outcome.ERROR})
# skips and blocks that repeat round after round: an identical one is not written to the history again
REPEATABLE = frozenset(
    {
        Outcome.SKIPPED_COOLDOWN,
        Outcome.SKIPPED_BUDGET,
        Outcome.BLOCKED_BREAKER,
        Outcome.BLOCKED_DISRUPTIVE,
        Outcome.OBSERVED,
        Outcome.DRY_RUN,
    }
)


class Verdict(StrEnum):
    """The measured effect of an applied plan after its settle time."""

    IMPROVED = "improved"
    NEUTRAL = "neutral"
    REGRESSED = "regressed"


SCORE_OF = {Verdict.IMPROVED: 1, Verdict.NEUTRAL: 0, Verdict.REGRESSED: -1}


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    """One strategy's turn in a round: what every history row written for it shares."""

    run_id: str
    trigger: str
    mode: Mode
    manual: bool
    # the triggers' values in the sample planned from, and their lines
    signals: Mapping[str, float | None]
    thresholds: Mapping[str, Mapping[str, float]]
    # time.perf_counter() when the turn began: a row's duration
    started: float
