"""Pacing: each action family of a strategy has its own cooldown and budget, on monotonic time.

Driven deterministically with the fake clock and a scripted strategy; nothing sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest

from optimizer.clock import FakeClock
from optimizer.engine import Engine, RoundResult
from optimizer.state import StateStore
from strategies.base import Change, Risk, StrategyError
from tests.optimizer.fakes import (
    EngineFactory,
    RecordingLog,
    ScriptedStrategy,
    SnapshotBuilder,
    make_plan,
)

HOT, CALM = 0.95, 0.5
DAY = 86400.0


async def manual(engine: Engine, **kwargs: Any) -> RoundResult:
    """A manual round (detection skipped, gates kept)."""
    return await engine.request_round(trigger="manual", manual=True, **kwargs)


async def scheduled(engine: Engine, samples: SnapshotBuilder, clock: FakeClock) -> RoundResult:
    """Three hot samples (arming the strategy) and a scheduled round."""
    for _ in range(3):
        clock.advance(5.0)
        engine.on_snapshot(samples.build(cpu=HOT))
    return await engine.request_round(trigger="scheduled")


def outcomes(store: StateStore) -> list[str]:
    """The outcome of every decision row, oldest first."""
    return [r.outcome for r in store.decisions(limit=10_000)]


# one cooldown and one budget per family ----------------------------------------------------------------------------


async def test_a_family_is_not_held_by_another_familys_cooldown(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A retention run does not hold a WAL checkpoint back: each family waits only for its own cooldown."""
    strat = ScriptedStrategy("database")
    engine = build([strat], cooldown_seconds=300.0)
    rt = engine.runtimes["database"]
    engine.on_snapshot(samples.build(cpu=HOT))
    strat.next_plan = make_plan("database", action="retention_prune", family="retention")
    await manual(engine)
    clock.advance(10.0)
    strat.next_plan = make_plan("database", action="wal_checkpoint", family="checkpoint")
    await manual(engine)
    clock.advance(10.0)
    strat.next_plan = make_plan("database", action="retention_prune", family="retention")
    await manual(engine)
    assert outcomes(store) == ["applied", "applied", "skipped_cooldown"]
    assert "retention cooldown: 280 s left" in store.decisions(limit=10)[-1].reason
    assert engine.pacer.cooldown_left(rt, "retention") == pytest.approx(280.0)
    assert engine.pacer.cooldown_left(rt, "checkpoint") == pytest.approx(290.0)
    assert engine.pacer.cooldown_left(rt, "vacuum") == 0.0
    assert set(engine.pacer.view(rt)) == {"checkpoint", "retention"}


