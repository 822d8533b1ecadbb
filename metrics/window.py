"""Rolling windows over the recent samples of every signal, for windowed detection and verification."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class Windows:
    """One bounded deque of (monotonic time, value) per signal."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._series: dict[str, deque[tuple[float, float]]] = {}

    @property
    def size(self) -> int:
        """Samples kept per signal."""
        return self._size

    def push(self, at: float, signals: Mapping[str, float]) -> None:
        """Append one sample's signals."""
        for name, value in signals.items():
            series = self._series.get(name)
            if series is None:
                series = self._series[name] = deque(maxlen=self._size)
            series.append((at, value))

    def retain(self, names: Iterable[str]) -> None:
        """Drop every series not named (their source stopped reporting)."""
        keep = set(names)
        for name in [n for n in self._series if n not in keep]:
            del self._series[name]

    def names(self) -> list[str]:
        """Signals seen so far."""
        return sorted(self._series)

    def last(self, name: str) -> float | None:
        """The latest value of a signal."""
        series = self._series.get(name)
        return series[-1][1] if series else None

    def values(self, name: str, last: int | None = None) -> list[float]:
        """The values of a signal, oldest first; the last ``last`` of them when given."""
        series = self._series.get(name)
        if not series:
            return []
        items = [v for _, v in series]
        if last is None:
            return items
        # items[-0:] would be the whole series, not the last zero values
        return items[-last:] if last > 0 else []

    def points(self, name: str, since: float | None = None) -> list[tuple[float, float]]:
        """(time, value) pairs of a signal, optionally only those at or after ``since``."""
        series = self._series.get(name)
        if not series:
            return []
        return [p for p in series if since is None or p[0] >= since]

    def count_above(self, name: str, threshold: float, last: int) -> int:
        """How many of the last ``last`` values are at or above ``threshold``."""
        return sum(1 for v in self.values(name, last) if v >= threshold)

    def percentile(self, name: str, q: float, since: float | None = None) -> float | None:
        """Percentile of a signal over the window (or since a time)."""
        return percentile((v for _, v in self.points(name, since)), q)

    def clear(self) -> None:
        """Drop everything (used to trim the daemon's own memory)."""
        self._series.clear()
