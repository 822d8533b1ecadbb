"""Tests for metrics.window: nearest-rank percentiles and the rolling windows."""

from __future__ import annotations

import pytest

from metrics.window import Windows, percentile


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 10.0), (1, 10.0), (25, 20.0), (50, 30.0), (60, 30.0), (61, 40.0), (95, 50.0), (100, 50.0)],
)
def test_percentile_by_nearest_rank(q: float, expected: float) -> None:
    """The q-th percentile is the value at rank ceil(q/100 * n), clamped to the range."""
    assert percentile([50.0, 10.0, 40.0, 20.0, 30.0], q) == expected


def test_percentile_of_nothing_is_none() -> None:
    """No values give no percentile."""
    assert percentile([], 95) is None


def test_percentile_of_one_value_is_that_value() -> None:
    """A single value is every percentile."""
    assert percentile(iter([7.5]), 99) == 7.5


def window_with(values: list[float], size: int = 5, name: str = "cpu") -> Windows:
    """A window holding ``values`` for one signal, pushed at times 0, 1, 2, ..."""
    windows = Windows(size)
    for at, value in enumerate(values):
        windows.push(float(at), {name: value})
    return windows


def test_windows_keep_only_the_last_size_samples() -> None:
    """Older samples fall off once the window is full; the last value is the newest."""
    windows = window_with([1, 2, 3, 4, 5, 6, 7], size=3)
    assert windows.size == 3
    assert windows.values("cpu") == [5, 6, 7]
    assert windows.last("cpu") == 7
    assert windows.points("cpu") == [(4.0, 5), (5.0, 6), (6.0, 7)]


def test_windows_hold_each_signal_separately() -> None:
    """Signals pushed together are kept apart, and names are listed sorted."""
    windows = Windows(4)
    windows.push(0.0, {"mem": 0.5, "cpu": 0.1})
    windows.push(1.0, {"cpu": 0.2})
    assert windows.names() == ["cpu", "mem"]
    assert windows.values("cpu") == [0.1, 0.2]
    assert windows.values("mem") == [0.5]


def test_unknown_signal_is_empty() -> None:
    """A signal never pushed has no values, no last value, no points and no percentile."""
    windows = Windows(3)
    assert windows.values("nope") == []
    assert windows.last("nope") is None
    assert windows.points("nope") == []
    assert windows.percentile("nope", 95) is None
    assert windows.count_above("nope", 1.0, 3) == 0


def test_values_last_n() -> None:
    """values(last=n) gives the newest n, oldest first; zero gives none."""
    windows = window_with([1, 2, 3, 4])
    assert windows.values("cpu", 2) == [3, 4]
    assert windows.values("cpu", 10) == [1, 2, 3, 4]
    assert windows.values("cpu", 0) == []


def test_count_above_counts_at_or_above_in_the_last_n() -> None:
    """N-of-M detection: values at or above the threshold among the last M."""
    windows = window_with([0.95, 0.5, 0.9, 0.91, 0.2])
    assert windows.count_above("cpu", 0.9, 4) == 2
    assert windows.count_above("cpu", 0.9, 5) == 3
    assert windows.count_above("cpu", 0.9, 0) == 0


def test_percentile_over_the_window_and_since_a_time() -> None:
    """The window percentile can be limited to the points at or after a time."""
    windows = window_with([100.0, 1.0, 2.0, 3.0, 4.0])
    assert windows.percentile("cpu", 100) == 100.0
    assert windows.percentile("cpu", 100, since=1.0) == 4.0
    assert windows.percentile("cpu", 50, since=1.0) == 2.0
    assert windows.points("cpu", since=3.0) == [(3.0, 3.0), (4.0, 4.0)]


def test_clear_drops_everything() -> None:
    """clear() forgets every signal."""
    windows = window_with([1, 2])
    windows.clear()
    assert windows.names() == []
    assert windows.last("cpu") is None
