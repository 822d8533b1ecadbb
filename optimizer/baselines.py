"""Learn the normal: rolling p95 baselines of chosen signals, over the last hour and per hour of day.

The last-hour p95 is the baseline until a day of data exists; then the p95 that hour of day had the day
before takes over, so a busy evening is compared with evenings and a quiet night with nights. Triggers
use ``max(absolute floor, baseline x factor)``; baselines are keyed by signal name.

After a restart the per-hour baselines come back from the state database, and so does the last-hour one
when it was saved less than a window (an hour) ago: it stands in until the new run has enough samples of
its own, and lapses once it is older than the window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from metrics.window import percentile

DEFAULT_SIGNALS = ("response_time_seconds", "tcp_established")
ALL_HOURS = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselineRecord:
    """One baseline to persist: signal, hour of day (-1: the rolling last hour), value and sample count."""

    signal: str
    hour: int
    value: float
    samples: int


def hour_of_day(wall: float) -> int:
    """The local hour (0..23) of a wall time."""
    return time.localtime(wall).tm_hour


class BaselineLearner:
    """Keeps a bounded window of values per signal and derives the baselines from it."""

    def __init__(
        self,
        signals: Iterable[str] = DEFAULT_SIGNALS,
        *,
        window_seconds: float = 3600.0,
        min_samples: int = 30,
        max_points: int = 4000,
        hour_of: Callable[[float], int] = hour_of_day,
    ) -> None:
        self._signals = tuple(signals)
        self._window = window_seconds
        self._min = min_samples
        self._hour_of = hour_of
        self._points: dict[str, deque[tuple[float, float]]] = {s: deque(maxlen=max_points) for s in self._signals}
        self._max = max_points
        self._hour_values: dict[str, deque[float]] = {s: deque(maxlen=max_points) for s in self._signals}
        self._current_hour: int | None = None
        self._hourly: dict[tuple[str, int], tuple[float, int]] = {}
        # the last-hour baselines of the previous run: signal -> (value, saved at, wall time)
        self._restored: dict[str, tuple[float, float]] = {}

    @property
    def signals(self) -> tuple[str, ...]:
        """The signals learned."""
        return self._signals

    def load(
        self,
        saved: Mapping[tuple[str, int], tuple[float, int]],
        *,
        saved_at: Mapping[tuple[str, int], float] | None = None,
    ) -> None:
        """Restore the per-hour baselines, and the last-hour ones whose save time is known (see current())."""
        for (signal, hour), value in saved.items():
            if signal not in self._points:
                continue
            if hour != ALL_HOURS:
                self._hourly[(signal, hour)] = value
                continue
            at = (saved_at or {}).get((signal, hour))
            # without its save time a last-hour baseline could be days old: it is not trusted
            if at is not None:
                self._restored[signal] = (value[0], at)

    def observe(self, wall: float, signals: Mapping[str, float]) -> list[BaselineRecord]:
        """Take one sample; returns the records to persist (a finished hour of day)."""
        hour = self._hour_of(wall)
        finished: list[BaselineRecord] = []
        if self._current_hour is not None and hour != self._current_hour:
            finished = self._finish_hour(self._current_hour)
        self._current_hour = hour
        horizon = wall - self._window
        for name in self._signals:
            value = signals.get(name)
            points = self._points[name]
            while points and points[0][0] < horizon:
                points.popleft()
            if value is None:
                continue
            points.append((wall, value))
            self._hour_values[name].append(value)
        return finished

    def _finish_hour(self, hour: int) -> list[BaselineRecord]:
        out: list[BaselineRecord] = []
        for name in self._signals:
            values = self._hour_values[name]
            if len(values) >= self._min:
                p95 = percentile(values, 95)
                if p95 is not None:
                    self._hourly[(name, hour)] = (p95, len(values))
                    out.append(BaselineRecord(signal=name, hour=hour, value=p95, samples=len(values)))
            self._hour_values[name] = deque(maxlen=self._max)
        return out

    def last_hour(self) -> dict[str, BaselineRecord]:
        """The rolling last-hour p95 of each signal with enough samples of this run (restored ones excluded)."""
        out: dict[str, BaselineRecord] = {}
        for name, points in self._points.items():
            if len(points) >= self._min:
                p95 = percentile((v for _, v in points), 95)
                if p95 is not None:
                    out[name] = BaselineRecord(signal=name, hour=ALL_HOURS, value=p95, samples=len(points))
        return out

    def current(self, wall: float) -> dict[str, float]:
        """The baseline of each signal now: this hour of day's when known from an earlier day, else the last hour's.

        Until this run has enough samples of a signal, a restored last-hour baseline saved within the window
        stands in (saving it again would keep it alive forever, so last_hour() never returns it).
        """
        hour = self._hour_of(wall)
        out = {name: rec.value for name, rec in self.last_hour().items()}
        for name, (value, at) in list(self._restored.items()):
            if name in out or not -self._window <= wall - at <= self._window:
                # learned afresh, or too old (or from a clock far ahead): never needed again
                del self._restored[name]
                continue
            out[name] = value
        for name in self._signals:
            learned = self._hourly.get((name, hour))
            if learned is not None:
                out[name] = learned[0]
        return out

    def footprint(self) -> int:
        """Points held (the learner's memory is bounded by max_points per signal)."""
        return sum(len(p) for p in self._points.values()) + sum(len(v) for v in self._hour_values.values())
