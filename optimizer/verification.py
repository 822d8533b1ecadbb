"""Verification: an applied plan waits for its settle time, then its expected signal is judged.

Pure: the pending plan, the windows and the time in; a verdict with its figures out, or None while the signal
has not been measured since the change (it waits up to VERIFY_WAIT_SECONDS past the settle time for that).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metrics.window import Windows
from optimizer.decisions import Verdict, judge
from strategies.base import ApplyResult, ExpectedEffect, Plan

# how long past its settle time a verdict waits for its signal to be measured again (a source whose earlier
# reading stands in, such as the cache stats when the request budget is spent, is not measured every sample)
VERIFY_WAIT_SECONDS = 60.0


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

    @classmethod
    def of(  # noqa: PLR0913 -- a pending verification's fields
        cls,
        strategy: str,
        plan: Plan,
        result: ApplyResult,
        signals: Mapping[str, float],
        *,
        decision_id: int | None,
        journal_id: int | None,
        now: float,
    ) -> Pending | None:
        """The verification an applied plan waits for; None when there is nothing to judge (no expected
        effect, no change made, or no reading of the expected signal from before the change)."""
        expected = plan.expected
        before = signals.get(expected.signal) if expected is not None else None
        if expected is None or before is None or not result.changes:
            return None
        return cls(
            decision_id=decision_id,
            journal_id=journal_id,
            strategy=strategy,
            plan=plan,
            result=result,
            before=before,
            due=now + expected.settle_seconds,
            applied_at=now,
        )


@dataclass(frozen=True, slots=True)
class Assessment:
    """A judged effect: the verdict, the figures for the history row, and the value judged."""

    verdict: Verdict
    detail: dict[str, Any]
    after: float | None


def assess(pending: Pending, expected: ExpectedEffect, windows: Windows, now: float) -> Assessment | None:
    """Judge the expected signal as measured after the change; None to wait for such a measurement."""
    measured = windows.points(expected.signal, since=pending.applied_at)
    after = measured[-1][1] if measured else windows.last(expected.signal)
    if not measured and after is not None and now < pending.due + VERIFY_WAIT_SECONDS:
        # only the reading from before the change stands: judging on it would call any change neutral
        return None
    if after is None:
        return Assessment(Verdict.NEUTRAL, {"signal": expected.signal, "before": pending.before, "after": None}, None)
    verdict, good = judge(pending.before, after, expected.direction, expected.amount)
    detail = {
        "signal": expected.signal,
        "before": pending.before,
        "after": after,
        "change": good,
        "expected": expected.amount,
    }
    return Assessment(verdict, detail, after)
