"""The decision recorder on its own: a real state store in a temporary directory, a recording log, no engine."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from config.settings import Mode
from metrics.prometheus import DaemonMetrics
from metrics.window import Windows
from optimizer.clock import FakeClock
from optimizer.decisions import Outcome, Turn, Verdict
from optimizer.recorder import Recorder
from optimizer.runtime import StrategyRuntime
from optimizer.state import StateStore
from strategies.base import ApplyResult, Change, Finding, OperatorOverride, StrategyContext
from tests.optimizer.fakes import RecordingLog, ScriptedStrategy, SnapshotBuilder, make_plan


@pytest.fixture
def log() -> RecordingLog:
    """The recorder's log."""
    return RecordingLog()


@pytest.fixture
def recorder(store: StateStore, log: RecordingLog) -> Recorder:
    """A recorder over the store, writing on worker threads."""
    return Recorder(store, DaemonMetrics(CollectorRegistry()), log, clock=FakeClock())


@pytest.fixture
def rt() -> StrategyRuntime:
    """A runtime for a scripted strategy named cpu."""
    return StrategyRuntime(strategy=ScriptedStrategy("cpu"), config_mode=None, enabled=True, base_cooldown=300.0)


def turn(*, manual: bool = False, mode: Mode = Mode.ENFORCE) -> Turn:
    """One turn's shared facts."""
    return Turn(
        run_id="run1",
        trigger="manual" if manual else "scheduled",
        mode=mode,
        manual=manual,
        signals={"cpu_ratio": 0.95},
        thresholds={"cpu_ratio": {"enter": 0.9, "exit": 0.8}},
        started=0.0,
    )


async def test_a_decision_is_one_row_one_log_line_and_a_save(
    recorder: Recorder, rt: StrategyRuntime, store: StateStore, log: RecordingLog
) -> None:
    """A skip writes its row with the turn's figures, logs it, and persists the runtime."""
    plan = make_plan("cpu")
    decision_id = await recorder.decision(rt, turn(), Outcome.SKIPPED_COOLDOWN, "cpu is hot (cooldown)", plan)
    assert decision_id is not None
    row = store.decision(decision_id)
    assert row is not None
    assert (row.outcome, row.trigger, row.mode, row.action) == ("skipped_cooldown", "scheduled", "enforce", "tune")
    assert row.signals == {"cpu_ratio": 0.95}
    assert [e.fields["decision_id"] for e in log.events("decision")] == [decision_id]
    assert rt.last_outcome == "skipped_cooldown"
    assert set(store.load_strategies()) == {"cpu"}


async def test_a_repeated_skip_is_not_written_again_unless_asked_for(
    recorder: Recorder, rt: StrategyRuntime, store: StateStore
) -> None:
    """The same skip of the same action twice writes one row; a manual request or another outcome writes anew."""
    plan = make_plan("cpu")
    first = await recorder.decision(rt, turn(), Outcome.SKIPPED_BUDGET, "spent (3 left)", plan)
    assert await recorder.decision(rt, turn(), Outcome.SKIPPED_BUDGET, "spent (2 left)", plan) is None
    assert await recorder.decision(rt, turn(manual=True), Outcome.SKIPPED_BUDGET, "spent", plan) is not None
    assert await recorder.decision(rt, turn(), Outcome.DRY_RUN, "would tune", plan) is not None
    assert first is not None and len(store.decisions()) == 3


async def test_an_apply_is_journalled_then_completed(
    recorder: Recorder, rt: StrategyRuntime, store: StateStore, log: RecordingLog
) -> None:
    """The applied row is written (not saved: the engine saves once the outcome is known), the journal intent
    is closed as done with the result, and the row gets the changes made."""
    plan = make_plan("cpu")
    decision_id = await recorder.decision(rt, turn(), Outcome.APPLIED, plan.reason, plan)
    journal_id = await recorder.intent(rt, decision_id, plan)
    assert store.load_strategies() == {} and [e.status for e in store.journal()] == ["intent"]
    result = ApplyResult(changes=plan.changes, detail="knob set")
    await recorder.applied(
        rt,
        plan,
        decision_id=decision_id,
        journal_id=journal_id,
        outcome=Outcome.APPLIED,
        error=None,
        result=result,
        duration_ms=1.5,
    )
    [entry] = store.journal()
    assert entry.status == "done" and entry.result is not None
    row = store.decision(decision_id or 0)
    assert row is not None and row.outcome == "applied" and row.changes[0]["target"] == "knob"
    assert [e.event for e in log.records][-1] == "change_applied"
    assert rt.last_outcome == "applied"


