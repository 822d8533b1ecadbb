"""The engine's windows keep a signal whose earlier reading stands in, and drop one whose source went down."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.clock import FakeClock
from optimizer.state import StateStore
from tests.optimizer.fakes import SnapshotBuilder, make_engine


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """An open state store in a temporary directory."""
    st = StateStore(tmp_path / "state")
    st.open()
    yield st
    st.close()


async def test_a_standing_in_cache_reading_is_held_and_a_missing_one_dropped(store: StateStore) -> None:
    """Counters read once and then standing in (their age above 0) add no point and keep the series; a sample
    without cache stats at all (the source down) drops it, as before."""
    clock = FakeClock()
    samples = SnapshotBuilder(clock)
    engine = make_engine([], store=store, clock=clock)
    try:
        engine.on_snapshot(samples.build(hit_rate=0.5))
        for _ in range(3):
            clock.advance(1.0)
            snap = samples.build(hit_rate=0.5)
            assert snap.cache is not None
            engine.on_snapshot(replace(snap, cache=replace(snap.cache, age_seconds=4.0)))
        assert len(engine.windows.values("cache_hit_rate")) == 1
        clock.advance(1.0)
        engine.on_snapshot(samples.build())
        assert engine.windows.values("cache_hit_rate") == []
    finally:
        await engine.stop(1.0)
