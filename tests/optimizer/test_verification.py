"""Verification on its own (optimizer/verification.py): a pending plan, the windows and the time in; a verdict out."""

from __future__ import annotations

from metrics.window import Windows
from optimizer.decisions import Verdict
from optimizer.verification import VERIFY_WAIT_SECONDS, Pending, assess
from strategies.base import ApplyResult
from tests.optimizer.fakes import cpu_down, make_plan

EXPECTED = cpu_down(amount=0.2, settle=60.0)
PLAN = make_plan("cpu", expected=EXPECTED)
RESULT = ApplyResult(changes=PLAN.changes, detail="knob set")


def pending(now: float = 100.0) -> Pending:
    """A plan applied at ``now`` with cpu at 0.95 before it."""
    found = Pending.of("cpu", PLAN, RESULT, {"cpu_ratio": 0.95}, decision_id=1, journal_id=2, now=now)
    assert found is not None
    return found


def test_a_pending_verification_waits_for_its_settle_time() -> None:
    """Due at the settle time after the change, judged against the reading from before it."""
    p = pending()
    assert (p.due, p.applied_at, p.before) == (160.0, 100.0, 0.95)


def test_nothing_to_judge_is_no_pending() -> None:
    """No expected effect, no change made, or no reading before: nothing waits."""
    signals = {"cpu_ratio": 0.95}
    plain = make_plan("cpu")
    assert Pending.of("cpu", plain, RESULT, signals, decision_id=1, journal_id=2, now=0.0) is None
    nothing = ApplyResult(changes=(), detail="")
    assert Pending.of("cpu", PLAN, nothing, signals, decision_id=1, journal_id=2, now=0.0) is None
    assert Pending.of("cpu", PLAN, RESULT, {}, decision_id=1, journal_id=2, now=0.0) is None


def test_judged_on_a_value_measured_after_the_change() -> None:
    """A reading after the change decides; the figures go with the verdict."""
    windows = Windows(10)
    windows.push(90.0, {"cpu_ratio": 0.95})
    windows.push(150.0, {"cpu_ratio": 0.6})
    judged = assess(pending(), EXPECTED, windows, 160.0)
    assert judged is not None and judged.verdict is Verdict.IMPROVED and judged.after == 0.6
    assert judged.detail["before"] == 0.95 and judged.detail["expected"] == 0.2


def test_only_a_reading_from_before_waits_then_judges_on_it() -> None:
    """With no reading since the change it waits, for up to VERIFY_WAIT_SECONDS past the settle time."""
    windows = Windows(10)
    windows.push(90.0, {"cpu_ratio": 0.95})
    assert assess(pending(), EXPECTED, windows, 160.0) is None
    judged = assess(pending(), EXPECTED, windows, 160.0 + VERIFY_WAIT_SECONDS)
    assert judged is not None and judged.verdict is Verdict.NEUTRAL


def test_a_signal_never_measured_is_neutral() -> None:
    """No value at all: neutral, with no figure after."""
    judged = assess(pending(), EXPECTED, Windows(10), 160.0)
    assert judged is not None and judged.verdict is Verdict.NEUTRAL and judged.detail["after"] is None
