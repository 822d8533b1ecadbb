"""Fixtures the engine's tests share: one fake clock, a state store on it, snapshots and engines built on both."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from metrics.recorders import RecorderReader
from optimizer.clock import FakeClock
from optimizer.engine import Engine
from optimizer.state import StateStore
from testbed.harness import wait_until
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


SLEEPER = "import time\ntime.sleep(120)"


# the argument that marks the recorder below: this test's own, never another daemon's (see recorder())
MARKER = "-test-recorder-marker"


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A process that looks like a recorder ffmpeg to this test's daemon only; killed at the end.

    It writes under its own recordings root and is marked by ``MARKER``, the daemon's recorder_pattern here, not
    by ``-segment_time`` or the camera layout of its output: any other daemon on the host with the default
    settings (another run of the suite) would lower it too whenever the host is hot, before this one does, or
    again after this one has put it back.
    """
    root = tmp_path / "recordings"
    output = root / "camera7" / "20260101_000000.mp4"
    process = subprocess.Popen(
        ["ffmpeg", "-c", SLEEPER, "-i", "rtsp://127.0.0.1:8554/x", "-f", "segment", MARKER, str(output)],
        executable=sys.executable,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # the interpreter has replaced the fork once the command line is readable and the process sleeps
        wait_until(lambda: MARKER.encode() in Path(f"/proc/{process.pid}/cmdline").read_bytes(), timeout=10)
        # what a daemon with the default settings finds on this host: not this recorder
        assert process.pid not in {r.pid for r in RecorderReader().scan(time.monotonic()).recorders}
        yield root, process
    finally:
        process.kill()
        process.wait(timeout=10)


def recorder_env(root: Path) -> dict[str, str]:
    """The settings that make a daemon manage the ``recorder`` fixture's process (and only recorders like it)."""
    return {
        "CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDINGS_DIRECTORY": str(root),
        "CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDER_PATTERN": MARKER,
    }
