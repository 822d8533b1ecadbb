"""The sample cadence on its own: interval maths and what the interval reacts to, over plain values."""

from __future__ import annotations

import pytest

from metrics.window import Windows
from optimizer.cadence import (
    CALM_PROXIMITY,
    Bounds,
    Watch,
    adapt,
    interval_pressure,
    largest_factor,
    next_sample_interval,
    round_aligned_interval,
    signal_proximity,
    stretched_interval,
)
from strategies.base import TriggerSpec

CPU = TriggerSpec(signal="host_cpu_ratio", enter=0.9, exit=0.7)
HIT_FLOOR = TriggerSpec(signal="cache_hit_rate", enter=0.3, exit=0.4, above=False)
OWN = TriggerSpec(signal="own_rss_bytes", enter=100.0, exit=80.0)
BOUNDS = Bounds(base=5.0, low=1.0, high=30.0)


def windows(**values: float) -> Windows:
    """Windows holding one sample of the given values."""
    w = Windows(10)
    w.push(1.0, values)
    return w


@pytest.mark.parametrize(
    ("proximity", "armed", "current", "expected"),
    [
        (0.1, False, 5.0, 10.0),  # calm: double
        (0.1, False, 28.0, 30.0),  # ... never past the upper bound
        (0.6, False, 20.0, 5.0),  # between calm and near: back to the base
        (0.85, False, 5.0, 2.5),  # near a line: halve
        (1.5, False, 1.5, 1.0),  # ... never below the lower bound
        (0.1, True, 20.0, 5.0),  # armed: at most the base, halving from a stretched interval
    ],
)
def test_next_sample_interval_moves_within_bounds(
    proximity: float, armed: bool, current: float, expected: float
) -> None:
    """The interval stretches while calm, tightens near a threshold, and stays within [low, high]."""
    got = next_sample_interval(current, base=5.0, low=1.0, high=30.0, proximity=proximity, armed=armed)
    assert got == pytest.approx(expected)


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


def test_proximity_is_the_nearest_line_above_or_below() -> None:
    """An above-line nears as the value rises, a below-line (a floor) as it falls; missing signals count as far."""
    w = windows(host_cpu_ratio=0.45, cache_hit_rate=0.33)
    assert signal_proximity([CPU], w) == pytest.approx(0.5)
    assert signal_proximity([HIT_FLOOR], w) == pytest.approx(0.3 / 0.33)
    assert signal_proximity([CPU, HIT_FLOOR], w) == pytest.approx(0.3 / 0.33)
    assert signal_proximity([OWN], w) == 0.0


@pytest.mark.parametrize(
    ("factors", "expected"),
    [((), 1.0), ((1.0, 2.0), 2.0), ((3.0, float("nan"), 2.0), 3.0), ((float("nan"),), 1.0), ((0.5,), 1.0)],
)
def test_the_largest_factor_wins_and_a_nan_asks_for_none(factors: tuple[float, ...], expected: float) -> None:
    """The stretch in use is the largest asked for, never below 1; a NaN is passed over."""
    assert largest_factor([Watch(specs=(), armed=False, factor=f) for f in factors]) == expected


def test_the_daemons_own_signals_do_not_count() -> None:
    """The own RSS at 90% of its line leaves the pressure at the host's figures."""
    w = windows(host_cpu_ratio=0.18, own_rss_bytes=90.0)
    proximity, armed = interval_pressure([Watch(specs=(CPU, OWN), armed=False)], w)
    assert proximity == pytest.approx(0.2) and not armed


@pytest.mark.parametrize(
    "watch",
    [
        Watch(specs=(CPU,), armed=True, factor=2.0),  # asks for a stretch
        Watch(specs=(CPU,), armed=True, can_act=False),  # held by its breaker, cooldown or budget, or idle armed
    ],
)
def test_a_stretching_or_held_strategy_leaves_the_interval_to_the_others(watch: Watch) -> None:
    """Its hot line and its armed state are passed over: alone, it lets the interval stretch; another strategy
    near its line still tightens it."""
    assert interval_pressure([watch], windows(host_cpu_ratio=0.99)) == (0.0, False)
    near = Watch(specs=(HIT_FLOOR,), armed=False)
    proximity, armed = interval_pressure([watch, near], windows(host_cpu_ratio=0.99, cache_hit_rate=0.33))
    assert proximity > CALM_PROXIMITY and not armed
    adaptive = BOUNDS.base
    for _ in range(20):
        adaptive, _used = adapt(adaptive, BOUNDS, [watch], windows(host_cpu_ratio=0.99))
    assert adaptive == BOUNDS.high


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
    """min = max = 1 s with a 5 s base: 1 s whatever the round's distance; never past the maximum."""
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


def test_adapt_aligns_only_while_nothing_is_armed() -> None:
    """Near a line: the base interval while the round is far; an armed strategy keeps it tight all along."""
    near = windows(host_cpu_ratio=0.85)
    watch = Watch(specs=(CPU,), armed=False)
    adaptive, used = BOUNDS.low, 0.0
    adaptive, used = adapt(adaptive, BOUNDS, [watch], near, until_round=25.0, window=5)
    assert (adaptive, used) == (BOUNDS.low, BOUNDS.base)
    adaptive, used = adapt(adaptive, BOUNDS, [watch], near, until_round=3.0, window=5)
    assert used == BOUNDS.low
    armed = Watch(specs=(CPU,), armed=True)
    adaptive, used = adapt(adaptive, BOUNDS, [armed], near, until_round=25.0, window=5)
    assert used == BOUNDS.low


def test_a_disabled_strategy_is_nobodys_concern() -> None:
    """A disabled strategy's line neither tightens nor holds the interval."""
    watch = Watch(specs=(CPU,), armed=True, factor=2.0, enabled=False)
    assert interval_pressure([watch], windows(host_cpu_ratio=0.99)) == (0.0, False)


def test_adapt_walks_up_while_calm_tightens_near_a_line_and_stretches_for_a_factor() -> None:
    """One step at a time: calm doubles, near halves, a factor doubles the interval in use only."""
    calm = [Watch(specs=(CPU,), armed=False)]
    assert adapt(5.0, BOUNDS, calm, windows(host_cpu_ratio=0.1)) == (10.0, 10.0)
    assert adapt(5.0, BOUNDS, calm, windows(host_cpu_ratio=0.85)) == (2.5, 2.5)
    stretching = [*calm, Watch(specs=(), armed=False, factor=2.0)]
    assert adapt(5.0, BOUNDS, stretching, windows(host_cpu_ratio=0.6)) == (5.0, 10.0)
