"""Learning the normal: last-hour p95, per-hour-of-day baselines, persistence and bounded memory."""

from __future__ import annotations

import time
from pathlib import Path

from optimizer.baselines import ALL_HOURS, BaselineLearner, hour_of_day
from optimizer.clock import FakeClock
from optimizer.state import StateStore

HOUR = 3600.0


def hour_from(wall: float) -> int:
    """A deterministic hour of day (UTC) for the tests."""
    return int(wall // HOUR) % 24


def test_no_baseline_before_enough_samples() -> None:
    """With fewer than min_samples values there is no baseline."""
    learner = BaselineLearner(["x"], min_samples=10, hour_of=hour_from)
    for i in range(9):
        learner.observe(i * 10.0, {"x": 1.0})
    assert learner.current(90.0) == {}


def test_last_hour_p95_and_its_window() -> None:
    """The baseline is the p95 of the last hour; older values fall out."""
    learner = BaselineLearner(["x"], min_samples=10, hour_of=hour_from)
    for i in range(100):
        learner.observe(i * 10.0, {"x": float(i)})  # 0..99 within 1000 s
    assert learner.current(1000.0)["x"] == 94.0
    for i in range(100):
        learner.observe(4000.0 + i * 10.0, {"x": 5.0})  # an hour later: only the new values remain
    assert learner.current(5000.0)["x"] == 5.0


def test_hour_of_day_baseline_takes_over_the_next_day() -> None:
    """A busy evening learned yesterday is the baseline at that hour today, not the quiet last hour."""
    learner = BaselineLearner(["rt"], min_samples=5, hour_of=hour_from)
    records = []
    wall = 20 * HOUR  # hour 20: busy
    while wall < 21 * HOUR:
        records += learner.observe(wall, {"rt": 0.8})
        wall += 60
    while wall < 44 * HOUR:  # the rest of the day is quiet
        records += learner.observe(wall, {"rt": 0.1})
        wall += 60
    assert any(r.hour == 20 and r.value == 0.8 for r in records)
    # the next day at hour 20, the last hour was quiet but the learned evening is busy
    assert learner.current(44 * HOUR + 10)["rt"] == 0.8
    assert learner.current(43 * HOUR + 10)["rt"] == 0.1


def test_baselines_survive_a_restart(tmp_path: Path) -> None:
    """Per-hour baselines persisted in the state database are loaded by a new learner."""
    store = StateStore(tmp_path)
    store.open()
    learner = BaselineLearner(["rt"], min_samples=5, hour_of=hour_from)
    wall = 3 * HOUR
    records = []
    while wall < 4 * HOUR + 60:
        records += learner.observe(wall, {"rt": 0.3})
        wall += 60
    for r in records:
        store.save_baseline(r.signal, r.hour, r.value, r.samples)
    store.close()
    again = StateStore(tmp_path)
    again.open()
    fresh = BaselineLearner(["rt"], min_samples=5, hour_of=hour_from)
    fresh.load(again.load_baselines())
    assert fresh.current(27 * HOUR + 5)["rt"] == 0.3
    assert (("rt", ALL_HOURS) in again.load_baselines()) is False
    again.close()


def test_memory_is_bounded() -> None:
    """However long it runs, the learner holds at most max_points per signal and per hour."""
    learner = BaselineLearner(["x"], max_points=100, min_samples=5, hour_of=hour_from)
    for i in range(10_000):
        learner.observe(i * 0.1, {"x": float(i)})
    assert learner.footprint() <= 200


def test_per_hour_of_day_baseline_with_the_fake_clock_and_local_hours() -> None:
    """Driven by the fake clock and the real local hour: after a day, the busy hour's p95 is that hour's baseline."""
    clock = FakeClock()
    local = time.localtime(clock.wall())
    clock.advance(HOUR - (local.tm_min * 60 + local.tm_sec))  # start on a local hour boundary
    learner = BaselineLearner(["rt"], min_samples=5)
    busy_hour = hour_of_day(clock.wall())
    assert learner.current(clock.wall()) == {}
    for _ in range(60):  # one busy hour
        learner.observe(clock.wall(), {"rt": 0.8})
        clock.advance(60)
    assert learner.current(clock.wall())["rt"] == 0.8  # no day of data yet: the last hour's p95
    for _ in range(23 * 60):  # the rest of the day is quiet
        learner.observe(clock.wall(), {"rt": 0.1})
        clock.advance(60)
    assert hour_of_day(clock.wall()) == busy_hour
    learner.observe(clock.wall(), {"rt": 0.1})
    assert learner.current(clock.wall())["rt"] == 0.8  # the same hour yesterday, not the quiet last hour
    clock.advance(HOUR)
    learner.observe(clock.wall(), {"rt": 0.1})
    assert learner.current(clock.wall())["rt"] == 0.1


def learn_and_save(store: StateStore, clock: FakeClock, value: float) -> None:
    """Ten minutes of samples at ``value``, then the last-hour baselines saved as the daemon does."""
    learner = BaselineLearner(["rt"], min_samples=5, hour_of=hour_from)
    for _ in range(10):
        clock.advance(60.0)
        learner.observe(clock.wall(), {"rt": value})
    for r in learner.last_hour().values():
        store.save_baseline(r.signal, r.hour, r.value, r.samples)


def restarted(tmp_path: Path, clock: FakeClock) -> BaselineLearner:
    """A new learner loaded from a reopened state store, as the daemon does at start."""
    store = StateStore(tmp_path, wall_clock=clock.wall)
    store.open()
    try:
        learner = BaselineLearner(["rt"], min_samples=5, hour_of=hour_from)
        learner.load(store.load_baselines(), saved_at=store.baseline_times())
        return learner
    finally:
        store.close()


def test_a_recent_last_hour_baseline_is_restored_and_lapses_after_the_window(tmp_path: Path) -> None:
    """Saved minutes before a restart, the last-hour p95 is the baseline at once, until it is an hour old."""
    clock = FakeClock(start_wall=10 * HOUR)
    store = StateStore(tmp_path, wall_clock=clock.wall)
    store.open()
    learn_and_save(store, clock, 0.25)
    saved_at = clock.wall()
    store.close()
    clock.advance(120.0)
    learner = restarted(tmp_path, clock)
    assert learner.current(clock.wall()) == {"rt": 0.25}
    assert learner.last_hour() == {}  # not saved again as if learned by this run
    assert learner.current(saved_at + HOUR) == {"rt": 0.25}
    assert learner.current(saved_at + HOUR + 1) == {}


def test_a_stale_last_hour_baseline_is_not_restored(tmp_path: Path) -> None:
    """A last-hour p95 saved more than an hour before the restart is ignored: the triggers use their floors."""
    clock = FakeClock(start_wall=10 * HOUR)
    store = StateStore(tmp_path, wall_clock=clock.wall)
    store.open()
    learn_and_save(store, clock, 0.25)
    store.close()
    clock.advance(HOUR + 60.0)
    assert restarted(tmp_path, clock).current(clock.wall()) == {}


def test_a_last_hour_baseline_without_its_save_time_is_not_trusted() -> None:
    """Loaded without save times (age unknown), a last-hour record is skipped; per-hour ones still load."""
    learner = BaselineLearner(["rt"], min_samples=5, hour_of=hour_from)
    learner.load({("rt", ALL_HOURS): (0.25, 40), ("rt", 3): (0.7, 60)})
    assert learner.current(2 * HOUR) == {}
    assert learner.current(3 * HOUR) == {"rt": 0.7}


def test_this_runs_own_samples_replace_the_restored_baseline(tmp_path: Path) -> None:
    """Once the new run has min_samples values, its own p95 is the baseline, not the restored one."""
    clock = FakeClock(start_wall=10 * HOUR)
    store = StateStore(tmp_path, wall_clock=clock.wall)
    store.open()
    learn_and_save(store, clock, 0.25)
    store.close()
    learner = restarted(tmp_path, clock)
    for i in range(5):
        clock.advance(5.0)
        learner.observe(clock.wall(), {"rt": 0.05})
        expected = 0.25 if i < 4 else 0.05
        assert learner.current(clock.wall()) == {"rt": expected}
