"""Calls into a strategy (optimizer/guarded.py): each way a call can fail becomes a value, logged once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from metrics.window import Windows
from optimizer import guarded
from optimizer.clock import FakeClock
from optimizer.decisions import Outcome
from strategies.base import OperatorOverride, StrategyContext, StrategyDeferred, StrategyError
from tests.optimizer.fakes import RecordingLog, ScriptedStrategy, SnapshotBuilder, make_plan


def context() -> StrategyContext:
    """A strategy context over one sample."""
    clock = FakeClock()
    return StrategyContext(
        snapshot=SnapshotBuilder(clock).build(), windows=Windows(5), armed=(), manual=True, now=clock.monotonic()
    )


@pytest.mark.parametrize(
    ("error", "outcome", "counted", "manual_only", "event"),
    [
        (StrategyDeferred("database closed"), Outcome.DEFERRED, None, True, "plan_deferred"),
        (StrategyError("cannot read"), Outcome.FAILED, None, False, "plan_failed"),
        (RuntimeError("bug"), Outcome.ERROR, "plan crashed: RuntimeError", False, "plan_crashed"),
    ],
)
async def test_a_failed_plan_becomes_a_value(
    error: BaseException, outcome: Outcome, counted: str | None, manual_only: bool, event: str
) -> None:
    """Each failure maps to its outcome; only a crash counts toward the breaker; a deferral is quiet unless asked."""
    strategy = ScriptedStrategy("cpu")
    strategy.plan_error = error
    log = RecordingLog()
    failed = await guarded.plan(strategy, context(), 1.0, log)
    assert isinstance(failed, guarded.Failed)
    assert (failed.outcome, failed.counted, failed.manual_only) == (outcome, counted, manual_only)
    assert [e.event for e in log.records] == [event]


async def test_a_plan_that_takes_too_long_times_out_and_counts() -> None:
    """A plan past its limit (not queued for a thread) is a timeout the breaker counts."""
    strategy = ScriptedStrategy("cpu")
    strategy.plan_gate = asyncio.Event()  # never set
    failed = await guarded.plan(strategy, context(), 0.01, RecordingLog())
    assert isinstance(failed, guarded.Failed)
    assert (failed.outcome, failed.counted) == (Outcome.TIMEOUT, "plan timed out")


async def test_a_plan_is_returned_as_is() -> None:
    """No failure: the strategy's plan (or None) comes back."""
    strategy = ScriptedStrategy("cpu")
    assert await guarded.plan(strategy, context(), 1.0, RecordingLog()) == strategy.next_plan
    strategy.next_plan = None
    assert await guarded.plan(strategy, context(), 1.0, RecordingLog()) is None


@pytest.mark.parametrize(
    ("error", "outcome", "message"),
    [
        (None, Outcome.APPLIED, None),
        (StrategyDeferred("not ready"), Outcome.DEFERRED, "not ready"),
        (StrategyError("permission denied"), Outcome.FAILED, "permission denied"),
        (RuntimeError("bug"), Outcome.ERROR, "RuntimeError: bug"),
    ],
)
async def test_an_apply_becomes_outcome_error_result(
    error: BaseException | None, outcome: Outcome, message: str | None
) -> None:
    """(outcome, error, result): a result only when the apply returned."""
    strategy = ScriptedStrategy("cpu")
    strategy.apply_error = error
    got, why, result = await guarded.apply(strategy, make_plan("cpu"), 1.0, RecordingLog())
    assert (got, why, result is not None) == (outcome, message, error is None)


async def test_a_failed_revert_is_none_and_logged() -> None:
    """A revert that raises gives None, with a warning (expected) or an exception (a bug) in the log."""
    strategy = ScriptedStrategy("cpu")
    result = await guarded.apply(strategy, make_plan("cpu"), 1.0, RecordingLog())
    applied = result[2]
    assert applied is not None
    log = RecordingLog()
    strategy.revert_error = StrategyError("gone")
    assert await guarded.revert(strategy, applied, 1.0, log, reason="regressed") is None
    strategy.revert_error = RuntimeError("bug")
    assert await guarded.revert(strategy, applied, 1.0, log, reason="regressed") is None
    assert [(e.level, e.event) for e in log.records] == [("warning", "revert_failed"), ("exception", "revert_crashed")]
    strategy.revert_error = None
    assert await guarded.revert(strategy, applied, 1.0, log, reason="regressed") is not None


class Broken(ScriptedStrategy):
    """A strategy whose every hook crashes."""

    @property
    def sample_interval_factor(self) -> float:
        """A crash."""
        raise RuntimeError("factor")

    def take_overrides(self) -> Sequence[OperatorOverride]:
        """A crash."""
        raise RuntimeError("overrides")


def test_crashing_hooks_read_as_nothing() -> None:
    """Triggers give back the exception (logged only when a log is given); overrides none; the factor 1.0."""
    strategy = Broken("cpu")
    strategy.triggers_error = RuntimeError("triggers")
    log = RecordingLog()
    assert isinstance(guarded.triggers(strategy, {}), RuntimeError)
    assert log.records == []
    assert isinstance(guarded.triggers(strategy, {}, log), RuntimeError)
    assert guarded.overrides(strategy, log) == []
    assert guarded.factor(strategy) == 1.0
    assert [e.event for e in log.records] == ["triggers_crashed", "take_overrides_crashed"]
