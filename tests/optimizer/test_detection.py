"""Detection and the decision words on their own: windows in, armed state out; verdicts and modes as data."""

from __future__ import annotations

import pytest

from config.settings import DetectionSettings, Mode
from metrics.window import Windows
from optimizer.decisions import Verdict, judge, most_restrictive
from optimizer.detection import Detector
from strategies.base import Direction, TriggerSpec

CPU = TriggerSpec(signal="cpu_ratio", enter=0.9, exit=0.7)
FLOOR = TriggerSpec(signal="cache_hit_rate", enter=0.3, exit=0.5, above=False)
THREE_OF_FIVE = DetectionSettings(samples_required=3, window_samples=5)


def feed(detector: Detector, windows: Windows, spec: TriggerSpec, values: list[float]) -> list[bool]:
    """Push each value as one sample and re-evaluate; the armed state after each."""
    seen: list[bool] = []
    for value in values:
        windows.push(float(len(seen)), {spec.signal: value})
        seen.append(detector.update([spec], windows, THREE_OF_FIVE))
    return seen


@pytest.mark.parametrize(
    ("spec", "values", "expected"),
    [
        # three of the last five past the line arm; one back under the exit line is not yet calm
        (CPU, [0.95, 0.5, 0.95, 0.95], [False, False, False, True]),
        # armed, it stays armed while N of M still fire or the latest is between the lines
        (CPU, [0.95, 0.95, 0.95, 0.8, 0.6, 0.8, 0.6], [False, False, True, True, True, True, False]),
        # a floor arms as the value falls under it, and disarms once back over its exit line
        (FLOOR, [0.2, 0.2, 0.2, 0.4, 0.6, 0.6], [False, False, True, True, True, False]),
    ],
)
def test_hysteresis_arms_on_n_of_m_and_disarms_past_exit(
    spec: TriggerSpec, values: list[float], expected: list[bool]
) -> None:
    """N of M past enter arms; it disarms once fewer fire and the latest value is back past exit."""
    assert feed(Detector(), Windows(10), spec, values) == expected


def test_an_event_trigger_arms_at_once_and_names_its_signal() -> None:
    """samples_required=1 arms on the first hit; the armed signals name what fired."""
    event = TriggerSpec(signal="cache_emptied", enter=1.0, exit=0.5, samples_required=1)
    detector = Detector()
    assert feed(detector, Windows(10), event, [1.0]) == [True]
    assert detector.armed_signals == ("cache_emptied",)


def test_a_missing_signal_never_arms_and_never_holds_armed() -> None:
    """No values for a trigger: it neither arms nor keeps the strategy armed."""
    detector = Detector(armed=True, armed_signals=("cpu_ratio",))
    assert detector.update([CPU], Windows(10), THREE_OF_FIVE) is False and detector.armed_signals == ()


@pytest.mark.parametrize(
    ("before", "after", "direction", "amount", "verdict"),
    [
        (100.0, 40.0, Direction.DOWN, 50.0, Verdict.IMPROVED),  # fell by more than half the expected amount
        (100.0, 90.0, Direction.DOWN, 50.0, Verdict.NEUTRAL),
        (100.0, 110.0, Direction.DOWN, 50.0, Verdict.NEUTRAL),  # a rise under a quarter of the amount
        (100.0, 140.0, Direction.DOWN, 50.0, Verdict.REGRESSED),
        (0.5, 0.8, Direction.UP, 0.2, Verdict.IMPROVED),
    ],
)
def test_judge(before: float, after: float, direction: Direction, amount: float, verdict: Verdict) -> None:
    """The verdict compares the change in the good direction with the expected amount."""
    assert judge(before, after, direction, amount)[0] is verdict


def test_the_most_restrictive_mode_wins() -> None:
    """observe < dry_run < enforce; nothing given is enforce."""
    assert most_restrictive(Mode.ENFORCE, None, Mode.DRY_RUN) is Mode.DRY_RUN
    assert most_restrictive(Mode.DRY_RUN, Mode.OBSERVE) is Mode.OBSERVE
    assert most_restrictive() is Mode.ENFORCE
