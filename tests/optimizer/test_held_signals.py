"""The engine's windows keep a signal whose earlier reading stands in, and drop one whose source went down."""

from __future__ import annotations

from dataclasses import replace

from optimizer.clock import FakeClock
from optimizer.state import StateStore
from tests.optimizer.fakes import SnapshotBuilder, make_engine


async def test_a_standing_in_cache_reading_is_held_and_a_missing_one_dropped(store: StateStore) -> None:
    """Counters read once and then standing in (their age above 0) add no point and keep the series; a sample
    without cache stats at all (the source down) drops it, as before."""
    clock = FakeClock()
    samples = SnapshotBuilder(clock)
    engine = make_engine([], store=store, clock=clock)
    try:
        engine.on_snapshot(samples.build(hit_rate=0.5))
        for _ in range(3):
            clock.advance(1.0)
            snap = samples.build(hit_rate=0.5)
            assert snap.cache is not None
            engine.on_snapshot(replace(snap, cache=replace(snap.cache, age_seconds=4.0)))
        assert len(engine.windows.values("cache_hit_rate")) == 1
        clock.advance(1.0)
        engine.on_snapshot(samples.build())
        assert engine.windows.values("cache_hit_rate") == []
    finally:
        await engine.stop(1.0)


async def test_a_verdict_waits_for_its_signal_to_be_measured_after_the_change(store: StateStore) -> None:
    """The cache stats that stand in after an action were read before it: the verdict waits for a fresh reading
    instead of judging the change on them (it was 'neutral', 304 -> 304 entries, on the real backend)."""
    from strategies.base import Direction, ExpectedEffect
    from tests.optimizer.fakes import HIT_RATE_TRIGGER, ScriptedStrategy, make_plan

    clock = FakeClock()
    samples = SnapshotBuilder(clock)
    up = ExpectedEffect(signal="cache_hit_rate", direction=Direction.UP, amount=0.1, settle_seconds=0.0)
    strat = ScriptedStrategy("cache", triggers=(HIT_RATE_TRIGGER,), plan=make_plan("cache", expected=up))
    engine = make_engine([strat], store=store, clock=clock)
    try:
        engine.on_snapshot(samples.build(hit_rate=0.2))
        clock.advance(1.0)  # the round comes after the sample it plans from
        result = await engine.request_round(trigger="manual", manual=True)
        [decision] = result.decision_ids
        clock.advance(1.0)
        stale = samples.build(hit_rate=0.2)
        assert stale.cache is not None
        engine.on_snapshot(replace(stale, cache=replace(stale.cache, age_seconds=5.0)))
        await engine.verify_due()
        row = store.decision(decision)
        assert row is not None and row.verdict is None
        clock.advance(1.0)
        engine.on_snapshot(samples.build(hit_rate=0.9))
        await engine.verify_due()
        row = store.decision(decision)
        assert row is not None and row.verdict == "improved"
        assert row.verdict_detail is not None and row.verdict_detail["after"] == 0.9
    finally:
        await engine.stop(1.0)


async def test_a_verdict_without_a_fresh_reading_is_given_after_a_while(store: StateStore) -> None:
    """When no fresh reading comes, the verdict is given on what there is once VERIFY_WAIT_SECONDS have passed."""
    from optimizer.verification import VERIFY_WAIT_SECONDS
    from strategies.base import Direction, ExpectedEffect
    from tests.optimizer.fakes import HIT_RATE_TRIGGER, ScriptedStrategy, make_plan

    clock = FakeClock()
    samples = SnapshotBuilder(clock)
    up = ExpectedEffect(signal="cache_hit_rate", direction=Direction.UP, amount=0.1, settle_seconds=0.0)
    strat = ScriptedStrategy("cache", triggers=(HIT_RATE_TRIGGER,), plan=make_plan("cache", expected=up))
    engine = make_engine([strat], store=store, clock=clock)
    try:
        engine.on_snapshot(samples.build(hit_rate=0.2))
        [decision] = (await engine.request_round(trigger="manual", manual=True)).decision_ids
        clock.advance(VERIFY_WAIT_SECONDS + 1.0)
        await engine.verify_due()
        row = store.decision(decision)
        assert row is not None and row.verdict == "neutral"
    finally:
        await engine.stop(1.0)
