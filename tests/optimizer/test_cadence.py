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
        (0.1, False, 5.0, 6.25),  # calm: stretch by 1.25
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
        Watch(specs=(CPU,), armed=True, can_act=False),  # held by its breaker, cooldown or budget
    ],
)
def test_a_stretching_or_held_strategy_holds_the_interval_at_calm(watch: Watch) -> None:
    """Its hot line and its armed state are passed over; the pressure is at least the calm line."""
    assert interval_pressure([watch], windows(host_cpu_ratio=0.99)) == (CALM_PROXIMITY, False)


def test_a_disabled_strategy_is_nobodys_concern() -> None:
    """A disabled strategy's line neither tightens nor holds the interval."""
    watch = Watch(specs=(CPU,), armed=True, factor=2.0, enabled=False)
    assert interval_pressure([watch], windows(host_cpu_ratio=0.99)) == (0.0, False)


def test_adapt_walks_up_while_calm_tightens_near_a_line_and_stretches_for_a_factor() -> None:
    """One step at a time: calm stretches by 1.25, near halves, a factor doubles the interval in use only."""
    calm = [Watch(specs=(CPU,), armed=False)]
    assert adapt(5.0, BOUNDS, calm, windows(host_cpu_ratio=0.1)) == (6.25, 6.25)
    assert adapt(5.0, BOUNDS, calm, windows(host_cpu_ratio=0.85)) == (2.5, 2.5)
    stretching = [*calm, Watch(specs=(), armed=False, factor=2.0)]
    assert adapt(5.0, BOUNDS, stretching, windows(host_cpu_ratio=0.6)) == (5.0, 10.0)
