"""A strategy's request to stretch the daemon's sample interval: the largest factor wins, within the bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from optimizer.cadence import largest_factor
from optimizer.clock import FakeClock
from optimizer.engine import Engine
from optimizer.state import StateStore
from tests.optimizer.fakes import ScriptedStrategy, make_engine


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
def store(tmp_path: Path) -> Iterator[StateStore]:
    """An open state store in a temporary directory."""
    st = StateStore(tmp_path / "state")
    st.open()
    yield st
    st.close()


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
    """The largest factor wins; a strategy whose hook crashes counts as asking for none."""
    assert largest_factor(engine.watches()) == 2.0
    cache = engine.runtimes["cache"].strategy
    assert isinstance(cache, Stretching)
    cache.factor = 3.0
    assert largest_factor(engine.watches()) == 3.0
    cache.factor = float("nan")
    assert largest_factor(engine.watches()) == 2.0
    cpu = engine.runtimes["cpu"].strategy
    assert isinstance(cpu, Stretching)
    cpu.factor = 1.0
    assert largest_factor(engine.watches()) == 1.0


def test_a_strategy_asks_for_no_stretch_by_default() -> None:
    """The base contract's factor is 1.0."""
    assert ScriptedStrategy("plain").sample_interval_factor == 1.0
