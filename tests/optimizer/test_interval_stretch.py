"""A strategy's request to stretch the daemon's sample interval: the largest factor wins, within the bounds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from optimizer.cadence import largest_factor
from optimizer.clock import FakeClock
from optimizer.engine import Engine
from optimizer.state import StateStore
from strategies.base import ApplyResult, Plan
from tests.optimizer.fakes import ScriptedStrategy, SnapshotBuilder, make_engine


class Stretching(ScriptedStrategy):
    """A scripted strategy that asks for a chosen sample interval factor (or fails to say)."""

    def __init__(self, name: str, factor: float, *, broken: bool = False) -> None:
        super().__init__(name)
        self.factor = factor
        self.broken = broken

    @property
    def sample_interval_factor(self) -> float:
        """The scripted factor, or a crash."""
        if self.broken:
            raise RuntimeError("factor hook crashed")
        return self.factor


@pytest.fixture
async def engine(store: StateStore) -> AsyncIterator[Engine]:
    """An engine over three strategies: one asks for x2, one for x3 later, one crashes when asked."""
    eng = make_engine(
        [Stretching("cpu", 2.0), Stretching("cache", 1.0), Stretching("memory", 5.0, broken=True)],
        store=store,
        clock=FakeClock(),
    )
    yield eng
    await eng.stop(1.0)


async def test_the_engine_takes_the_largest_factor_any_strategy_asks_for(engine: Engine) -> None:
    """The largest factor wins; a strategy whose hook crashes counts as asking for none.

    A factor is read when the strategy's turn is over, so each change shows after the next round.
    """
    engine.on_snapshot(SnapshotBuilder(FakeClock()).build())
    assert largest_factor(engine.watches()) == 2.0
    cache = engine.runtimes["cache"].strategy
    assert isinstance(cache, Stretching)
    cache.factor = 3.0
    await engine.request_round(trigger="scheduled")
    assert largest_factor(engine.watches()) == 3.0
    cache.factor = float("nan")
    await engine.request_round(trigger="scheduled")
    assert largest_factor(engine.watches()) == 2.0
    cpu = engine.runtimes["cpu"].strategy
    assert isinstance(cpu, Stretching)
    cpu.factor = 1.0
    await engine.request_round(trigger="scheduled")
    assert largest_factor(engine.watches()) == 1.0


class ThreadStretching(ScriptedStrategy):
    """Like the cpu strategy: its apply changes the factor from a worker thread, then finishes later."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.factor = 1.0
        self.changed = threading.Event()
        self.release = threading.Event()

    @property
    def sample_interval_factor(self) -> float:
        """The factor the worker thread last set."""
        return self.factor

    async def apply(self, plan: Plan) -> ApplyResult:
        """Stretch in a worker thread, which then waits to be released."""
        await asyncio.to_thread(self._work)
        return await super().apply(plan)

    def _work(self) -> None:
        self.factor = 2.0
        self.changed.set()
        self.release.wait(30.0)


async def test_a_factor_changed_in_a_worker_thread_shows_once_the_apply_is_over(store: StateStore) -> None:
    """While the apply's thread has changed the factor but not finished, the cadence still reads the old one.

    Before the cadence read the factor through the engine's view, every sample read the strategy's property
    directly, so a value a worker thread was in the middle of changing steered the interval.
    """
    clock = FakeClock()
    strategy = ThreadStretching("cpu")
    engine = make_engine([strategy], store=store, clock=clock)
    engine.on_snapshot(SnapshotBuilder(clock).build(cpu=0.99))
    round_task = asyncio.ensure_future(engine.request_round(trigger="manual", manual=True))
    try:
        assert await asyncio.to_thread(strategy.changed.wait, 30.0)
        assert strategy.sample_interval_factor == 2.0
        assert largest_factor(engine.watches()) == 1.0
    finally:
        strategy.release.set()
        result = await round_task
        await engine.stop(1.0)
    assert len(result.decision_ids) == 1
    assert largest_factor(engine.watches()) == 2.0


def test_a_strategy_asks_for_no_stretch_by_default() -> None:
    """The base contract's factor is 1.0."""
    assert ScriptedStrategy("plain").sample_interval_factor == 1.0
