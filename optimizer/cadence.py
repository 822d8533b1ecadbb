"""The sample cadence: how often the daemon samples, from how near the watched signals are to their lines.

The one place the sample interval is worked out. Each sample, the daemon hands over what every strategy is
watching (a ``Watch``: its triggers, whether it is armed, whether it can act, the stretch it asks for) and the
windows; ``adapt`` returns the adaptive interval (fed back next time) and the interval to use. Pure functions
over plain values: no clock, no engine, no daemon.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from metrics.window import Windows
from strategies.base import TriggerSpec

NEAR_PROXIMITY = 0.8
CALM_PROXIMITY = 0.5
# Calm, the interval doubles (as it halves near a line): from the 5 s base to the 30 s bound in three samples.
# Once there the interval is the same whatever the step; only the way back after start or after an episode is
# shorter (three samples in 35 s instead of nine in two minutes), and a signal nearing its line halves it at once.
STRETCH_FACTOR = 2.0
# The daemon's own figures: its RSS sits near 60% of its soft line from the libraries alone, so counting it
# would hold the sample interval at its base for ever; nearing it is no reason to watch the host more closely.
OWN_SIGNALS = frozenset({"own_rss_bytes"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Watch:
    """What the cadence needs of one strategy, read once per sample."""

    specs: Sequence[TriggerSpec]
    armed: bool
    # the stretch of the sample interval the strategy asks for (1.0: none)
    factor: float = 1.0
    # not held by an open breaker, a cooldown, the budget or disabled disruptive changes, and not armed by a
    # condition its last plan found nothing to do about
    can_act: bool = True
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounds:
    """The configured sample interval and its limits, in seconds."""

    base: float
    low: float
    high: float


def signal_proximity(specs: Sequence[TriggerSpec], windows: Windows) -> float:
    """How close the latest values are to their enter thresholds: 1.0 is at the line, above 1.0 past it."""
    proximity = 0.0
    for spec in specs:
        value = windows.last(spec.signal)
        if value is None or spec.enter == 0:
            continue
        # a below-type trigger (a hit rate under a floor) nears its line as the value falls
        below = spec.enter / value if value > 0 else 2.0
        proximity = max(proximity, value / spec.enter if spec.above else below)
    return proximity


def next_sample_interval(  # noqa: PLR0913 -- the interval's inputs are separate quantities
    current: float, *, base: float, low: float, high: float, proximity: float, armed: bool
) -> float:
    """The next sample interval: halve toward ``low`` near a line, double toward ``high`` when calm.

    Between calm and near the configured base interval is used again. The result is always within bounds.
    """
    if armed or proximity >= NEAR_PROXIMITY:
        target = max(low, min(base, current / 2))
    elif proximity < CALM_PROXIMITY:
        target = min(high, max(base, current * STRETCH_FACTOR))
    else:
        target = base
    return max(low, min(high, target))


def stretched_interval(adaptive: float, *, factor: float, low: float, high: float) -> float:
    """The interval in use: the adaptive one stretched by the largest factor a strategy asks for, within bounds.

    The adaptive interval is kept unstretched (the caller feeds it back to next_sample_interval), so a factor
    held over many samples doubles the interval once instead of compounding.
    """
    return max(low, min(high, adaptive * max(1.0, factor)))


def largest_factor(watches: Iterable[Watch]) -> float:
    """The largest stretch of the sample interval any strategy asks for (1.0: none)."""
    factor = 1.0
    for watch in watches:
        # a NaN never compares greater, so max() keeps the factor found so far
        factor = max(factor, watch.factor)
    return factor


def interval_pressure(
    watches: Iterable[Watch], windows: Windows, *, ignore: frozenset[str] = OWN_SIGNALS
) -> tuple[float, bool]:
    """Proximity and armed state for next_sample_interval, over what the interval should react to.

    The signals in ``ignore`` (the daemon's own) do not count. Nor does a strategy that asks for a stretch
    (the cpu strategy while the host is hot): tightening for it would undo the stretch (1 s doubled is 2 s).
    Nor does a strategy that cannot act (breaker open, held by its cooldown or budget, planning a disruptive
    change while those are off, or armed by a condition its last plan found nothing to do about): closer
    samples bring nothing while it waits for its next turn. Such strategies leave the interval to the others,
    so it stretches while those are calm and tightens as soon as one of them nears a line.
    """
    proximity = 0.0
    armed = False
    for watch in watches:
        if not watch.enabled:
            continue  # it never gets a turn: its lines are nobody's concern
        if watch.factor > 1.0 or not watch.can_act:
            continue
        specs = [spec for spec in watch.specs if spec.signal not in ignore]
        proximity = max(proximity, signal_proximity(specs, windows))
        armed = armed or watch.armed
    return proximity, armed


def round_aligned_interval(
    interval: float, *, until_round: float | None, window: int, base: float, high: float
) -> float:
    """A tightened interval while nothing is armed, timed so that the next round finds its window as before.

    A round's detectors look only at the last ``window`` samples; samples taken at the tight ``interval`` long
    before it are never looked at. While the round is further off than those samples need, sampling goes on at
    ``base`` (at most ``high``); the last ``window`` samples before it are ``interval`` apart, as without this.
    ``until_round`` is None when no round is scheduled: the interval is left as it is.
    """
    wait = min(base, high)
    if until_round is None or interval >= wait:
        return interval
    slack = until_round - window * interval
    if slack <= interval:
        return interval
    return min(wait, slack)


def adapt(  # noqa: PLR0913 -- the interval's inputs are separate quantities
    adaptive: float,
    bounds: Bounds,
    watches: Sequence[Watch],
    windows: Windows,
    *,
    until_round: float | None = None,
    window: int = 1,
) -> tuple[float, float]:
    """One sample's step: (the next adaptive interval, the interval to use), both within the bounds.

    Stretch the interval while every signal is far from its threshold; tighten near one. A strategy may ask for
    a longer interval on top (the cpu strategy while the host is hot): the largest factor asked for multiplies
    the adapted interval, still within the configured bounds. Near a line with nothing armed, the tight samples
    are taken just before the next round, ``until_round`` seconds off, whose detection reads the last ``window``
    (see round_aligned_interval).
    """
    proximity, armed = interval_pressure(watches, windows)
    adaptive = next_sample_interval(
        adaptive, base=bounds.base, low=bounds.low, high=bounds.high, proximity=proximity, armed=armed
    )
    interval = stretched_interval(adaptive, factor=largest_factor(watches), low=bounds.low, high=bounds.high)
    if not armed:
        interval = round_aligned_interval(
            interval, until_round=until_round, window=window, base=bounds.base, high=bounds.high
        )
    return adaptive, interval
