"""The decision engine, driven deterministically: scripted snapshots, a scripted strategy and the fake clock."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from config.settings import DetectionSettings, Mode
from metrics.window import Windows
from optimizer import cadence
from optimizer.clock import FakeClock
from optimizer.detection import Detector
from optimizer.engine import Engine, RoundResult
from optimizer.state import DecisionRecord, StateStore
from strategies.base import Action, OperatorOverride, Plan, Risk, StrategyError, TriggerSpec
from tests.optimizer.fakes import (
    HIT_RATE_TRIGGER,
    EngineFactory,
    RecordingLog,
    ScriptedStrategy,
    SetKnob,
    SnapshotBuilder,
    add_decision,
    armed,
    breaker_open,
    cpu_down,
    make_plan,
    optimizing,
)

HOT, WARM, CALM = 0.95, 0.85, 0.5
SAMPLE_STEP = 5.0


def feed(engine: Engine, samples: SnapshotBuilder, clock: FakeClock, values: list[float]) -> None:
    """Push one cpu sample per value, advancing the clock by the sample step before each."""
    for value in values:
        clock.advance(SAMPLE_STEP)
        engine.on_snapshot(samples.build(cpu=value))


async def scheduled(engine: Engine, **kwargs: Any) -> RoundResult:
    """A scheduled round (detection applies)."""
    return await engine.request_round(trigger="scheduled", **kwargs)


async def manual(engine: Engine, **kwargs: Any) -> RoundResult:
    """A manual round (detection skipped, gates kept)."""
    return await engine.request_round(trigger="manual", manual=True, **kwargs)


def rows(store: StateStore, strategy: str | None = None) -> list[DecisionRecord]:
    """Every decision row, oldest first."""
    return store.decisions(limit=10_000, strategy=strategy)


def outcomes(store: StateStore, strategy: str | None = None) -> list[str]:
    """The outcome of every decision row, oldest first."""
    return [r.outcome for r in rows(store, strategy)]


# detection ---------------------------------------------------------------------------------------------------------


async def test_fewer_than_n_of_m_samples_above_enter_cause_nothing(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Two hot samples out of the last five (N=3) neither arm the strategy nor write a row."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat])
    feed(engine, samples, clock, [HOT, CALM, HOT, CALM, CALM])
    await scheduled(engine)
    assert not armed(engine.runtimes["cpu"])
    assert strat.plan_calls == []
    assert rows(store) == []


async def test_n_of_m_samples_above_enter_arm_and_act(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Three hot samples out of the last five arm the strategy, which plans and applies."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat])
    feed(engine, samples, clock, [HOT, CALM, HOT, CALM, HOT])
    result = await scheduled(engine)
    assert armed(engine.runtimes["cpu"])
    assert strat.plan_calls[0].armed == ("cpu_ratio",)
    assert not strat.plan_calls[0].manual
    [row] = rows(store)
    assert (row.outcome, row.mode, row.run_id, row.trigger) == ("applied", "enforce", result.run_id, "scheduled")
    assert row.signals == {"cpu_ratio": HOT}
    assert row.thresholds == {"cpu_ratio": {"enter": 0.9, "exit": 0.8}}
    assert row.changes[0]["before"] == "1" and row.changes[0]["after"] == "2"
    assert [p.as_dict() for p in strat.applied] == [make_plan("cpu").as_dict()]


async def test_after_acting_the_strategy_disarms_only_below_exit(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Once armed, warm samples (between exit and enter) keep it armed; one sample below exit disarms it."""
    log = RecordingLog()
    strat = ScriptedStrategy("cpu")
    engine = build([strat], log=log)
    feed(engine, samples, clock, [HOT, HOT, HOT])
    await scheduled(engine)
    assert outcomes(store) == ["applied"]
    feed(engine, samples, clock, [WARM] * 5)  # no hot sample left in the window
    await scheduled(engine)
    assert armed(engine.runtimes["cpu"])
    assert outcomes(store) == ["applied", "skipped_cooldown"]
    feed(engine, samples, clock, [0.79])
    await scheduled(engine)
    assert not armed(engine.runtimes["cpu"])
    assert [e.event for e in log.records if e.event.startswith("strategy_")] == ["strategy_armed", "strategy_disarmed"]
    assert outcomes(store) == ["applied", "skipped_cooldown"]