async def test_a_family_has_its_own_budget(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """With a budget of one action an hour, a spent retention budget leaves the checkpoint's budget whole."""
    strat = ScriptedStrategy("database")
    engine = build([strat], cooldown_seconds=0.0, budget_actions=1)
    rt = engine.runtimes["database"]
    engine.on_snapshot(samples.build(cpu=HOT))
    for family in ("retention", "checkpoint", "retention", "checkpoint"):
        strat.next_plan = make_plan("database", action=family, family=family)
        await manual(engine)
        clock.advance(1.0)
    assert outcomes(store) == ["applied", "applied", "skipped_budget", "skipped_budget"]
    assert engine.pacer.budget_left(rt, "retention") == 0
    assert engine.pacer.budget_left(rt, "vacuum") == 1


async def test_plans_without_a_family_share_one_cooldown(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Two different actions that declare no family are paced together, as one strategy-wide family."""
    strat = ScriptedStrategy("cache")
    engine = build([strat])
    engine.on_snapshot(samples.build(cpu=HOT))
    strat.next_plan = make_plan("cache", action="warm")
    await manual(engine)
    strat.next_plan = make_plan("cache", action="clear")
    await manual(engine)
    assert outcomes(store) == ["applied", "skipped_cooldown"]


# skips whose reason changed ---------------------------------------------------------------------------------------


async def test_a_skip_for_another_family_or_target_is_a_new_row(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Repeats of one skip are written once; a skip of another family, or of other targets, is written."""
    strat = ScriptedStrategy("database")
    engine = build([strat], cooldown_seconds=3600.0)
    retention = make_plan("database", action="retention_prune", family="retention", target="table:login_attempts")
    checkpoint = make_plan("database", action="wal_checkpoint", family="checkpoint", target="database.wal")
    strat.next_plan = retention
    await scheduled(engine, samples, clock)
    strat.next_plan = checkpoint
    await scheduled(engine, samples, clock)
    for plan in (retention, retention, checkpoint, checkpoint):
        strat.next_plan = plan
        await scheduled(engine, samples, clock)
    strat.next_plan = make_plan(
        "database", action="retention_prune", family="retention", target="table:token_blacklist"
    )
    await scheduled(engine, samples, clock)
    written = [(r.outcome, r.action) for r in store.decisions(limit=100)]
    assert written == [
        ("applied", "retention_prune"),
        ("applied", "wal_checkpoint"),
        ("skipped_cooldown", "retention_prune"),
        ("skipped_cooldown", "wal_checkpoint"),
        ("skipped_cooldown", "retention_prune"),
    ]


async def test_a_blocked_breaker_with_a_new_reason_is_a_new_row(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A skip without a plan (the breaker) is a repeat only while its reason stays the same."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat])
    rt = engine.runtimes["cpu"]
    rt.breaker_open, rt.breaker_reason = True, "3 consecutive failures (last: busy)"
    await scheduled(engine, samples, clock)
    await scheduled(engine, samples, clock)
    rt.breaker_reason = "3 consecutive failures (last: permission denied)"
    await scheduled(engine, samples, clock)
    assert outcomes(store) == ["blocked_breaker", "blocked_breaker"]


# an apply that changed nothing -------------------------------------------------------------------------------------


async def test_an_apply_that_changed_nothing_is_recorded_as_such_and_spends_nothing(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A checkpoint that left the WAL as it was: row no_change, verdict neutral with figures, no cooldown, no budget."""
    log = RecordingLog()
    strat = ScriptedStrategy("database")
    engine = build([strat], log=log, cooldown_seconds=300.0, budget_actions=3)
    rt = engine.runtimes["database"]
    engine.on_snapshot(samples.build(cpu=HOT))
    strat.next_plan = make_plan("database", action="wal_checkpoint", family="checkpoint")
    strat.apply_changes = (
        Change(target="database.wal", action="wal_checkpoint", before="71.5 MiB", after="71.5 MiB", reversible=False),
    )
    await manual(engine)
    [row] = store.decisions(limit=10)
    assert row.outcome == "no_change"
    assert row.verdict == "neutral"
    assert row.verdict_detail == {"note": "knob set", "figures": ["database.wal: 71.5 MiB -> 71.5 MiB"]}
    assert engine.pacer.cooldown_left(rt, "checkpoint") == 0.0
    assert engine.pacer.budget_left(rt, "checkpoint") == 3
    assert rt.last_outcome == "no_change"
    assert [e.fields["outcome"] for e in log.events("change_unneeded")] == ["no_change"]
    strat.apply_changes = None  # the next, needed checkpoint runs at once
    await manual(engine)
    assert outcomes(store) == ["no_change", "applied"]


async def test_an_apply_that_reports_no_change_at_all_is_no_change(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """An apply whose re-read found the work already done (no changes) gives its attempt back as well."""
    strat = ScriptedStrategy("connection")
    engine = build([strat])
    engine.on_snapshot(samples.build(cpu=HOT))
    strat.apply_changes = ()
    await manual(engine)
    assert outcomes(store) == ["no_change"]
    assert engine.pacer.cooldown_left(engine.runtimes["connection"]) == 0.0


async def test_an_action_that_keeps_changing_nothing_is_paced_from_its_second_time(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """The first no_change is given back; a second one in a row counts, so it does not run every round."""
    strat = ScriptedStrategy("memory")
    engine = build([strat], cooldown_seconds=300.0)
    rt = engine.runtimes["memory"]
    engine.on_snapshot(samples.build(cpu=HOT))
    strat.apply_changes = (
        Change(target="daemon.memory", action="gc_collect", before="95 MiB", after="95 MiB", reversible=False),
    )
    for _ in range(3):
        await manual(engine)
        clock.advance(30.0)
    assert outcomes(store) == ["no_change", "no_change", "skipped_cooldown"]
    assert engine.pacer.cooldown_left(rt) == pytest.approx(240.0)
    clock.advance(240.0)
    strat.apply_changes = None  # it changes something again: the next no_change is given back once more
    await manual(engine)
    clock.advance(300.0)
    strat.apply_changes = ()
    await manual(engine)
    assert outcomes(store)[-2:] == ["applied", "no_change"]
    assert engine.pacer.cooldown_left(rt) == 0.0


# restoring ----------------------------------------------------------------------------------------------------------


async def test_a_restore_is_held_by_neither_the_cooldown_nor_the_budget(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """Giving back an earlier change runs right after it, even with the budget spent."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=240.0, budget_actions=1)
    engine.on_snapshot(samples.build(cpu=HOT))
    await manual(engine)
    clock.advance(30.0)
    strat.next_plan = make_plan("cpu", action="restore_priority", restores=True, reversible=False)
    await manual(engine)
    assert outcomes(store) == ["applied", "applied"]
    strat.next_plan = make_plan("cpu")
    await manual(engine)
    assert outcomes(store)[-1] == "skipped_cooldown"


# wall-clock jumps and reset ----------------------------------------------------------------------------------------


async def test_a_wall_clock_jump_back_does_not_lengthen_a_running_cooldown(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """The wall clock was a day ahead when the strategy acted, then set right: the cooldown ends on time."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=300.0, budget_actions=1, budget_window_seconds=3600.0)
    rt = engine.runtimes["cpu"]
    right = clock.wall()
    clock.set_wall(right + DAY)
    engine.on_snapshot(samples.build(cpu=HOT))
    await manual(engine)
    clock.set_wall(right)
    clock.advance(100.0)
    assert engine.pacer.cooldown_left(rt) == pytest.approx(200.0)
    clock.advance(3600.0)
    assert engine.pacer.budget_left(rt) == 1
    await manual(engine)
    assert outcomes(store) == ["applied", "applied"]


async def test_times_saved_in_the_future_are_clamped_to_now_on_load(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A restart after the wall clock came back a day: the saved attempt counts as made now, not a day ahead."""
    strat = ScriptedStrategy("cpu")
    right = clock.wall()
    clock.set_wall(right + DAY)
    first = build([strat], cooldown_seconds=300.0, budget_actions=2)
    first.on_snapshot(samples.build(cpu=HOT))
    await manual(first)
    clock.set_wall(right)
    second = build([ScriptedStrategy("cpu")], cooldown_seconds=300.0, budget_actions=2)
    await second.load()
    rt = second.runtimes["cpu"]
    assert second.pacer.cooldown_left(rt) == pytest.approx(300.0)
    assert second.pacer.budget_left(rt) == 1
    clock.advance(300.0)
    second.on_snapshot(samples.build(cpu=HOT))
    await manual(second)
    assert outcomes(store) == ["applied", "applied"]


async def test_state_of_an_earlier_version_in_the_future_is_clamped_on_load(
    build: EngineFactory, clock: FakeClock, store: StateStore
) -> None:
    """The earlier single cooldown/budget form loads into the shared family, its future times clamped to now."""
    ahead = clock.wall() + DAY
    store.save_strategy("cpu", {"cooldown": 600.0, "last_attempt": ahead, "attempts": [ahead, ahead - 10]})
    engine = build([ScriptedStrategy("cpu")], cooldown_seconds=300.0, budget_actions=6)
    await engine.load()
    rt = engine.runtimes["cpu"]
    assert rt.cooldown == 600.0
    assert engine.pacer.cooldown_left(rt) == pytest.approx(600.0)
    assert engine.pacer.budget_left(rt) == 4


async def test_reset_gives_the_budget_back(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """strategies reset: the breaker closes, the cooldown ends and the spent budget is given back."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=0.0, budget_actions=1)
    rt = engine.runtimes["cpu"]
    engine.on_snapshot(samples.build(cpu=HOT))
    strat.apply_error = StrategyError("busy")
    await manual(engine)
    assert engine.pacer.budget_left(rt) == 0
    await engine.reset("cpu")
    assert engine.pacer.budget_left(rt) == 1
    strat.apply_error = None
    await manual(engine)
    assert outcomes(store) == ["failed", "applied"]


# whether a strategy can act (the sample interval asks) ------------------------------------------------------------


async def test_a_strategy_held_by_its_cooldown_or_breaker_cannot_act(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """can_act is false while the last plan waits for its cooldown or budget, or the breaker is open."""
    strat = ScriptedStrategy("cpu")
    engine = build([strat], cooldown_seconds=300.0)
    rt = engine.runtimes["cpu"]
    assert engine.pacer.can_act(rt) is True
    await scheduled(engine, samples, clock)
    assert engine.pacer.can_act(rt) is True  # it acted; nothing held it
    await scheduled(engine, samples, clock)
    assert outcomes(store) == ["applied", "skipped_cooldown"]
    assert engine.pacer.can_act(rt) is False
    clock.advance(engine.pacer.cooldown_left(rt))
    assert engine.pacer.can_act(rt) is True
    rt.breaker_open = True
    assert engine.pacer.can_act(rt) is False


async def test_a_strategy_whose_disruptive_plan_is_not_allowed_cannot_act(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock, store: StateStore
) -> None:
    """A disruptive plan with disruptive changes off holds the strategy until a round plans something it may do."""
    strat = ScriptedStrategy("connection", plan=make_plan("connection", action="kick_reader", risk=Risk.DISRUPTIVE))
    engine = build([strat])
    rt = engine.runtimes["connection"]
    await scheduled(engine, samples, clock)
    assert outcomes(store) == ["blocked_disruptive"]
    assert engine.pacer.can_act(rt) is False
    clock.advance(3600.0)
    assert engine.pacer.can_act(rt) is False
    strat.next_plan = make_plan("connection", action="end_stuck_sessions")
    await scheduled(engine, samples, clock)
    assert engine.pacer.can_act(rt) is True


async def test_an_armed_strategy_whose_plan_had_nothing_to_do_cannot_act_until_it_plans_again(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock
) -> None:
    """Armed with nothing to do: its view says it cannot act while it stays armed; a plan with changes, or the end
    of the episode (disarmed), makes it able to act again."""
    strat = ScriptedStrategy("cpu", use_default_plan=False)
    engine = build([strat])
    await scheduled(engine, samples, clock)
    assert engine.view("cpu").armed
    assert engine.view("cpu").can_act is False
    strat.next_plan = make_plan("cpu")
    await scheduled(engine, samples, clock)
    assert engine.view("cpu").can_act is True  # it acted; nothing held it
    strat.next_plan = None
    await scheduled(engine, samples, clock)
    assert engine.view("cpu").can_act is False
    for _ in range(3):
        clock.advance(5.0)
        engine.on_snapshot(samples.build(cpu=0.1))
    await engine.request_round(trigger="scheduled")
    assert not engine.view("cpu").armed
    assert engine.view("cpu").can_act is True
