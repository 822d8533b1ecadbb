"""Clocks: monotonic time for intervals, wall time for display and persistence; a fake one for tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """The time source the engine and the daemon use."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    def wall(self) -> float:
        """time.time()."""
        return time.time()


class FakeClock:
    """A clock that moves only when told to.

    ``FakeClock.following_real_time()`` gives one that runs with the real clocks instead, and that ``advance()``
    still pushes ahead: for tests that need real time to pass between two reads (CPU ticks) yet must get past a
    cooldown without waiting for it.
    """

    def __init__(
        self, start_wall: float = 1_800_000_000.0, start_monotonic: float = 1000.0, *, base: Clock | None = None
    ) -> None:
        """Start at the given times, or, with ``base``, read ``base`` and add the given times as offsets."""
        self._wall = start_wall
        self._mono = start_monotonic
        self._base = base

    @classmethod
    def following_real_time(cls, base: Clock | None = None) -> FakeClock:
        """A clock that reads ``base`` (the system clocks unless given) plus whatever ``advance()`` added."""
        return cls(0.0, 0.0, base=base if base is not None else SystemClock())

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self._mono + (self._base.monotonic() if self._base is not None else 0.0)

    def wall(self) -> float:
        """The fake wall time."""
        return self._wall + (self._base.wall() if self._base is not None else 0.0)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self._wall += seconds
        self._mono += seconds

    def set_wall(self, seconds: float) -> None:
        """Step the wall clock alone (an operator or NTP setting the time), forward or back."""
        self._wall = seconds - (self._base.wall() if self._base is not None else 0.0)
