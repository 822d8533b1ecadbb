"""Fixtures the engine's tests share: one fake clock, a state store on it, snapshots and engines built on both."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from optimizer.clock import FakeClock
from optimizer.engine import Engine
from optimizer.state import StateStore
from tests.optimizer.fakes import EngineFactory, SnapshotBuilder, StrategyEntry, make_engine


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when a test advances it."""
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[StateStore]:
    """An open state store in a temporary directory, on the fake wall clock."""
    st = StateStore(tmp_path / "state", wall_clock=clock.wall)
    st.open()
    yield st
    st.close()


@pytest.fixture
def samples(clock: FakeClock) -> SnapshotBuilder:
    """Snapshots stamped with the fake clock."""
    return SnapshotBuilder(clock)


@pytest.fixture
async def build(store: StateStore, clock: FakeClock) -> AsyncIterator[EngineFactory]:
    """Builds engines on the shared store and clock, and stops each one at the end of the test."""
    engines: list[Engine] = []

    def factory(strategies: list[StrategyEntry], **kwargs: Any) -> Engine:
        kwargs.setdefault("store", store)
        engine = make_engine(strategies, clock=clock, **kwargs)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.stop(1.0)