async def test_an_apply_that_changed_nothing_is_judged_neutral_at_once(
    recorder: Recorder, rt: StrategyRuntime, store: StateStore, log: RecordingLog
) -> None:
    """NO_CHANGE: the row carries a neutral verdict with its figures, and the log says unneeded."""
    plan = make_plan("cpu")
    decision_id = await recorder.decision(rt, turn(), Outcome.APPLIED, plan.reason, plan)
    same = (Change(target="knob", action="tune", before="2", after="2", reversible=True),)
    result = ApplyResult(changes=same, detail="already at 2")
    await recorder.applied(
        rt,
        plan,
        decision_id=decision_id,
        journal_id=None,
        outcome=Outcome.NO_CHANGE,
        error=None,
        result=result,
        duration_ms=1.0,
    )
    row = store.decision(decision_id or 0)
    assert row is not None and row.verdict == "neutral"
    assert row.verdict_detail == {"note": "already at 2", "figures": ["knob: 2 -> 2"]}
    assert [e.event for e in log.records][-1] == "change_unneeded"


async def test_a_failed_apply_closes_the_journal_as_failed_and_warns(
    recorder: Recorder, rt: StrategyRuntime, store: StateStore, log: RecordingLog
) -> None:
    """No result: the journal record is failed with the error; the log line is a warning."""
    plan = make_plan("cpu")
    journal_id = await recorder.intent(rt, None, plan)
    await recorder.applied(
        rt,
        plan,
        decision_id=None,
        journal_id=journal_id,
        outcome=Outcome.FAILED,
        error="permission denied",
        result=None,
        duration_ms=1.0,
    )
    [entry] = store.journal()
    assert entry.status == "failed" and entry.result == {"error": "permission denied"}
    [event] = log.events("change_failed")
    assert event.level == "warning"


async def test_a_verdict_and_a_revert_are_written(recorder: Recorder, rt: StrategyRuntime, store: StateStore) -> None:
    """The verdict lands on its row; a revert closes the journal record as reverted."""
    plan = make_plan("cpu")
    decision_id = await recorder.decision(rt, turn(), Outcome.APPLIED, plan.reason, plan)
    journal_id = await recorder.intent(rt, decision_id, plan)
    detail = {"signal": "cpu_ratio", "before": 0.95, "after": 0.99, "reverted": True}
    await recorder.verdict(rt, decision_id, Verdict.REGRESSED, detail, signal="cpu_ratio", before=0.95, after=0.99)
    await recorder.reverted(rt, journal_id, ApplyResult(changes=(), detail="knob restored"), reason="regressed")
    row = store.decision(decision_id or 0)
    assert row is not None and row.verdict == "regressed" and row.verdict_detail == detail
    assert [e.status for e in store.journal()] == ["reverted"]
    assert rt.last_verdict == "regressed"


async def test_backing_off_writes_a_row_naming_each_value_left_alone(
    recorder: Recorder, rt: StrategyRuntime, store: StateStore
) -> None:
    """One backed_off row whose changes are the operator's values."""
    override = OperatorOverride(target="knob", expected="2", found="5")
    decision_id = await recorder.backed_off(rt, turn(), [override], family="default")
    row = store.decision(decision_id or 0)
    assert row is not None and row.outcome == "backed_off"
    assert row.reason.startswith("operator changed knob (set 2, found 5)")
    assert [(c["target"], c["after"]) for c in row.changes] == [("knob", "5")]


def context() -> StrategyContext:
    """A strategy context over one calm sample."""
    clock = FakeClock()
    return StrategyContext(
        snapshot=SnapshotBuilder(clock).build(), windows=Windows(5), armed=(), manual=False, now=clock.monotonic()
    )


async def test_findings_appear_and_clear_per_strategy(
    recorder: Recorder, rt: StrategyRuntime, log: RecordingLog
) -> None:
    """A new finding is said once; one the strategy no longer reports is cleared; others' findings stay."""
    strategy = rt.strategy
    assert isinstance(strategy, ScriptedStrategy)
    other = Finding(id="memory:leak", strategy="memory", severity="info", summary="grows")
    recorder.findings[other.id] = other
    strategy.current_findings = [Finding(id="cpu:hot", strategy="cpu", severity="warning", summary="hot")]
    recorder.update_findings(rt, context())
    recorder.update_findings(rt, context())
    assert set(recorder.findings) == {"cpu:hot", "memory:leak"}
    assert len(log.events("finding_appeared")) == 1
    strategy.current_findings = []
    recorder.update_findings(rt, context())
    assert set(recorder.findings) == {"memory:leak"}
    assert [e.fields["finding"] for e in log.events("finding_cleared")] == ["cpu:hot"]
