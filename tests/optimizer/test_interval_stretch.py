"""A strategy's request to stretch the daemon's sample interval: the largest factor wins, within the bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from optimizer.clock import FakeClock
from optimizer.engine import Engine, next_sample_interval, round_aligned_interval, stretched_interval
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


@pytest.mark.parametrize(
    ("adaptive", "factor", "expected"),
    [
        (5.0, 1.0, 5.0),  # nothing asked: the adaptive interval itself
        (5.0, 2.0, 10.0),  # a hot host: twice as long
        (20.0, 2.0, 30.0),  # ... never past the upper bound
        (0.5, 0.5, 1.0),  # a factor under 1 never shortens it, and the lower bound holds
    ],
)
def test_the_stretched_interval_multiplies_within_bounds(adaptive: float, factor: float, expected: float) -> None:
    """The interval in use is the adaptive one times the factor (at least 1), clamped to [low, high]."""
    assert stretched_interval(adaptive, factor=factor, low=1.0, high=30.0) == pytest.approx(expected)


def test_a_held_factor_doubles_the_interval_once_instead_of_compounding() -> None:
    """Feeding back the unstretched interval keeps x2 at twice the adaptive value however many samples pass."""
    adaptive = 5.0
    used = []
    for _ in range(6):
        adaptive = next_sample_interval(adaptive, base=5.0, low=1.0, high=300.0, proximity=0.6, armed=False)
        used.append(stretched_interval(adaptive, factor=2.0, low=1.0, high=300.0))
    assert used == [10.0] * 6


async def test_the_engine_takes_the_largest_factor_any_strategy_asks_for(engine: Engine) -> None:
    """The largest factor wins; a strategy whose hook crashes counts as asking for none."""
    assert engine.sample_interval_factor() == 2.0
    cache = engine.runtimes["cache"].strategy
    assert isinstance(cache, Stretching)
    cache.factor = 3.0
    assert engine.sample_interval_factor() == 3.0
    cache.factor = float("nan")
    assert engine.sample_interval_factor() == 2.0
    cpu = engine.runtimes["cpu"].strategy
    assert isinstance(cpu, Stretching)
    cpu.factor = 1.0
    assert engine.sample_interval_factor() == 1.0


def test_a_strategy_asks_for_no_stretch_by_default() -> None:
    """The base contract's factor is 1.0."""
    assert ScriptedStrategy("plain").sample_interval_factor == 1.0


@pytest.mark.parametrize(
    ("interval", "until_round", "expected"),
    [
        (1.0, None, 1.0),  # no round scheduled: as tightened
        (1.0, 25.0, 5.0),  # the round is far: the base interval meanwhile
        (1.0, 7.5, 2.5),  # ... and no longer than to be five samples before it
        (1.0, 5.5, 1.0),  # the window's samples are due: tight
        (1.0, 0.0, 1.0),  # the round is due now
        (2.5, 20.0, 5.0),  # a less tightened interval needs a longer lead: 12.5 s
        (2.5, 14.0, 2.5),
        (5.0, 25.0, 5.0),  # not tightened: nothing to align
        (10.0, 25.0, 10.0),  # stretched: left alone
    ],
)
def test_a_tightened_interval_waits_at_base_until_the_rounds_window_is_due(
    interval: float, until_round: float | None, expected: float
) -> None:
    """Near a line with nothing armed, samples a round never reads are not taken at the tight interval."""
    got = round_aligned_interval(interval, until_round=until_round, window=5, base=5.0, high=30.0)
    assert got == pytest.approx(expected)


def test_an_interval_pinned_below_the_base_is_never_lengthened() -> None:
    """min = max = 1 s with a 5 s base (as the detection benchmark runs): 1 s whatever the round's distance."""
    assert round_aligned_interval(1.0, until_round=25.0, window=5, base=5.0, high=1.0) == 1.0
    assert round_aligned_interval(1.0, until_round=25.0, window=5, base=5.0, high=3.0) == 3.0


def test_the_round_finds_its_window_as_close_together_as_without_alignment() -> None:
    """Sampling toward a round 30 s off: the last five samples before it are 1 s apart, and fewer are taken."""
    now, round_at, taken = 0.0, 30.0, [0.0]
    while now < round_at:
        now += round_aligned_interval(1.0, until_round=round_at - now, window=5, base=5.0, high=30.0)
        taken.append(now)
    before = [t for t in taken if t <= round_at]
    assert [round(b - a, 6) for a, b in zip(before[-5:], before[-4:], strict=False)] == [1.0] * 4
    assert round_at - before[-1] < 1.0
    assert len(before) < 15  # against 31 at 1 s throughout
