"""The fake clock: still unless told to move, or running with a base clock and pushed ahead by advance()."""

from __future__ import annotations

import time

from optimizer.clock import FakeClock


def test_a_fake_clock_moves_only_when_told_to() -> None:
    """advance() moves both clocks; set_wall() steps the wall clock alone, back as well as forward."""
    clock = FakeClock(start_wall=5000.0, start_monotonic=10.0)
    assert (clock.wall(), clock.monotonic()) == (5000.0, 10.0)
    clock.advance(2.5)
    assert (clock.wall(), clock.monotonic()) == (5002.5, 12.5)
    clock.set_wall(100.0)
    assert (clock.wall(), clock.monotonic()) == (100.0, 12.5)


def test_a_clock_following_a_base_runs_with_it_and_jumps_ahead_of_it() -> None:
    """Time passing on the base shows through; advance() adds a jump on top; set_wall() keeps following the base."""
    base = FakeClock(start_wall=5000.0, start_monotonic=10.0)
    clock = FakeClock.following_real_time(base)
    assert (clock.wall(), clock.monotonic()) == (5000.0, 10.0)
    base.advance(1.0)
    assert (clock.wall(), clock.monotonic()) == (5001.0, 11.0)
    clock.advance(600.0)
    assert (clock.wall(), clock.monotonic()) == (5601.0, 611.0)
    assert (base.wall(), base.monotonic()) == (5001.0, 11.0)
    clock.set_wall(9000.0)
    base.advance(1.0)
    assert (clock.wall(), clock.monotonic()) == (9001.0, 612.0)


def test_a_clock_following_real_time_reads_the_system_clocks_plus_its_jumps() -> None:
    """Without a base it follows the system clocks: never behind them, and a jump puts it that far ahead."""
    clock = FakeClock.following_real_time()
    mono_before, wall_before = time.monotonic(), time.time()
    assert clock.monotonic() >= mono_before
    clock.advance(3600.0)
    assert clock.monotonic() >= mono_before + 3600.0
    assert clock.wall() >= wall_before + 3600.0