async def test_below_type_trigger_arms_on_low_values_and_disarms_above_exit(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A below-type trigger (hit rate) arms when low in N of M samples and disarms only above its exit."""
    strat = ScriptedStrategy("cache", triggers=(HIT_RATE_TRIGGER,))
    engine = build([strat])
    rt = engine.runtimes["cache"]

    def push(rate: float) -> None:
        clock.advance(SAMPLE_STEP)
        engine.on_snapshot(samples.build(hit_rate=rate))

    for rate in (0.9, 0.3, 0.9, 0.3, 0.9):
        push(rate)
    await scheduled(engine)
    assert not armed(rt)
    push(0.4)
    await scheduled(engine)
    assert armed(rt)
    assert outcomes(store) == ["applied"]
    for _ in range(5):
        push(0.6)  # above enter, below exit
    await scheduled(engine)
    assert armed(rt)
    push(0.75)
    await scheduled(engine)
    assert not armed(rt)


async def test_a_signal_oscillating_around_the_threshold_acts_at_most_once_per_cooldown(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """200 rounds of a signal flapping around enter and exit: applies are at least a cooldown apart."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=300.0, budget_actions=1000)
    rng = random.Random(20240601)
    interval = 30.0
    for _ in range(200):
        clock.advance(interval)
        engine.on_snapshot(samples.build(cpu=rng.uniform(0.7, 1.0)))
        await scheduled(engine)
    applied = [r.at for r in rows(store) if r.outcome == "applied"]
    assert len(applied) >= 5  # the scenario does make it act
    assert len(applied) <= 200 * interval / 300 + 1
    assert all(later - earlier >= 300.0 for earlier, later in itertools.pairwise(applied))
    assert len(strat.applied) == len(applied)
    assert len(rows(store)) < len(strat.plan_calls) / 2  # a skip is recorded once per episode, not per round


# modes -------------------------------------------------------------------------------------------------------------


async def test_observe_mode_records_observed_without_planning(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Global observe: an armed strategy is recorded as observed; plan() and apply() are never called."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], global_mode=Mode.OBSERVE)
    feed(engine, samples, clock, [HOT] * 3)
    await scheduled(engine)
    await manual(engine)
    assert strat.plan_calls == []
    assert strat.applied == []
    assert [(r.outcome, r.mode) for r in rows(store)] == [("observed", "observe"), ("observed", "observe")]


async def test_dry_run_mode_records_the_plan_without_applying(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Global dry_run: the plan is recorded with its changes and reason, nothing is applied or journalled."""
    registry = CollectorRegistry()
    strat = ScriptedStrategy("cpu")
    engine = build([strat], global_mode=Mode.DRY_RUN, registry=registry)
    feed(engine, samples, clock, [HOT] * 3)
    await scheduled(engine)
    [row] = rows(store)
    assert (row.outcome, row.mode, row.reason, row.action) == ("dry_run", "dry_run", "cpu is hot", "tune")
    assert row.changes == [c.as_dict() for c in make_plan("cpu").changes]
    assert strat.applied == []
    assert store.journal() == []
    labels = {"strategy": "cpu", "action": "tune", "outcome": "dry_run", "mode": "dry_run"}
    assert registry.get_sample_value("cctv_optimizer_actions_total", labels) == 1.0


async def test_enforce_mode_applies_and_journals(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Enforce: the plan is applied, the journal intent is closed as done, the budget is charged."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], budget_actions=6)
    feed(engine, samples, clock, [HOT] * 3)
    await scheduled(engine)
    [row] = rows(store)
    assert row.outcome == "applied"
    [entry] = store.journal()
    assert (entry.status, entry.decision_id, entry.strategy) == ("done", row.id, "cpu")
    assert entry.result is not None and entry.result["detail"] == "knob set"
    assert engine.pacer.budget_left(engine.runtimes["cpu"]) == 5
    assert len(strat.applied) == 1


async def test_per_strategy_mode_override_at_runtime(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """set_mode switches one strategy to dry_run while another keeps enforcing; and back to enforce."""
    a, b = ScriptedStrategy("a"), ScriptedStrategy("b")
    engine = build([a, b], cooldown_seconds=0.0)
    await engine.set_mode("a", Mode.DRY_RUN)
    feed(engine, samples, clock, [HOT] * 3)
    await scheduled(engine)
    assert [(r.strategy, r.outcome) for r in rows(store)] == [("a", "dry_run"), ("b", "applied")]
    await engine.set_mode("a", Mode.ENFORCE)
    clock.advance(1)
    await scheduled(engine)
    assert [(r.strategy, r.outcome) for r in rows(store)][2:] == [("a", "applied"), ("b", "applied")]
    assert len(a.applied) == 1


async def test_config_observe_can_be_lifted_by_override_but_global_observe_wins(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A strategy configured observe acts once overridden to enforce; a global observe still wins over that."""
    strat = ScriptedStrategy("cpu")
    engine = build([(strat, Mode.OBSERVE, True)], cooldown_seconds=0.0)
    feed(engine, samples, clock, [HOT] * 3)
    await scheduled(engine)
    await engine.set_mode("cpu", Mode.ENFORCE)
    await scheduled(engine)
    engine.global_mode = Mode.OBSERVE
    await scheduled(engine)
    assert outcomes(store) == ["observed", "applied", "observed"]
    assert len(strat.plan_calls) == 1


async def test_request_dry_run_plans_without_applying_in_enforce_mode(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A round requested with dryRun records dry_run even though the daemon enforces; the next one applies."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat])
    feed(engine, samples, clock, [CALM])
    await manual(engine, dry_run=True)
    assert strat.applied == []
    await manual(engine)
    assert outcomes(store) == ["dry_run", "applied"]
    assert rows(store)[0].mode == "dry_run"


# manual triggers ---------------------------------------------------------------------------------------------------


async def test_manual_trigger_skips_detection_but_not_the_gates(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A manual round plans on calm signals; a second manual round inside the cooldown is skipped."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=300.0)
    feed(engine, samples, clock, [CALM] * 5)
    await manual(engine)
    assert strat.plan_calls[0].manual
    assert strat.plan_calls[0].armed == ()
    clock.advance(10)
    await manual(engine)
    await manual(engine)
    assert outcomes(store) == ["applied", "skipped_cooldown", "skipped_cooldown"]  # manual rows are never folded
    assert "cooldown: 290 s left" in rows(store)[1].reason
    assert len(strat.applied) == 1


async def test_manual_trigger_with_nothing_to_do_writes_a_row(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A plan of None is recorded as nothing_to_do on a manual round, and silently on a scheduled one."""
    strat = ScriptedStrategy("cpu", use_default_plan=False)
    engine = build([strat])
    feed(engine, samples, clock, [HOT] * 3)
    await scheduled(engine)
    assert len(strat.plan_calls) == 1
    assert rows(store) == []
    await manual(engine)
    [row] = rows(store)
    assert (row.outcome, row.action, row.changes) == ("nothing_to_do", "none", [])


async def test_round_for_one_strategy_leaves_the_others_alone(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A round requested for one strategy gives no turn to the others."""
    a, b = ScriptedStrategy("a"), ScriptedStrategy("b")
    engine = build([a, b])
    feed(engine, samples, clock, [HOT] * 3)
    await manual(engine, strategy="b")
    assert a.plan_calls == []
    assert [(r.strategy, r.outcome) for r in rows(store)] == [("b", "applied")]


# gates -------------------------------------------------------------------------------------------------------------


async def test_cooldown_skips_until_it_has_passed(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """After an apply the armed strategy is skipped (one row) until the cooldown has passed, then applies."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=300.0)
    feed(engine, samples, clock, [HOT] * 3)
    await scheduled(engine)
    for _ in range(5):
        feed(engine, samples, clock, [HOT] * 6)  # 30 s per round
        await scheduled(engine)
    assert outcomes(store) == ["applied", "skipped_cooldown"]
    assert engine.pacer.cooldown_left(engine.runtimes["cpu"]) == pytest.approx(150.0)
    clock.advance(150.0)
    await scheduled(engine)
    assert outcomes(store) == ["applied", "skipped_cooldown", "applied"]
    assert len(strat.applied) == 2


async def test_budget_counts_attempts_in_a_rolling_window(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A failed apply spends budget like a successful one; an attempt frees up when it leaves the window."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=0.0, budget_actions=2, budget_window_seconds=3600.0)
    rt = engine.runtimes["cpu"]
    feed(engine, samples, clock, [CALM])
    strat.apply_error = StrategyError("backend answered 500")
    await manual(engine)
    clock.advance(1800.0)
    strat.apply_error = None
    await manual(engine)
    clock.advance(60.0)
    await manual(engine)
    assert outcomes(store) == ["failed", "applied", "skipped_budget"]
    assert engine.pacer.budget_left(rt) == 0
    clock.advance(1741.0)  # the first attempt is now more than an hour old, the second is not
    assert engine.pacer.budget_left(rt) == 1
    await manual(engine)
    await manual(engine)
    assert outcomes(store)[3:] == ["applied", "skipped_budget"]


async def test_breaker_opens_after_three_consecutive_failures_and_reset_rearms(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Three failed applies open the breaker (no more plans, gauge 1); reset closes it and the strategy acts."""
    registry = CollectorRegistry()
    log = RecordingLog()
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=0.0, registry=registry, log=log)
    rt = engine.runtimes["cpu"]
    feed(engine, samples, clock, [CALM])
    strat.apply_error = StrategyError("permission denied")
    for _ in range(3):
        await manual(engine)
        clock.advance(1)
    assert breaker_open(rt)
    assert rt.breaker_reason is not None and "permission denied" in rt.breaker_reason
    assert registry.get_sample_value("cctv_optimizer_breaker_open", {"strategy": "cpu"}) == 1.0
    assert [e.level for e in log.events("breaker_opened")] == ["error"]
    await manual(engine)
    assert len(strat.plan_calls) == 3
    assert outcomes(store) == ["failed", "failed", "failed", "blocked_breaker"]
    await engine.reset("cpu")
    assert registry.get_sample_value("cctv_optimizer_breaker_open", {"strategy": "cpu"}) == 0.0
    strat.apply_error = None
    await manual(engine)
    assert outcomes(store)[-1] == "applied"
    assert rt.consecutive_failures == 0


async def test_a_success_between_failures_keeps_the_breaker_closed(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Failures separated by a successful apply are not consecutive: the breaker stays closed."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=0.0)
    rt = engine.runtimes["cpu"]
    feed(engine, samples, clock, [CALM])
    for error in (StrategyError("busy"), StrategyError("busy"), None, StrategyError("busy"), StrategyError("busy")):
        strat.apply_error = error
        await manual(engine)
        clock.advance(1)
    assert outcomes(store) == ["failed", "failed", "applied", "failed", "failed"]
    assert not breaker_open(rt)
    assert rt.consecutive_failures == 2


async def test_one_disruptive_action_per_round_and_only_when_allowed(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Disruptive plans are blocked unless allowed; when allowed, only the first of a round runs."""
    a = ScriptedStrategy("a", plan=make_plan("a", risk=Risk.DISRUPTIVE))
    b = ScriptedStrategy("b", plan=make_plan("b", risk=Risk.DISRUPTIVE))
    engine = build([a, b])
    feed(engine, samples, clock, [CALM])
    await manual(engine)
    blocked = rows(store)
    assert [r.outcome for r in blocked] == ["blocked_disruptive", "blocked_disruptive"]
    assert "disruptive changes are not enabled" in blocked[0].reason
    assert a.applied == [] and b.applied == []

    store_rows_before = len(blocked)
    allowed = build([ScriptedStrategy("a", plan=make_plan("a", risk=Risk.DISRUPTIVE)), b], allow_disruptive=True)
    allowed.on_snapshot(samples.build(cpu=CALM))
    await manual(allowed)
    later = rows(store)[store_rows_before:]
    assert [(r.strategy, r.outcome) for r in later] == [("a", "applied"), ("b", "blocked_disruptive")]
    assert "one disruptive action per round" in later[1].reason
    clock.advance(1)
    await manual(allowed)  # a is cooling down, so b's disruptive change may run in this round
    assert [(r.strategy, r.outcome) for r in rows(store)][-2:] == [("a", "skipped_cooldown"), ("b", "applied")]
    assert len(b.applied) == 1


# timeouts and errors -----------------------------------------------------------------------------------------------


async def test_plan_timeout_is_recorded_and_counts_toward_the_breaker(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A plan that never returns is cut at the plan timeout; three of them open the breaker."""
    strat = ScriptedStrategy("cpu")
    strat.plan_gate = asyncio.Event()  # never set
    engine = build([strat], plan_timeout_seconds=0.05)
    feed(engine, samples, clock, [CALM])
    await manual(engine)
    [row] = rows(store)
    assert (row.outcome, row.reason) == ("timeout", "plan timed out")
    assert row.error == "plan exceeded 0.05 s"
    assert engine.runtimes["cpu"].consecutive_failures == 1
    await manual(engine)
    await manual(engine)
    assert engine.runtimes["cpu"].breaker_open
    assert strat.applied == []


async def test_apply_timeout_is_recorded_journalled_and_counted(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """An apply that never returns is cut at the apply timeout: outcome timeout, journal failed, budget spent."""
    strat = ScriptedStrategy("cpu")
    strat.apply_gate = asyncio.Event()  # never set
    engine = build([strat], apply_timeout_seconds=0.05, budget_actions=6)
    rt = engine.runtimes["cpu"]
    feed(engine, samples, clock, [CALM])
    await manual(engine)
    [row] = rows(store)
    assert (row.outcome, row.error) == ("timeout", "apply exceeded 0.05 s")
    [entry] = store.journal()
    assert entry.status == "failed"
    assert entry.result == {"error": "apply exceeded 0.05 s"}
    assert rt.consecutive_failures == 1
    assert engine.pacer.budget_left(rt) == 5
    assert rt.scores == [-1]


async def test_strategy_error_is_a_failure_with_its_reason(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """StrategyError from plan or apply gives outcome failed with the message, logged as a warning."""
    log = RecordingLog()
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=0.0, log=log)
    feed(engine, samples, clock, [CALM])
    strat.plan_error = StrategyError("database is locked")
    await manual(engine)
    strat.plan_error = None
    strat.apply_error = StrategyError("backend answered 503")
    await manual(engine)
    got = [(r.outcome, r.reason, r.error) for r in rows(store)]
    assert got == [
        ("failed", "plan failed", "database is locked"),
        ("failed", "cpu is hot", "backend answered 503"),
    ]
    assert [(e.level, e.event) for e in log.records if e.event in ("plan_failed", "apply_failed")] == [
        ("warning", "plan_failed"),
        ("warning", "apply_failed"),
    ]


async def test_unexpected_exceptions_are_errors_and_the_round_goes_on(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A crash in plan or apply is an error row with a traceback log; the next strategy still gets its turn."""
    log = RecordingLog()
    broken, healthy = ScriptedStrategy("broken"), ScriptedStrategy("healthy")
    engine = build([broken, healthy], cooldown_seconds=0.0, log=log)
    feed(engine, samples, clock, [CALM])
    broken.plan_error = RuntimeError("boom")
    await manual(engine)
    broken.plan_error = None
    broken.apply_error = KeyError("knob")
    await manual(engine)
    got = [(r.strategy, r.outcome, r.error) for r in rows(store)]
    assert got == [
        ("broken", "error", "RuntimeError: boom"),
        ("healthy", "applied", None),
        ("broken", "error", "KeyError: 'knob'"),
        ("healthy", "applied", None),
    ]
    assert [e.level for e in log.events("plan_crashed")] == ["exception"]
    assert [e.level for e in log.events("apply_crashed")] == ["exception"]
    assert engine.runtimes["broken"].consecutive_failures == 2
    assert [e.status for e in store.journal()] == ["done", "failed", "done"]


async def test_a_strategy_whose_triggers_crash_does_not_stop_the_round(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """triggers() raising is logged with a traceback and counted; the other strategies still act."""
    log = RecordingLog()
    broken, healthy = ScriptedStrategy("broken"), ScriptedStrategy("healthy")
    broken.triggers_error = TypeError("bad baseline")
    engine = build([broken, healthy], log=log)
    feed(engine, samples, clock, [HOT] * 3)
    result = await scheduled(engine)
    assert [(r.strategy, r.outcome) for r in rows(store)] == [("healthy", "applied")]
    assert len(result.decision_ids) == 1
    assert [e.level for e in log.events("triggers_crashed")] == ["exception"]
    assert engine.runtimes["broken"].consecutive_failures == 1


# verification ------------------------------------------------------------------------------------------------------


async def apply_and_verify(
    engine: Engine,
    samples: SnapshotBuilder,
    clock: FakeClock,
    before: float,
    after: float,
    *,
    settle: float = 60.0,
    strategy: str | None = None,
) -> None:
    """Apply through a manual round at ``before``, then judge the effect against a sample at ``after``."""
    name = strategy or engine.strategy_names()[0]
    clock.advance(max(engine.runtimes[name].cooldown, 1.0))
    engine.on_snapshot(samples.build(cpu=before))
    await manual(engine, strategy=name)
    clock.advance(settle)
    engine.on_snapshot(samples.build(cpu=after))
    await engine.verify_due()


async def test_improved_effect_is_recorded_and_scored(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """The expected signal fell enough after the settle time: verdict improved, score +1, nothing reverted."""
    registry = CollectorRegistry()
    strat = ScriptedStrategy("cpu", plan=make_plan("cpu", expected=cpu_down(0.2, 60.0)))
    engine = build([strat], registry=registry)
    await apply_and_verify(engine, samples, clock, before=0.95, after=0.6)
    [row] = rows(store)
    assert row.verdict == "improved"
    assert row.verdict_detail is not None
    assert row.verdict_detail["before"] == 0.95 and row.verdict_detail["after"] == 0.6
    assert not row.verdict_detail["reverted"]
    assert row.verdict_detail["change"] == pytest.approx(0.35)
    assert engine.runtimes["cpu"].scores == [1]
    assert strat.reverted == []
    assert registry.get_sample_value("cctv_optimizer_verdicts_total", {"strategy": "cpu", "verdict": "improved"}) == 1


async def test_verification_waits_for_the_settle_time(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Before the settle time has passed nothing is judged."""
    strat = ScriptedStrategy("cpu", plan=make_plan("cpu", expected=cpu_down(0.2, 60.0)))
    engine = build([strat])
    engine.on_snapshot(samples.build(cpu=0.95))
    await manual(engine)
    clock.advance(59.0)
    engine.on_snapshot(samples.build(cpu=0.5))
    await engine.verify_due()
    assert rows(store)[0].verdict is None
    clock.advance(1.0)
    await engine.verify_due()
    assert rows(store)[0].verdict == "improved"


async def test_neutral_doubles_the_cooldown_up_to_the_cap_and_improvement_halves_it_back(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """No effect doubles the cooldown (capped); each improvement halves it, never below the configured one."""
    strat = ScriptedStrategy("cpu", plan=make_plan("cpu", expected=cpu_down(0.2, 60.0)))
    engine = build([strat], cooldown_seconds=100.0, cooldown_max_seconds=350.0)
    rt = engine.runtimes["cpu"]
    seen = []
    for after in (0.95, 0.95, 0.95, 0.6, 0.6, 0.6):
        await apply_and_verify(engine, samples, clock, before=0.95, after=after)
        seen.append(rt.cooldown)
    assert seen == [200.0, 350.0, 350.0, 175.0, 100.0, 100.0]
    assert [r.verdict for r in rows(store)] == ["neutral"] * 3 + ["improved"] * 3
    assert rt.scores == [0, 0, 0, 1, 1, 1]
    assert rt.score == pytest.approx(0.5)


async def test_regression_of_a_reversible_plan_is_reverted(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Regressed and reversible: revert() gets the apply result, the journal says reverted, the row says so."""
    registry = CollectorRegistry()
    strat = ScriptedStrategy("cpu", plan=make_plan("cpu", expected=cpu_down(0.2, 60.0)))
    engine = build([strat], registry=registry)
    await apply_and_verify(engine, samples, clock, before=0.85, after=1.0)
    [row] = rows(store)
    assert row.verdict == "regressed"
    assert row.verdict_detail is not None and row.verdict_detail["reverted"] is True
    [undone] = strat.reverted
    assert undone.detail == "knob set"
    assert undone.revert == (SetKnob(value=1),)
    [entry] = store.journal()
    assert entry.status == "reverted"
    assert entry.result is not None and entry.result["detail"] == "knob restored"
    assert registry.get_sample_value("cctv_optimizer_reverts_total", {"strategy": "cpu"}) == 1.0
    assert engine.runtimes["cpu"].consecutive_failures == 1
    assert engine.runtimes["cpu"].scores == [-1]


async def test_regression_of_an_irreversible_plan_is_not_reverted(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Regressed but irreversible: no revert is attempted and the row says reverted=false."""
    strat = ScriptedStrategy("cpu", plan=make_plan("cpu", reversible=False, expected=cpu_down(0.2, 60.0)))
    engine = build([strat])
    await apply_and_verify(engine, samples, clock, before=0.85, after=1.0)
    [row] = rows(store)
    assert row.verdict == "regressed"
    assert row.verdict_detail is not None and row.verdict_detail["reverted"] is False
    assert strat.reverted == []
    assert [e.status for e in store.journal()] == ["done"]


async def test_three_regressions_open_the_breaker(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Regressions count toward the breaker like failures; a neutral verdict between them breaks the run."""
    strat = ScriptedStrategy("cpu", plan=make_plan("cpu", expected=cpu_down(0.2, 60.0)))
    engine = build([strat], cooldown_seconds=10.0)
    rt = engine.runtimes["cpu"]
    for after in (1.0, 1.0, 0.85, 1.0):
        await apply_and_verify(engine, samples, clock, before=0.85, after=after)
    assert not breaker_open(rt)
    await apply_and_verify(engine, samples, clock, before=0.85, after=1.0)
    await apply_and_verify(engine, samples, clock, before=0.85, after=1.0)
    assert breaker_open(rt)
    assert rt.breaker_reason is not None and "regressed cpu_ratio" in rt.breaker_reason
    clock.advance(60)
    await manual(engine)
    assert outcomes(store)[-1] == "blocked_breaker"


# join semantics ----------------------------------------------------------------------------------------------------


async def test_concurrent_requests_join_one_round(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """50 concurrent requests run exactly one round: one plan call, one run id, 49 joiners."""
    strat = ScriptedStrategy("cpu")
    strat.plan_gate = asyncio.Event()
    engine = build([strat])
    feed(engine, samples, clock, [CALM])
    tasks = [asyncio.create_task(manual(engine)) for _ in range(50)]
    await asyncio.wait_for(strat.plan_started.wait(), 30.0)
    assert engine.optimizing
    strat.plan_gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 30.0)
    assert len(strat.plan_calls) == 1
    assert len({r.run_id for r in results}) == 1
    assert sum(r.joined for r in results) == 49
    assert {r.decision_ids for r in results} == {(rows(store)[0].id,)}
    assert not optimizing(engine)
    after = await manual(engine)
    assert after.run_id != results[0].run_id
    assert engine.rounds_run == 2


# persistence -------------------------------------------------------------------------------------------------------


async def test_learned_state_survives_a_new_engine_on_the_same_store(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Scores, cooldown, breaker, mode override and budget attempts come back in a new engine."""
    learner = ScriptedStrategy("learner", plan=make_plan("learner", expected=cpu_down(0.2, 60.0)))
    failing = ScriptedStrategy("failing")
    failing.apply_error = StrategyError("permission denied")
    first = build([learner, failing], cooldown_seconds=100.0, budget_actions=6)
    await apply_and_verify(first, samples, clock, before=0.95, after=0.95, strategy="learner")  # neutral
    for _ in range(4):  # three failures open the breaker, the fourth round is blocked
        clock.advance(300)
        await manual(first, strategy="failing")
    await first.set_mode("learner", Mode.DRY_RUN)
    clock.advance(10)

    second = build([ScriptedStrategy("learner"), ScriptedStrategy("failing")], cooldown_seconds=100.0, budget_actions=6)
    await second.load()
    for name in ("learner", "failing"):
        old, new = first.runtimes[name], second.runtimes[name]
        assert new.to_state(clock.monotonic(), clock.wall()) == old.to_state(clock.monotonic(), clock.wall())
        assert second.pacer.cooldown_left(new) == first.pacer.cooldown_left(old)
        assert second.pacer.budget_left(new) == first.pacer.budget_left(old)
    assert second.runtimes["learner"].scores == [0]
    assert second.runtimes["learner"].cooldown == 200.0
    assert second.runtimes["learner"].mode_override is Mode.DRY_RUN
    assert second.runtimes["failing"].breaker_open
    assert second.pacer.budget_left(second.runtimes["failing"]) == 3
    second.on_snapshot(samples.build(cpu=CALM))
    await manual(second)
    assert outcomes(store)[-2:] == ["dry_run", "blocked_breaker"]


async def test_load_reconciles_a_journal_intent_without_a_done_record(build: EngineFactory, store: StateStore) -> None:
    """An intent left by a dead daemon is handed to reconcile(); the journal and the decision say so."""
    plan = make_plan("cpu")
    decision_id = add_decision(store, strategy="cpu", action="tune", reason="cpu is hot")
    journal_id = store.journal_intent(decision_id=decision_id, strategy="cpu", plan=plan.as_dict())
    orphan_id = store.journal_intent(decision_id=None, strategy="gone", plan=plan.as_dict())
    assert journal_id is not None and orphan_id is not None
    log = RecordingLog()
    strat = ScriptedStrategy("cpu")
    engine = build([strat], log=log)
    await engine.load()
    assert [p.as_dict() for p in strat.reconciled] == [plan.as_dict()]
    entries = {e.id: e for e in store.journal()}
    assert entries[journal_id].status == "reconciled"
    assert entries[journal_id].result == {"note": "checked: the knob is at its target"}
    assert entries[orphan_id].status == "reconciled"
    assert store.journal("intent") == []
    row = store.decision(decision_id) if decision_id is not None else None
    assert row is not None
    assert (row.outcome, row.error) == ("interrupted", "checked: the knob is at its target")
    assert [e.fields["status"] for e in log.events("journal_reconciled")] == ["reconciled"]


@pytest.mark.parametrize(
    ("error", "note"),
    [
        (StrategyError("knob unreadable"), "reconcile failed: knob unreadable"),
        (RuntimeError("bug"), "reconcile failed: RuntimeError: bug"),
    ],
)
async def test_a_failing_reconcile_is_recorded_and_load_goes_on(
    build: EngineFactory, store: StateStore, error: BaseException, note: str
) -> None:
    """reconcile() raising (expected or not) marks the intent reconcile_failed; load() still completes."""
    store.journal_intent(decision_id=None, strategy="cpu", plan=make_plan("cpu").as_dict())
    store.save_strategy("cpu", {"breaker_open": True, "breaker_reason": "earlier"})
    strat = ScriptedStrategy("cpu")
    strat.reconcile_error = error
    engine = build([strat])
    await engine.load()
    [entry] = store.journal()
    assert entry.status == "reconcile_failed"
    assert entry.result == {"note": note}
    assert engine.runtimes["cpu"].breaker_open


async def test_an_attempt_is_persisted_before_the_apply_runs(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A daemon that dies during apply still has the attempt charged to cooldown and budget after restart."""
    strat = ScriptedStrategy("cpu")
    strat.apply_gate = asyncio.Event()
    first = build([strat], budget_actions=6, apply_timeout_seconds=5.0)
    first.on_snapshot(samples.build(cpu=CALM))
    running = asyncio.create_task(manual(first))
    await asyncio.wait_for(strat.apply_started.wait(), 30.0)
    second_strategy = ScriptedStrategy("cpu")
    second = build([second_strategy], budget_actions=6)
    await second.load()  # the restart: the first daemon is still inside apply()
    rt = second.runtimes["cpu"]
    assert second.pacer.budget_left(rt) == 5
    assert second.pacer.cooldown_left(rt) == 300.0
    assert len(second_strategy.reconciled) == 1
    assert outcomes(store) == ["interrupted"]
    strat.apply_gate.set()
    await asyncio.wait_for(running, 30.0)


# history rows ------------------------------------------------------------------------------------------------------


async def test_repeated_identical_skips_are_written_once(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Rounds that keep hitting the same gate write one row, not one per round; the metric still counts each."""
    registry = CollectorRegistry()
    strat = ScriptedStrategy("cpu")
    engine = build([strat], registry=registry)
    feed(engine, samples, clock, [HOT] * 3)
    for _ in range(6):
        await scheduled(engine)
        feed(engine, samples, clock, [HOT])
    assert outcomes(store) == ["applied", "skipped_cooldown"]
    labels = {"strategy": "cpu", "action": "tune", "outcome": "skipped_cooldown", "mode": "enforce"}
    assert registry.get_sample_value("cctv_optimizer_actions_total", labels) == 5.0


async def test_observed_rows_are_written_once_per_episode(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """In observe mode a long armed stretch is one row; arming again after a calm spell is a new row."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], global_mode=Mode.OBSERVE)
    feed(engine, samples, clock, [HOT] * 3)
    for _ in range(4):
        await scheduled(engine)
        feed(engine, samples, clock, [HOT])
    assert outcomes(store) == ["observed"]
    feed(engine, samples, clock, [CALM] * 5)
    await scheduled(engine)
    assert not armed(engine.runtimes["cpu"])
    feed(engine, samples, clock, [HOT] * 3)
    await scheduled(engine)
    assert outcomes(store) == ["observed", "observed"]


async def test_a_new_episode_in_cooldown_writes_a_new_skip_row(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A skip after the strategy disarmed and re-armed is a new fact and gets its own row."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=3600.0)
    feed(engine, samples, clock, [HOT] * 3)
    await scheduled(engine)
    feed(engine, samples, clock, [HOT])
    await scheduled(engine)
    feed(engine, samples, clock, [CALM] * 5)
    await scheduled(engine)
    feed(engine, samples, clock, [HOT] * 3)
    await scheduled(engine)
    assert outcomes(store) == ["applied", "skipped_cooldown", "skipped_cooldown"]


# operator overrides ------------------------------------------------------------------------------------------------


def overridden(target: str = "knob") -> OperatorOverride:
    """An operator set ``target`` by hand: the strategy had set 2, it now reads 5."""
    return OperatorOverride(target=target, expected="2", found="5")


async def test_an_operator_override_backs_the_strategy_off_and_says_so(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """An operator's change reported while planning: the plan (which leaves it alone) runs, then the cooldown doubles from now."""
    log = RecordingLog()
    strat = ScriptedStrategy("cpu")
    engine = build([strat], log=log, cooldown_seconds=100.0, cooldown_max_seconds=1000.0)
    rt = engine.runtimes["cpu"]
    strat.overrides_on_plan = [overridden("recorder.camera3.pid42")]
    feed(engine, samples, clock, [HOT, HOT, HOT])
    await scheduled(engine)
    assert len(strat.applied) == 1
    applied, row = rows(store)
    assert applied.outcome == "applied"
    assert row.outcome == "backed_off"
    assert row.changes == [
        {
            "target": "recorder.camera3.pid42",
            "action": "operator_override",
            "before": "2",
            "after": "5",
            "reversible": False,
            "risk": "safe",
        }
    ]
    assert "operator changed recorder.camera3.pid42 (set 2, found 5)" in row.reason
    assert rt.cooldown == 200.0
    assert engine.pacer.cooldown_left(rt) == 200.0
    [event] = log.events("strategy_backed_off")
    assert event.level == "warning"
    assert event.fields["reason"] == "operator_override"
    assert event.fields["cooldown_seconds"] == 200.0
    assert event.fields["overrides"] == [{"target": "recorder.camera3.pid42", "expected": "2", "found": "5"}]
    assert engine.pacer.budget_left(rt) == 999  # the apply was an attempt; backing off is not
    assert rt.consecutive_failures == 0 and rt.scores == []

    clock.advance(150)  # still backed off: the plan is skipped, not applied
    await scheduled(engine)
    assert len(strat.applied) == 1 and outcomes(store) == ["applied", "backed_off", "skipped_cooldown"]
    clock.advance(60)  # 210 s after the override: acting again
    await scheduled(engine)
    assert len(strat.applied) == 2 and outcomes(store)[-1] == "applied"


async def test_an_override_noticed_while_applying_backs_off_after_the_apply(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """An override the apply's re-read finds is recorded after the applied row and stretches the cooldown."""
    log = RecordingLog()
    strat = ScriptedStrategy("cpu")
    engine = build([strat], log=log, cooldown_seconds=100.0)
    strat.overrides_on_apply = [overridden()]
    engine.on_snapshot(samples.build(cpu=HOT))
    await manual(engine)
    assert outcomes(store) == ["applied", "backed_off"]
    assert engine.runtimes["cpu"].cooldown == 200.0
    assert len(log.events("strategy_backed_off")) == 1


async def test_repeated_overrides_stretch_the_cooldown_up_to_its_cap_and_reset_restores_it(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Each new override doubles the cooldown up to the cap; an operator's reset brings back the configured one."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=100.0, cooldown_max_seconds=300.0)
    rt = engine.runtimes["cpu"]
    seen = []
    for _ in range(3):
        strat.overrides_on_plan = [overridden()]
        engine.on_snapshot(samples.build(cpu=HOT))
        await manual(engine)
        seen.append(rt.cooldown)
    assert seen == [200.0, 300.0, 300.0]
    await engine.reset("cpu")
    assert rt.cooldown == 100.0 and engine.pacer.cooldown_left(rt) == 0.0


async def test_a_crashing_take_overrides_is_logged_and_the_turn_goes_on(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A plugin whose take_overrides() raises is treated as reporting none: the plan is applied."""
    log = RecordingLog()
    strat = ScriptedStrategy("cpu")

    def broken() -> list[OperatorOverride]:
        raise RuntimeError("boom")

    strat.take_overrides = broken  # type: ignore[method-assign]
    engine = build([strat], log=log)
    engine.on_snapshot(samples.build(cpu=HOT))
    await manual(engine)
    assert outcomes(store) == ["applied"]
    assert [e.level for e in log.events("take_overrides_crashed")] == ["exception", "exception"]


# revert on exit ----------------------------------------------------------------------------------------------------


async def test_revert_all_undoes_every_reversible_change_still_in_effect_newest_first(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Verified, still-verifying and irreversible applies: only the reversible ones are reverted, newest first."""
    kept = ScriptedStrategy("kept", plan=make_plan("kept", expected=cpu_down(0.2, 60.0)))
    waiting = ScriptedStrategy("waiting", plan=make_plan("waiting", expected=cpu_down(0.2, 600.0)))
    oneway = ScriptedStrategy("oneway", plan=make_plan("oneway", reversible=False))
    engine = build([kept, waiting, oneway])
    await apply_and_verify(engine, samples, clock, before=0.95, after=0.6, strategy="kept")  # improved: kept
    assert engine.runtimes["kept"].last_verdict == "improved"
    await manual(engine, strategy="waiting")
    await manual(engine, strategy="oneway")
    assert [e.status for e in store.journal()] == ["done", "done", "done"]

    assert await engine.revert_all() == 2
    assert [r.detail for r in waiting.reverted] == ["knob set"]
    assert [r.detail for r in kept.reverted] == ["knob set"]
    assert oneway.reverted == []
    by_strategy = {e.strategy: e.status for e in store.journal()}
    assert by_strategy == {"kept": "reverted", "waiting": "reverted", "oneway": "done"}
    assert await engine.revert_all() == 0  # closed records are not reverted twice
    assert len(kept.reverted) == 1


async def test_revert_all_order_is_newest_first(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Two stacked changes of one strategy unwind in reverse order of application."""
    strat = ScriptedStrategy("cpu", plan=make_plan("cpu", expected=cpu_down(0.2, 60.0)))
    engine = build([strat], cooldown_seconds=10.0)
    engine.on_snapshot(samples.build(cpu=HOT))
    await manual(engine)
    strat.next_plan = make_plan("cpu", action="second", expected=cpu_down(0.2, 60.0))
    clock.advance(20)
    await manual(engine)
    assert await engine.revert_all() == 2
    assert [r.changes[0].action for r in strat.reverted] == ["second", "tune"]


async def test_revert_all_reaches_changes_of_an_earlier_run(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A reversible change journalled by a previous run is reverted by the next run's revert_all."""
    first = build([ScriptedStrategy("cpu")])
    first.on_snapshot(samples.build(cpu=HOT))
    await manual(first)
    await first.stop(1.0)
    again = ScriptedStrategy("cpu")
    second = build([again])
    await second.load()
    assert await second.revert_all() == 1
    assert [r.detail for r in again.reverted] == ["knob set"]


class OldShapeStrategy(ScriptedStrategy):
    """A scripted strategy that can read its plans and revert data of the older untyped shape."""

    def legacy_actions(self, params: Mapping[str, object]) -> tuple[Action, ...]:
        """``{"knob": N}`` was the older plan shape."""
        return (SetKnob(value=int(str(params["knob"]))),)

    def legacy_revert(self, revert_data: Mapping[str, object]) -> tuple[Action, ...]:
        """``{"knob": N}`` was the older revert data."""
        return (SetKnob(value=int(str(revert_data["knob"]))),)


def old_shape(plan: Plan) -> dict[str, object]:
    """The plan as the daemon wrote it before actions were typed: ``params`` and no ``actions``."""
    return {**{k: v for k, v in plan.as_dict().items() if k != "actions"}, "params": {"knob": 2}}


async def test_journal_rows_of_the_older_shape_are_reconciled_and_reverted_through_the_strategy(
    build: EngineFactory, store: StateStore
) -> None:
    """After an upgrade, an interrupted plan and a done change written with ``params`` / ``revert_data`` are
    rebuilt as typed actions by the strategy: the one is reconciled, the other reverted on exit."""
    plan = make_plan("cpu")
    store.journal_intent(decision_id=None, strategy="cpu", plan=old_shape(plan))
    done = store.journal_intent(decision_id=None, strategy="cpu", plan=old_shape(plan))
    assert done is not None
    store.journal_finish(done, "done", {"changes": [c.as_dict() for c in plan.changes], "revert_data": {"knob": 1}})
    strat = OldShapeStrategy("cpu")
    engine = build([strat])
    await engine.load()
    assert [p.actions for p in strat.reconciled] == [(SetKnob(value=2),)]
    assert await engine.revert_all() == 1
    assert [r.revert for r in strat.reverted] == [(SetKnob(value=1),)]
    assert sorted(e.status for e in store.journal()) == ["reconciled", "reverted"]


async def test_journal_rows_of_the_older_shape_that_cannot_be_rebuilt_are_recorded_as_such(
    build: EngineFactory, store: StateStore
) -> None:
    """A strategy without a decoder for the older shape: the intent closes as reconcile_failed saying why, and
    revert on exit passes over the done row with a warning instead of failing."""
    plan = make_plan("cpu")
    intent = store.journal_intent(decision_id=None, strategy="cpu", plan=old_shape(plan))
    done = store.journal_intent(decision_id=None, strategy="cpu", plan=old_shape(plan))
    assert intent is not None and done is not None
    store.journal_finish(done, "done", {"changes": [c.as_dict() for c in plan.changes], "revert_data": {"knob": 1}})
    log = RecordingLog()
    strat = ScriptedStrategy("cpu")
    engine = build([strat], log=log)
    await engine.load()
    entries = {e.id: e for e in store.journal()}
    assert entries[intent].status == "reconcile_failed"
    assert entries[intent].result == {
        "note": "reconcile failed: cpu: a plan journaled in the older untyped shape cannot be rebuilt"
    }
    assert strat.reconciled == []
    assert await engine.revert_all() == 0
    assert strat.reverted == []
    [warning] = log.events("journal_unreadable")
    assert warning.fields["journal_id"] == done
    assert "older untyped shape" in warning.fields["error"]


async def test_a_failing_revert_on_exit_is_logged_and_the_others_go_on(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """One strategy's revert error does not keep another's change from being reverted."""
    log = RecordingLog()
    bad, good = ScriptedStrategy("bad"), ScriptedStrategy("good")
    bad.revert_error = StrategyError("permission denied")
    engine = build([bad, good], log=log)
    engine.on_snapshot(samples.build(cpu=HOT))
    await manual(engine)
    assert await engine.revert_all() == 1
    assert [r.detail for r in good.reverted] == ["knob set"]
    [event] = log.events("revert_failed")
    assert event.fields["strategy"] == "bad" and event.fields["error"] == "permission denied"


# adaptive sampling -------------------------------------------------------------------------------------------------


async def test_the_sample_interval_stretches_while_calm_and_tightens_near_a_threshold(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock
) -> None:
    """Driven by what the engine watches: calm samples walk the interval up to the cap, a warm one pulls it down."""
    floor = TriggerSpec(signal="cache_hit_rate", enter=0.3, exit=0.4, above=False)
    engine = build([ScriptedStrategy("cpu"), ScriptedStrategy("cache", triggers=(floor,))])
    bounds = cadence.Bounds(base=5.0, low=1.0, high=30.0)
    interval = 5.0
    seen = []
    for _ in range(12):
        clock.advance(interval)
        engine.on_snapshot(samples.build(cpu=0.2, hit_rate=0.95))
        interval, _ = cadence.adapt(interval, bounds, engine.watches(), engine.windows)
        seen.append(interval)
    assert cadence.interval_pressure(engine.watches(), engine.windows)[0] == pytest.approx(0.3 / 0.95)
    assert seen[0] == 10.0 and seen[-1] == 30.0 and seen == sorted(seen)
    clock.advance(interval)
    engine.on_snapshot(samples.build(cpu=0.8, hit_rate=0.95))  # 0.8 / 0.9: near the cpu line
    interval, _ = cadence.adapt(interval, bounds, engine.watches(), engine.windows)
    assert interval == 5.0
    engine.on_snapshot(samples.build(cpu=0.2, hit_rate=0.33))  # 0.3 / 0.33: the hit rate nears its floor
    assert cadence.interval_pressure(engine.watches(), engine.windows)[0] == pytest.approx(0.3 / 0.33)
    interval, _ = cadence.adapt(interval, bounds, engine.watches(), engine.windows)
    assert interval == 2.5


def test_an_event_trigger_arms_on_one_sample_while_a_level_needs_n_of_m() -> None:
    """A trigger with samples_required=1 arms at its first hit; the same hit on a plain trigger does not arm."""

    windows = Windows(10)
    windows.push(1.0, {"event": 0.0, "level": 0.0})
    windows.push(2.0, {"event": 1.0, "level": 1.0})
    detection = DetectionSettings(samples_required=3, window_samples=5)
    level, event = Detector(), Detector()
    assert level.update([TriggerSpec(signal="level", enter=1.0, exit=0.5)], windows, detection) is False
    spec = TriggerSpec(signal="event", enter=1.0, exit=0.5, samples_required=1)
    assert event.update([spec], windows, detection) is True
    assert event.armed_signals == ("event",)
    for at in range(3, 7):  # the hit stays in the window of M=5 for four more samples
        windows.push(float(at), {"event": 0.0, "level": 0.0})
        assert event.update([spec], windows, detection) is True
    windows.push(7.0, {"event": 0.0, "level": 0.0})
    assert event.update([spec], windows, detection) is False
